//! The training-side commands: `train`, `eval`, `recalibrate-bn`, `compare-runs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use burn::tensor::Device;
use clap::{ArgAction, Args};

use crate::cli::args::{BackendArgs, DataArgs, DeviceArgs, ModelArgs};
use crate::data;
use crate::data::augment::{AugmentConfig, TrainCrop};
use crate::data::preprocess::Preprocess;
use crate::inference::backend::{Backend, Runner};
use crate::io::weights;
use crate::models::{Arch, ModelConfig};
use crate::training::evaluate::{evaluate_with, recalibrate_bn, EvalResult};
use crate::training::optim::{OptimizerConfig, OptimizerKind};
use crate::training::schedule::{Schedule, ScheduleKind};
use crate::training::{self, metrics, TrainBackend, TrainConfig};

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Run folder for checkpoints, metrics.csv and curves.png (default: runs/<model>-<n>).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Continue the run in this folder from its last.ckpt (all other options come from it).
    #[arg(long, conflicts_with_all = ["output", "init"])]
    pub resume: Option<PathBuf>,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Sgd)]
    pub opt: OptimizerKind,
    /// Peak learning rate (default: 0.1 for SGD, 0.016 for RMSProp, 0.001 for AdamW).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// Nesterov momentum for SGD.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub nesterov: bool,
    #[arg(long, default_value_t = 4e-5)]
    pub weight_decay: f64,
    /// Also decay BatchNorm weights and all biases (off, as in torchvision's recipes).
    #[arg(long)]
    pub decay_norm_and_bias: bool,
    /// RMSProp epsilon, inside the square root (TF style); AdamW epsilon.
    #[arg(long)]
    pub opt_eps: Option<f64>,
    /// RMSProp alpha (smoothing); AdamW beta2.
    #[arg(long)]
    pub opt_alpha: Option<f64>,
    #[arg(long, value_enum, default_value_t = ScheduleKind::Cosine)]
    pub lr_scheduler: ScheduleKind,
    #[arg(long, default_value_t = 1.0)]
    pub warmup_epochs: f64,
    /// The warmup starts at this fraction of the peak learning rate.
    #[arg(long, default_value_t = 0.01)]
    pub warmup_factor: f64,
    #[arg(long, default_value_t = 30)]
    pub lr_step_size: usize,
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f64,
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    #[arg(long, default_value_t = 0.1)]
    pub label_smoothing: f64,
    /// Clip the global gradient norm.
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay per step (e.g. 0.999).
    #[arg(long)]
    pub ema_decay: Option<f64>,
    /// Use the EMA decay from the first step (no warmup).
    #[arg(long)]
    pub no_ema_warmup: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum)]
    pub train_crop: Option<TrainCrop>,
    /// Zero padding of the pad-and-crop augmentation (default 2 for idx, 4 for CIFAR).
    #[arg(long)]
    pub padding: Option<usize>,
    /// Smallest area fraction of the random-resized crop.
    #[arg(long)]
    pub min_scale: Option<f64>,
    /// No random horizontal flips.
    #[arg(long)]
    pub no_hflip: bool,
    /// Dropout before the last Linear.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Start from these weights (ours or a torchvision checkpoint); a classifier for another
    /// class count is replaced.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Train only the classifier.
    #[arg(long)]
    pub freeze_backbone: bool,
    /// Keep BatchNorm in eval mode with its parameters fixed.
    #[arg(long)]
    pub freeze_bn: bool,
    /// Recompute BN statistics over N training batches before every evaluation.
    #[arg(long, default_value_t = 0)]
    pub recalibrate_bn: usize,
    /// Who computes the steps: the hand-written CPU trainer (engine: CPU only, several times
    /// faster) or burn (on --device) [default: engine on the CPU, burn on a GPU]. With --resume:
    /// continue the run on this path (both read and write the same checkpoints).
    #[arg(long = "train-backend", alias = "backend", value_enum)]
    pub train_backend: Option<TrainBackend>,
    /// The options given on the command line (clap ids), filled in by `cli::parse`.
    #[arg(skip)]
    pub given: Vec<String>,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Weights to evaluate (ours or torchvision's).
    #[arg(long)]
    pub weights: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Recompute BN statistics over N training batches first.
    #[arg(long, default_value_t = 0)]
    pub recalibrate_bn: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RecalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[arg(long)]
    pub weights: PathBuf,
    /// Where to write the recalibrated weights.
    #[arg(long)]
    pub output: PathBuf,
    /// Number of training batches to average the statistics over.
    #[arg(long, default_value_t = 50)]
    pub batches: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Who runs the train-mode forward passes: the CPU trainer (engine) or burn [default:
    /// engine; burn on a GPU --device].
    #[arg(long, value_enum, default_value_t = TrainBackend::Engine)]
    pub backend: TrainBackend,
}

fn on_cpu(device: &DeviceArgs) -> bool {
    matches!(device.device.as_str(), "cpu" | "flex")
}

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let device = args.device.device()?.autodiff();
    if let Some(dir) = &args.resume {
        // Everything else comes from the checkpoint: a setting given anyway would be ignored.
        let ignored: Vec<String> = args
            .given
            .iter()
            .filter(|id| !matches!(id.as_str(), "resume" | "device" | "train_backend"))
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
        if !ignored.is_empty() {
            bail!(
                "--resume continues {} with the settings stored in its checkpoint; {} cannot change them \
                 (only --device and --train-backend can): drop them, or start a new run",
                dir.display(),
                ignored.join(", ")
            );
        }
        if args.train_backend == Some(TrainBackend::Engine) && !on_cpu(&args.device) {
            bail!(
                "--train-backend engine runs on the CPU; use --train-backend burn with --device {}",
                args.device.device
            )
        }
        let start = training::Start::Resume { dir: dir.to_path_buf(), backend: args.train_backend };
        let outcome = training::run(start, &device)?;
        return report(&outcome);
    }
    let splits = data::load_spec(&args.data.data)?;
    let classes = splits.train.num_classes();
    let mut model = train_model_config(&args.model, classes)?;
    if let Some(p) = args.dropout {
        model.dropout = p;
    }
    model.validate()?;
    let mut augment = args.data.augment(splits.format, &splits.train);
    if let Some(c) = args.train_crop {
        augment.train_crop = c;
    }
    if let Some(p) = args.padding {
        augment.padding = p;
    }
    if let Some(s) = args.min_scale {
        augment.min_scale = s;
    }
    augment.hflip = !args.no_hflip;
    let mut optimizer = OptimizerConfig::new(args.opt);
    optimizer.momentum = args.momentum;
    optimizer.nesterov = args.nesterov;
    optimizer.weight_decay = args.weight_decay;
    optimizer.decay_norm_and_bias = args.decay_norm_and_bias;
    optimizer.clip_grad_norm = args.clip_grad_norm;
    if let Some(e) = args.opt_eps {
        optimizer.eps = e;
    }
    if let Some(a) = args.opt_alpha {
        optimizer.alpha = a;
    }
    let lr = args.lr.unwrap_or(match args.opt {
        OptimizerKind::Sgd => 0.1,
        OptimizerKind::Rmsproptf => 0.016,
        OptimizerKind::Adamw => 1e-3,
    });
    let on_cpu = on_cpu(&args.device);
    let backend = match args.train_backend {
        Some(TrainBackend::Engine) if !on_cpu => {
            bail!(
                "--train-backend engine runs on the CPU; use --train-backend burn with --device {}",
                args.device.device
            )
        }
        Some(backend) => backend,
        None if on_cpu => TrainBackend::Engine,
        None => TrainBackend::Burn,
    };
    let config = TrainConfig {
        model,
        data: args.data.data.clone(),
        output: PathBuf::new(), // claimed below, once every setting is known to be valid
        epochs: args.epochs,
        batch_size: args.batch_size,
        optimizer,
        schedule: Schedule {
            kind: args.lr_scheduler,
            base_lr: lr,
            epochs: args.epochs,
            warmup_epochs: args.warmup_epochs.min(args.epochs as f64),
            warmup_factor: args.warmup_factor,
            step_size: args.lr_step_size,
            gamma: args.lr_gamma,
            min_lr: args.min_lr,
        },
        label_smoothing: args.label_smoothing,
        ema_decay: args.ema_decay,
        ema_warmup: !args.no_ema_warmup,
        seed: args.seed,
        augment,
        init: args.init.clone(),
        freeze_backbone: args.freeze_backbone,
        freeze_bn: args.freeze_bn,
        recalibrate_bn: args.recalibrate_bn,
        backend,
    };
    let mut config = config;
    config.validate()?;
    if let Some(init) = &config.init {
        crate::io::weights::detect_format(init)?;
    }
    config.output =
        training::checkpoint::claim_run_dir(args.output.as_deref(), Path::new("runs"), config.model.spec.arch)?;
    let outcome = training::run(training::Start::Fresh(Box::new(config)), &device)?;
    report(&outcome)
}

