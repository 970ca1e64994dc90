//! The `mobilenet` command line.

use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};

use crate::labels::Labels;
use crate::predict::{self, Classifier, Outcome, RunOptions};
use crate::preprocess::Preprocess;
use crate::tensor_io::{read_tensor, write_tensors, HostTensor};
use crate::{weights, Arch, MobileNet, ModelConfig};

#[derive(Parser, Debug)]
#[command(name = "mobilenet", version, about = "MobileNet V1/V2/V3 on burn: build, inspect, run, weight-compatible with torchvision")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// One per process: boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a layer table (path, type, output shape, params, MACs) and totals.
    Summary(SummaryArgs),
    /// Run a model in eval mode on a tensor read from a safetensors file.
    Infer(InferArgs),
    /// Classify image files (JPEG, PNG, WebP, BMP; directories are walked): top-k classes with
    /// probabilities, using torchvision's eval preprocessing.
    Predict(PredictArgs),
    /// Convert a checkpoint (torchvision .pth, zip or legacy, or safetensors) to our safetensors
    /// format, with the model config and preprocessing as metadata.
    Import(ImportArgs),
    /// Train (or fine-tune, or resume) on an image classification data set; with no options,
    /// MobileNetV3-Small on the embedded Fashion-MNIST subset.
    Train(crate::cli_train::TrainArgs),
    /// Evaluate weights on a data set's evaluation split: loss, top-1, top-5, per-class accuracy.
    Eval(crate::cli_train::EvalArgs),
    /// Recompute BatchNorm running statistics over training batches, weights frozen.
    RecalibrateBn(crate::cli_train::RecalibrateArgs),
    /// Plot the validation curves of several runs in one PNG and print their last epochs.
    CompareRuns(crate::cli_train::CompareArgs),
    /// Inference latency after warm-up: median and min ms per batch, images/s (the engine by
    /// default; --backend burn for burn on the CPU).
    Bench(BenchArgs),
}

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
    #[arg(long, value_enum, default_value_t = crate::engine::Backend::Engine)]
    pub backend: crate::engine::Backend,
    /// Time at least this long (after 3 warm-up runs, and at least 10 runs).
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
}

/// Options that choose and shape a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// mobilenet_v1, mobilenet_v2, mobilenet_v3_large or mobilenet_v3_small (short: v1, v2, v3_large, v3_small).
    #[arg(long)]
    pub model: Option<String>,
    /// Width multiplier α (channels go through _make_divisible(c·α, 8)).
    #[arg(long)]
    pub width_mult: Option<f64>,
    /// Number of output classes.
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// BatchNorm epsilon (default: 1e-5 for V1/V2, 1e-3 for V3).
    #[arg(long)]
    pub bn_eps: Option<f64>,
    /// BatchNorm momentum, PyTorch convention (default: 0.1 for V1/V2, 0.01 for V3).
    #[arg(long)]
    pub bn_momentum: Option<f64>,
}

impl ModelArgs {
    /// The configuration these flags describe, on top of `base` (or the model's defaults).
    pub fn config(&self, base: Option<ModelConfig>) -> anyhow::Result<Option<ModelConfig>> {
        let mut config = match (&self.model, base) {
            (Some(name), base) => {
                let arch: Arch = name.parse()?;
                match base {
                    Some(b) if b.arch == arch => b,
                    Some(b) => bail!("--model {arch} disagrees with the weights, which hold {}", b.arch),
                    None => ModelConfig::new(arch),
                }
            }
            (None, Some(base)) => base,
            (None, None) => return Ok(None),
        };
        if let Some(w) = self.width_mult {
            config.width_mult = w;
        }
        if let Some(k) = self.num_classes {
            config.num_classes = k;
        }
        if let Some(eps) = self.bn_eps {
            config.norm_eps = eps;
        }
        if let Some(m) = self.bn_momentum {
            config.norm_momentum = m;
        }
        config.validate()?;
        Ok(Some(config))
    }
}

#[derive(Args, Debug)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input image side in pixels.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
}

#[derive(Args, Debug)]
pub struct InferArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weights: .safetensors (ours or torchvision's keys) or a torch .pth/.pt state dict.
    #[arg(long)]
    pub weights: PathBuf,
    /// safetensors file holding tensor `input`, f32, shape [N, 3, H, W].
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write tensor `logits`, f32, shape [N, num_classes].
    #[arg(long)]
    pub output: PathBuf,
}

/// The eval transform's settings; each flag overrides the weight file's metadata, which
/// overrides torchvision's ImageNet defaults.
#[derive(Args, Debug, Clone)]
pub struct PreprocessArgs {
    /// Resize the shorter side to this many pixels [default: 256].
    #[arg(long)]
    pub resize_size: Option<u32>,
    /// Centre-crop a square of this side (the network's input size) [default: 224].
    #[arg(long)]
    pub crop_size: Option<u32>,
    /// Per-channel mean on the [0, 1] scale, R,G,B [default: 0.485,0.456,0.406].
    #[arg(long, value_parser = parse_triple)]
    pub mean: Option<[f32; 3]>,
    /// Per-channel standard deviation, R,G,B [default: 0.229,0.224,0.225].
    #[arg(long, value_parser = parse_triple)]
    pub std: Option<[f32; 3]>,
}

