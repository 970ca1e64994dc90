//! `predict`: classify image files.

use std::path::PathBuf;

use anyhow::bail;
use burn::tensor::Device;
use clap::Args;

use crate::cli::args::{load_runner, BackendArgs, ModelArgs, PreprocessArgs};
use crate::data::labels::Labels;
use crate::inference::predict::{self, Classifier, Outcome, RunOptions};

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
    let (runner, preprocess) = load_runner(&args.model, &args.preprocess, &args.backend, &args.weights, device)?;
    crate::training::config::check_batch_bytes("--batch-size", args.batch_size, preprocess.crop_size as usize)?;
    let labels = Labels::for_model(runner.num_classes(), args.labels.as_deref())?;
    let classifier = Classifier::with_runner(runner, preprocess, labels)?;
    let inputs = predict::find_images(&args.paths);
    let total = inputs.len();
    let options =
        RunOptions { batch_size: args.batch_size, top_k: args.top_k, progress: total > predict::PROGRESS_MIN_IMAGES };
    if args.verbose {
        eprintln!(
            "{} ({} classes) on {}, preprocessing: resize {}, crop {}, mean {:?}, std {:?}; {total} inputs, batches of {}",
            classifier.runner().config().spec.arch,
            classifier.runner().num_classes(),
            classifier.runner().describe(),
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