/// The model `train` builds: `--model` (default V3-Small) with every other model flag applied,
/// and the data's class count.
pub fn train_model_config(args: &ModelArgs, classes: usize) -> anyhow::Result<ModelConfig> {
    let mut args = args.clone();
    args.model.get_or_insert_with(|| Arch::V3Small.name().to_string());
    let config = args.config(None)?.expect("a model name");
    if args.num_classes.is_some_and(|k| k != classes) {
        bail!("--num-classes {} but the data has {classes} classes", args.num_classes.unwrap());
    }
    Ok(config.with_num_classes(classes))
}

fn report(outcome: &training::trainer::Outcome) -> anyhow::Result<()> {
    let e = &outcome.final_eval;
    println!("run: {}", outcome.output.display());
    println!("test loss: {:.4}", e.loss);
    println!("test top-1: {:.2}%", 100.0 * e.top1);
    println!("test top-5: {:.2}%", 100.0 * e.top5);
    Ok(())
}

/// Model and evaluation transform for a weights file: its own metadata first, then the flags,
/// then the data set's defaults.
fn load_for_data(
    model_args: &ModelArgs,
    data_args: &DataArgs,
    weights_path: &Path,
    splits: &data::Splits,
    device: &Device,
) -> anyhow::Result<(crate::models::MobileNet, AugmentConfig)> {
    let stored = weights::read_config(weights_path)?;
    let mut config = model_args.config(stored)?;
    if config.is_none() {
        bail!("{}: the file does not say which model it holds; pass --model", weights_path.display());
    }
    if stored.is_none() && model_args.num_classes.is_none() {
        config = config.map(|c| c.with_num_classes(splits.train.num_classes()));
    }
    let model = weights::load(weights_path, config.as_ref(), device)?;
    check_classes(weights_path, model.num_classes(), splits)?;
    Ok((model, eval_transform(data_args, weights_path, splits)?))
}