impl PreprocessArgs {
    /// These flags on top of `base`.
    pub fn apply(&self, base: Preprocess) -> anyhow::Result<Preprocess> {
        let mut p = base;
        if let Some(v) = self.resize_size {
            p.resize_size = v;
        }
        if let Some(v) = self.crop_size {
            p.crop_size = v;
        }
        if let Some(v) = self.mean {
            p.mean = v;
        }
        if let Some(v) = self.std {
            p.std = v;
        }
        p.validate()?;
        Ok(p)
    }
}

fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let values: Vec<f32> = s
        .split(',')
        .map(|v| v.trim().parse::<f32>().map_err(|e| format!("'{v}': {e}")))
        .collect::<Result<_, _>>()?;
    values.try_into().map_err(|v: Vec<f32>| format!("expected three comma-separated numbers (R,G,B), got {}", v.len()))
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weights: ours (from `mobilenet import`, carrying model and preprocessing), torchvision's
    /// .pth/.pt, or safetensors with torchvision's keys (those two need --model).
    #[arg(long)]
    pub weights: PathBuf,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// One JSON object per line per image: {"path", "top": [{"index", "label", "prob"}]}.
    #[arg(long)]
    pub json: bool,
    /// Class names, one per line, as many as the model has classes [default: the built-in
    /// ImageNet names for 1000-class models].
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Report decode, preprocess and forward time per image (stderr).
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    pub backend: crate::cli_train::BackendArgs,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    /// Image files or directories (walked for .jpg, .jpeg, .png, .webp, .bmp).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The checkpoint to convert: torchvision .pth/.pt (zip or legacy) or safetensors.
    #[arg(long = "from")]
    pub from: PathBuf,
    /// Where to write our safetensors file.
    #[arg(long)]
    pub output: PathBuf,
    /// Preprocessing to record with the weights (default: the source's metadata, else
    /// torchvision's ImageNet transform).
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let device = Device::flex();
    match cli.command {
        Command::Summary(args) => summary(args, &device),
        Command::Infer(args) => infer(args, &device),
        Command::Predict(args) => predict(args, &device),
        Command::Import(args) => import(args, &device),
        Command::Train(args) => crate::cli_train::train(args),
        Command::Eval(args) => crate::cli_train::eval(args),
        Command::RecalibrateBn(args) => crate::cli_train::recalibrate(args),
        Command::CompareRuns(args) => crate::cli_train::compare(args),
        Command::Bench(args) => bench(args, &device),
    }
}

/// The model a weight file holds, built from its metadata and the flags, with its weights loaded
/// strictly, and the preprocessing that goes with it.
fn load_weights(
    model: &ModelArgs,
    preprocess: &PreprocessArgs,
    path: &std::path::Path,
    device: &Device,
) -> anyhow::Result<(MobileNet, Preprocess)> {
    let Some(config) = model.config(weights::read_config(path)?)? else {
        bail!(
            "{}: the file does not say which model it holds; pass --model (and --width-mult/--num-classes if not the defaults)",
            path.display()
        );
    };
    let stored = Preprocess::from_metadata(path)?;
    let preprocess = preprocess.apply(stored.unwrap_or_default())?;
    let model = weights::load_into(MobileNet::new(&config, device)?, path)?;
    Ok((model, preprocess))
}

