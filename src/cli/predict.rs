//! `predict` (classify image files) and `bench` (inference latency).

use std::path::PathBuf;

use anyhow::bail;
use burn::tensor::Device;
use clap::Args;

use crate::cli::args::{load_weights, BackendArgs, ModelArgs, PreprocessArgs};
use crate::data::labels::Labels;
use crate::inference::backend::{Backend, Runner};
use crate::inference::predict::{self, Classifier, Outcome, RunOptions};
use crate::io::weights;
use crate::models::MobileNet;

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
    pub backend: BackendArgs,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
    /// Image files or directories (walked for .jpg, .jpeg, .png, .webp, .bmp).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub(super) fn predict(args: PredictArgs, device: &Device) -> anyhow::Result<()> {
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
    let options =
        RunOptions { batch_size: args.batch_size, top_k: args.top_k, progress: total > predict::PROGRESS_MIN_IMAGES };
    if args.verbose {
        eprintln!(
            "{} ({} classes), preprocessing: resize {}, crop {}, mean {:?}, std {:?}; {total} inputs, batches of {}",
            classifier.runner().config().spec.arch,
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

pub(super) fn bench(args: BenchArgs, device: &Device) -> anyhow::Result<()> {
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
    let runner = Runner::new(model, args.backend, device, args.threads)?;
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
        Runner::Engine { engine, .. } => format!("engine ({})", engine.isa()),
        Runner::Burn { .. } => "burn (flex)".to_string(),
    };
    println!(
        "model: {} width {} | backend: {backend} | batch {n} | threads {} | {s}x{s}",
        config.spec.arch, config.spec.width_mult, args.threads
    );
    println!("{}", result.report());
    Ok(())
}