fn check_classes(weights_path: &Path, classes: usize, splits: &data::Splits) -> anyhow::Result<()> {
    if classes != splits.val.num_classes() {
        bail!(
            "{}: the model has {} classes but the data has {}",
            weights_path.display(),
            classes,
            splits.val.num_classes()
        );
    }
    Ok(())
}

/// The evaluation transform for a weights file on a data set: the file's preprocessing, then
/// the flags, then the data set's defaults.
fn eval_transform(data_args: &DataArgs, weights_path: &Path, splits: &data::Splits) -> anyhow::Result<AugmentConfig> {
    let mut augment = data_args.augment(splits.format, &splits.train);
    if let Some(p) = Preprocess::from_metadata(weights_path)? {
        if data_args.image_size.is_none() && data_args.eval_resize.is_none() {
            augment.image_size = p.crop_size as usize;
            augment.eval_resize = p.resize_size as usize;
        }
        if data_args.mean.is_none() && data_args.std.is_none() {
            augment.mean = p.mean;
            augment.std = p.std;
        }
    }
    augment.validate()?;
    Ok(augment)
}

/// `eval`'s and `recalibrate-bn`'s recalibration settings: `batches` batches of `batch_size`
/// images from a training split of `train_len` images must give at least one batch that
/// BatchNorm can use (two images or more), or nothing would be recalibrated.
fn check_recalibration(option: &str, batches: usize, batch_size: usize, train_len: usize) -> anyhow::Result<()> {
    if batches == 0 {
        bail!("{option} must be at least 1 (the number of batches to recompute BatchNorm statistics over)");
    }
    if batch_size < 2 {
        bail!("--batch-size {batch_size}: BatchNorm statistics need batches of at least 2 images");
    }
    if train_len < 2 {
        bail!("the training split has {train_len} image(s); recalibrating BatchNorm needs at least 2");
    }
    Ok(())
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = args.device.device()?;
    let splits = data::load_spec(&args.data.data)?;
    if weights::is_int8(&args.weights)? {
        if args.recalibrate_bn > 0 {
            bail!(
                "--recalibrate-bn: {} is an int8 model; recalibrate the f32 weights, then quantise them again",
                args.weights.display()
            );
        }
        let runner = args.backend.int8_runner(&args.weights, Some(&args.device))?;
        check_classes(&args.weights, runner.num_classes(), &splits)?;
        let augment = eval_transform(&args.data, &args.weights, &splits)?;
        return evaluate_and_print(&args, &runner, &Arc::new(splits.val), &augment);
    }
    let (mut model, augment) = load_for_data(&args.model, &args.data, &args.weights, &splits, &device)?;
    let train_set = Arc::new(splits.train);
    let val_set = Arc::new(splits.val);
    if args.recalibrate_bn > 0 {
        check_recalibration("--recalibrate-bn", args.recalibrate_bn, args.batch_size, train_set.len())?;
        // On the CPU trainer when inference runs on the CPU engine.
        let backend = if on_cpu(&args.device) && args.backend.backend == Backend::Engine {
            TrainBackend::Engine
        } else {
            TrainBackend::Burn
        };
        model = recalibrate_bn(
            model,
            &train_set,
            &augment,
            args.recalibrate_bn,
            args.batch_size,
            args.seed,
            backend,
            &device,
        )?;
    }
    let runner = args.backend.runner(model, &device, Some(&args.device))?;
    evaluate_and_print(&args, &runner, &val_set, &augment)
}