fn predict(args: PredictArgs, device: &Device) -> anyhow::Result<()> {
    if args.top_k == 0 {
        bail!("--top-k must be at least 1");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let (model, preprocess) = load_weights(&args.model, &args.preprocess, &args.weights, device)?;
    let labels = Labels::for_model(model.num_classes(), args.labels.as_deref())?;
    let runner = args.backend.runner(model, device, None)?;
    let classifier = Classifier::with_runner(runner, preprocess, labels)?;
    let inputs = predict::find_images(&args.paths);
    let total = inputs.len();
    let options = RunOptions {
        batch_size: args.batch_size,
        top_k: args.top_k,
        progress: total > predict::PROGRESS_MIN_IMAGES,
    };
    if args.verbose {
        eprintln!(
            "{} ({} classes), preprocessing: resize {}, crop {}, mean {:?}, std {:?}; {total} inputs, batches of {}",
            classifier.runner().config().arch,
            classifier.runner().num_classes(),
            preprocess.resize_size,
            preprocess.crop_size,
            preprocess.mean,
            preprocess.std,
            options.batch_size
        );
    }
    let start = std::time::Instant::now();
    let mut stdout = std::io::stdout().lock();
    let mut write_error = None;
    let failed = classifier.classify_files(inputs, &options, |outcome| match outcome {
        Outcome::Classified(result) => {
            if args.verbose {
                let t = result.timing;
                eprintln!(
                    "{}: decode {:.1} ms, preprocess {:.1} ms, forward {:.1} ms (batch of {})",
                    result.path.display(),
                    t.decode.as_secs_f64() * 1e3,
                    t.preprocess.as_secs_f64() * 1e3,
                    t.forward.as_secs_f64() * 1e3,
                    t.batch
                );
            }
            if let Err(e) = print_result(&mut stdout, &result, args.json) {
                write_error.get_or_insert(e);
            }
        }
        Outcome::Failed(error) => eprintln!("error: {error}"),
    });
    if let Some(e) = write_error {
        return Err(anyhow::Error::new(e).context("writing the results"));
    }
    if args.verbose {
        let secs = start.elapsed().as_secs_f64();
        eprintln!("{} images in {secs:.2} s ({:.1} images/s)", total - failed, (total - failed) as f64 / secs);
    }
    if failed > 0 {
        bail!("{failed} of {total} inputs could not be classified (see above)");
    }
    Ok(())
}

fn print_result(out: &mut impl std::io::Write, result: &predict::ImageResult, json: bool) -> std::io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, result)?;
        return writeln!(out);
    }
    writeln!(out, "{}", result.path.display())?;
    for p in &result.top {
        let label = p.label.clone().unwrap_or_else(|| format!("class {}", p.index));
        writeln!(out, "  {:>7.3}%  {label} ({})", p.prob * 100.0, p.index)?;
    }
    Ok(())
}

fn import(args: ImportArgs, device: &Device) -> anyhow::Result<()> {
    let (model, preprocess) = load_weights(&args.model, &args.preprocess, &args.from, device)?;
    weights::save_with_metadata(&model, &args.output, &[preprocess.to_metadata()])?;
    let config = model.config();
    eprintln!(
        "wrote {}: {} (width {}, {} classes), preprocessing resize {} crop {} mean {:?} std {:?}",
        args.output.display(),
        config.arch,
        config.width_mult,
        config.num_classes,
        preprocess.resize_size,
        preprocess.crop_size,
        preprocess.mean,
        preprocess.std
    );
    Ok(())
}

fn summary(args: SummaryArgs, device: &Device) -> anyhow::Result<()> {
    let Some(config) = args.model.config(None)? else {
        bail!("--model is required (one of {})", Arch::ALL.map(|a| a.name()).join(", "));
    };
    if args.image_size < crate::zoo::MIN_INPUT_SIZE {
        bail!("--image-size must be at least {}", crate::zoo::MIN_INPUT_SIZE);
    }
    let model = MobileNet::new(&config, device)?;
    let title = format!(
        "{} (width {}, {} classes, input 3x{}x{})",
        config.arch, config.width_mult, config.num_classes, args.image_size, args.image_size
    );
    print!("{}", model.trace(args.image_size).render(&title));
    Ok(())
}

fn infer(args: InferArgs, device: &Device) -> anyhow::Result<()> {
    let stored = weights::read_config(&args.weights)?;
    let config = args.model.config(stored)?;
    if config.is_none() {
        bail!("{}: the file does not say which model it holds; pass --model", args.weights.display());
    }
    let input = read_tensor(&args.input, "input")?;
    let model = weights::load(&args.weights, config.as_ref(), device)?.eval_mode();
    model
        .check_input(&input.shape)
        .with_context(|| format!("{}: tensor 'input'", args.input.display()))?;
    let logits = model.forward(input.to_tensor::<4>(device)?);
    let logits = HostTensor::from_tensor(logits);
    write_tensors(&args.output, &[("logits", &logits)])?;
    eprintln!("wrote logits {:?} to {}", logits.shape, args.output.display());
    Ok(())
}

fn bench(args: BenchArgs, device: &Device) -> anyhow::Result<()> {
    if args.batch == 0 || args.threads == 0 || args.image_size == 0 {
        bail!("--batch, --threads and --image-size must be at least 1");
    }
    if !(args.seconds.is_finite() && args.seconds >= 0.0) {
        bail!("--seconds must be a non-negative number");
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
    let config = *model.config();
    // burn's CPU kernels use rayon's current pool: run them inside one of --threads threads.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build()?;
    let runner = crate::engine::Runner::new(model, args.backend, device, args.threads)?;
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
    let backend = match &runner {
        crate::engine::Runner::Engine { engine, .. } => format!("engine ({})", engine.isa()),
        crate::engine::Runner::Burn { .. } => "burn (flex)".to_string(),
    };
    println!(
        "model: {} width {} | backend: {backend} | batch {n} | threads {} | {s}x{s}",
        config.arch, config.width_mult, args.threads
    );
    println!("{}", result.report());
    Ok(())
}
