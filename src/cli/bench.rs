//! `bench` (inference latency) and `bench-train` (training-step time): figures for speed work,
//! printed last as `median_ms: X` and `images_per_s: Y` for scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Args;

use crate::cli::args::{check_threads, ModelArgs};
use crate::inference::backend::{Backend, Runner};
use crate::io::weights;
use crate::models::{MobileNet, ModelConfig};
use crate::training::evaluate::cross_entropy;
use crate::training::optim::{HostVector, Optimizer, OptimizerConfig, OptimizerKind};
use crate::training::TrainBackend;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weights to time (any format `predict` reads) [default: freshly initialised weights].
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Threads for the engine, and for burn's CPU kernels.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    #[arg(long, value_enum, default_value_t = Backend::Engine)]
    pub backend: Backend,
    /// Time at least this long (after 3 warm-up runs, and at least 10 runs).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
}

/// The options both benchmarks share: threads bounded by the cores, an image size the networks
/// take, a batch that fits in memory, and a duration `Duration` can hold (at most a day).
fn check_sizes(threads: usize, batch: usize, image_size: usize, seconds: f64) -> anyhow::Result<()> {
    use crate::data::preprocess::MAX_INPUT_SIZE;
    use crate::models::MIN_INPUT_SIZE;
    check_threads("--threads", threads)?;
    if !(MIN_INPUT_SIZE..=MAX_INPUT_SIZE).contains(&image_size) {
        bail!("--image-size must be in [{MIN_INPUT_SIZE}, {MAX_INPUT_SIZE}], got {image_size}");
    }
    crate::training::config::check_batch_bytes("--batch", batch, image_size)?;
    if !(seconds.is_finite() && (0.0..=86400.0).contains(&seconds)) {
        bail!("--seconds must be a number of seconds in [0, 86400], got {seconds}");
    }
    Ok(())
}

pub(super) fn bench(args: BenchArgs, device: &Device) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    check_sizes(args.threads, args.batch, args.image_size, args.seconds)?;
    if let Some(path) = args.weights.as_ref().filter(|p| weights::is_int8(p).unwrap_or(false)) {
        if args.backend != Backend::Engine {
            bail!("{}: an int8 model runs on the CPU engine only (drop --backend burn)", path.display());
        }
        let runner = Runner::int8(path, args.threads)?;
        return time_runner(&args, runner);
    }
    let model = match &args.weights {
        Some(path) => {
            let Some(config) = args.model.config(weights::read_config(path)?)? else {
                bail!("{}: the file does not say which model it holds; pass --model", path.display());
            };
            weights::load_into(MobileNet::new(&config, device)?, path)?
        }
        None => {
            let Some(config) = args.model.config(None)? else {
                bail!("bench needs --model NAME or --weights FILE");
            };
            MobileNet::new(&config, device)?
        }
    };
    let runner = Runner::new(model, args.backend, device, args.threads)?;
    time_runner(&args, runner)
}

/// Times `runner` on made-up pixels as `args` asks and prints the report.
fn time_runner(args: &BenchArgs, runner: Runner) -> anyhow::Result<()> {
    let config = *runner.config();
    // burn's CPU kernels use rayon's current pool: run them inside one of --threads threads.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build()?;
    let (n, s) = (args.batch, args.image_size);
    let pixels: Vec<f32> = (0..n * 3 * s * s).map(|i| (i % 251) as f32 / 125.0 - 1.0).collect();
    let mut failure = None;
    let result = pool.install(|| {
        mobilenet_engine::bench::measure(n, 3, 10, std::time::Duration::from_secs_f64(args.seconds), || {
            if let Err(e) = runner.logits(&pixels, n, s, s) {
                failure.get_or_insert(e);
            }
        })
    });
    if let Some(e) = failure {
        return Err(e.into());
    }
    let backend = runner.describe();
    println!(
        "model: {} width {} | backend: {backend} | batch {n} | threads {} | {s}x{s}",
        config.spec.arch, config.spec.width_mult, args.threads
    );
    println!("{}", result.report());
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 32)]
    pub image_size: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, value_enum, default_value_t = TrainBackend::Engine)]
    pub backend: TrainBackend,
    /// Time at least this long (after 2 warm-up steps, and at least 5 steps).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