fn evaluate_and_print(
    args: &EvalArgs,
    runner: &Runner,
    val_set: &Arc<data::Dataset>,
    augment: &AugmentConfig,
) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(val_set.len() as u64);
    let result = evaluate_with(runner, val_set, augment, args.batch_size, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print_eval(&result);
    }
    Ok(())
}

fn print_eval(r: &EvalResult) {
    println!("samples: {}", r.samples);
    println!("loss: {:.4}", r.loss);
    println!("top-1: {:.2}%", 100.0 * r.top1);
    println!("top-5: {:.2}%", 100.0 * r.top5);
    let width = r.per_class.iter().map(|c| c.class.len()).max().unwrap_or(5).max(5);
    println!("\n{:<width$}  {:>8}  {:>7}", "class", "accuracy", "images");
    for c in &r.per_class {
        let acc = if c.total == 0 { f64::NAN } else { 100.0 * c.correct as f64 / c.total as f64 };
        println!("{:<width$}  {:>7.2}%  {:>7}", c.class, acc, c.total);
    }
}

pub fn recalibrate(args: RecalibrateArgs) -> anyhow::Result<()> {
    crate::io::atomic::check_output("--output", &args.output, &[&args.weights])?;
    let device = args.device.device()?;
    let splits = data::load_spec(&args.data.data)?;
    let (model, augment) = load_for_data(&args.model, &args.data, &args.weights, &splits, &device)?;
    let train_set = Arc::new(splits.train);
    check_recalibration("--batches", args.batches, args.batch_size, train_set.len())?;
    let backend = match args.backend {
        TrainBackend::Engine if !on_cpu(&args.device) => TrainBackend::Burn,
        backend => backend,
    };
    let model =
        recalibrate_bn(model, &train_set, &augment, args.batches, args.batch_size, args.seed, backend, &device)?;
    weights::save_with_metadata(&model, &args.output, &[augment.eval_preprocess().to_metadata()])
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("recalibrated BatchNorm statistics over {} batches; wrote {}", args.batches, args.output.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Run folders (each with a metrics.csv).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// A legend label per run, separated by ';' (default: the folder names).
    #[arg(long, value_delimiter = ';')]
    pub labels: Option<Vec<String>>,
    /// Where to write the PNG chart.
    #[arg(long, default_value = "compare.png")]
    pub output: PathBuf,
    #[arg(long, default_value = "validation loss and top-1 per epoch")]
    pub title: String,
}

/// Plots several runs' validation curves in one chart and prints their last epochs.
pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    use crate::training::curves::{line_chart, Panel, Series, COLORS};
    let inputs: Vec<PathBuf> = args.runs.iter().map(|r| r.join("metrics.csv")).collect();
    crate::io::atomic::check_output(
        "--output",
        &args.output,
        &inputs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    )?;
    let labels: Vec<String> = match &args.labels {
        Some(l) if l.len() == args.runs.len() => l.clone(),
        Some(l) => bail!("{} labels for {} runs", l.len(), args.runs.len()),
        None => args
            .runs
            .iter()
            .map(|r| r.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
            .collect(),
    };
    let (mut loss, mut acc) = (Vec::new(), Vec::new());
    println!(
        "{:<32} {:>6} {:>10} {:>10} {:>12} {:>12}",
        "run", "epochs", "val loss", "val top-1", "max val loss", "best top-1"
    );
    for (i, (run, label)) in args.runs.iter().zip(&labels).enumerate() {
        let path = run.join("metrics.csv");
        if !run.is_dir() {
            bail!("{}: no such run folder", run.display());
        }
        let rows = metrics::read_metrics(&path)?;
        if rows.is_empty() {
            bail!("{}: no epochs recorded", path.display());
        }
        let color = COLORS[i % COLORS.len()];
        loss.push(Series {
            name: label.clone(),
            color,
            points: rows.iter().map(|r| ((r.epoch + 1) as f64, r.val_loss)).collect(),
        });
        acc.push(Series {
            name: label.clone(),
            color,
            points: rows.iter().map(|r| ((r.epoch + 1) as f64, 100.0 * r.val_top1)).collect(),
        });
        let last = rows.last().unwrap();
        let max_loss = rows.iter().map(|r| r.val_loss).fold(f64::MIN, f64::max);
        let best = rows.iter().map(|r| r.val_top1).fold(f64::MIN, f64::max);
        println!(
            "{:<32} {:>6} {:>10.4} {:>9.2}% {:>12.3} {:>11.2}%",
            label,
            rows.len(),
            last.val_loss,
            100.0 * last.val_top1,
            max_loss,
            100.0 * best
        );
    }
    let panels = [
        Panel { title: "validation loss (log scale)".into(), x_label: "epoch".into(), series: loss, log_y: true },
        Panel { title: "validation top-1 (%)".into(), x_label: "epoch".into(), series: acc, log_y: false },
    ];
    line_chart(&panels, &args.title, &args.output)?;
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_flags_apply_without_model() {
        let args = ModelArgs {
            model: None,
            width_mult: Some(0.5),
            num_classes: None,
            bn_eps: Some(1e-4),
            bn_momentum: Some(0.1),
        };
        let c = train_model_config(&args, 7).unwrap();
        assert_eq!(
            (c.spec.arch, c.spec.num_classes, c.spec.width_mult, c.spec.norm_eps, c.norm_momentum),
            (Arch::V3Small, 7, 0.5, 1e-4, 0.1)
        );
        let args = ModelArgs { model: Some("v2".into()), bn_momentum: Some(0.3), ..args };
        let c = train_model_config(&args, 3).unwrap();
        assert_eq!((c.spec.arch, c.norm_momentum), (Arch::V2, 0.3));
        let args = ModelArgs { num_classes: Some(5), ..args };
        assert!(train_model_config(&args, 3)
            .unwrap_err()
            .to_string()
            .contains("--num-classes 5 but the data has 3 classes"));
    }
}