/// Full training steps on random data: forward in train mode, loss (label smoothing 0.1),
/// backward, and an SGD-Nesterov update with weight decay (the default recipe's optimizer).
pub(super) fn bench_train(args: BenchTrainArgs) -> anyhow::Result<()> {
    if args.batch < 2 {
        bail!("--batch must be at least 2 (BatchNorm needs two values per channel)");
    }
    check_sizes(args.threads, args.batch, args.image_size, args.seconds)?;
    let Some(config) = args.model.config(None)? else {
        bail!("bench-train needs --model NAME");
    };
    // Ten classes unless asked otherwise: the benchmark's data is made up.
    let config = if args.model.num_classes.is_none() { config.with_num_classes(10) } else { config };
    config.validate()?;
    let (n, s, classes) = (args.batch, args.image_size, config.spec.num_classes);
    let mut optimizer_config = OptimizerConfig::new(OptimizerKind::Sgd);
    optimizer_config.nesterov = true;
    optimizer_config.weight_decay = 4e-5;
    let min_time = Duration::from_secs_f64(args.seconds.max(0.0));
    let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
    let pixels: Vec<f32> = (0..n * 3 * s * s).map(|i| ((i * 7919) % 251) as f32 / 125.0 - 1.0).collect();
    let result = match args.backend {
        TrainBackend::Engine => {
            use mobilenet_engine::train::{TrainConfig, Trainer};
            let train_config = TrainConfig::new(config.spec.arch, n, s, s)
                .with_threads(args.threads)
                .with_label_smoothing(0.1)
                .with_dropout(config.dropout as f32)
                .with_bn_momentum(config.norm_momentum);
            let mut trainer = Trainer::new(&config.spec, train_config)?;
            let ranks: std::collections::HashMap<String, usize> =
                trainer.params().map(|(k, shape, _)| (k.to_string(), shape.len())).collect();
            let mut optimizer = Optimizer::<HostVector>::new(optimizer_config);
            let mut failure = None;
            let result = mobilenet_engine::bench::measure(n, 2, 5, min_time, || {
                if let Err(e) = trainer.step(&pixels, &labels) {
                    failure.get_or_insert(e);
                    return;
                }
                optimizer.steps += 1;
                trainer.update(|key, value, grad| optimizer.update_in_place(key, value, ranks[key], grad, 1.0, 0.1));
            });
            if let Some(e) = failure {
                return Err(e.into());
            }
            println!(
                "backend: engine trainer ({}) | arena {:.1} MB",
                trainer.isa(),
                trainer.arena_bytes() as f64 / 1e6
            );
            result
        }
        TrainBackend::Burn => {
            let device = Device::flex().autodiff();
            device.seed(0);
            let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build()?;
            pool.install(|| burn_steps(&config, &device, &pixels, &labels, s, optimizer_config, min_time))?
        }
    };
    println!(
        "model: {} width {} | batch {n} | threads {} | {s}x{s} | forward, backward, SGD-Nesterov",
        config.spec.arch, config.spec.width_mult, args.threads
    );
    println!("{}", result.report());
    Ok(())
}

/// The burn path's training steps, timed like the engine trainer's.
fn burn_steps(
    config: &ModelConfig,
    device: &Device,
    pixels: &[f32],
    labels: &[usize],
    s: usize,
    optimizer_config: OptimizerConfig,
    min_time: Duration,
) -> anyhow::Result<mobilenet_engine::bench::BenchResult> {
    let n = labels.len();
    let mut model = Some(MobileNet::new(config, device)?.train_mode());
    let mut optimizer = Optimizer::new(optimizer_config);
    let x = Tensor::<4>::from_data(TensorData::new(pixels.to_vec(), [n, 3, s, s]), device);
    let y =
        Tensor::<1, Int>::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n]), device);
    let result = mobilenet_engine::bench::measure(n, 2, 5, min_time, || {
        let current = model.take().expect("the model between steps");
        let loss = cross_entropy(current.forward(x.clone()), y.clone(), 0.1);
        let grads = loss.backward();
        let (next, _) = optimizer.step(current, &grads, 0.1, |_| true);
        // Wait for the update (burn may run lazily): read one value back.
        let _ = crate::io::params::collect(&next).values().next().map(|f| f.value.clone().into_data());
        model = Some(next);
    });
    Ok(result)
}
