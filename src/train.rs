//! The training loop: data in the background, one optimizer step per batch, an evaluation per
//! epoch (raw weights and EMA), `metrics.csv` and `curves.png` regenerated every epoch, atomic
//! `last.ckpt`/`best.ckpt` checkpoints, exact resume, and a stop with a clear message on a
//! non-finite loss. Backend-neutral: the device decides where it runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{Flag, Module, ModuleMapper, Param};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::augment::AugmentConfig;
use crate::checkpoint::{self, Progress};
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::evaluate::{cross_entropy, evaluate, recalibrate_bn, train_eval_gap, EvalResult};
use crate::loader::{self, Mode};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::preprocess::Preprocess;
use crate::schedule::Schedule;
use crate::{chart, params, weights, MobileNet, ModelConfig};

/// Everything that defines a run; stored in every checkpoint, so `--resume` needs nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    /// A folder, or [`data::EMBEDDED`].
    pub data: String,
    pub output: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub label_smoothing: f64,
    /// Exponential moving average of the weights (decay per step), evaluated beside them.
    pub ema_decay: Option<f64>,
    /// Warm the EMA up: decay_t = min(decay, (1 + t) / (10 + t)).
    pub ema_warmup: bool,
    pub seed: u64,
    pub augment: AugmentConfig,
    /// Pretrained weights to start from (the classifier is replaced if the class count differs).
    pub init: Option<PathBuf>,
    pub freeze_backbone: bool,
    /// Keep BatchNorm in eval mode and its parameters fixed.
    pub freeze_bn: bool,
    /// Recalibrate BN statistics over this many training batches before each evaluation.
    pub recalibrate_bn: usize,
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_top1: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub ema_val_loss: Option<f64>,
    pub ema_val_top1: Option<f64>,
    /// Loss on a training batch in train mode (batch statistics) and in eval mode (running
    /// statistics): the BatchNorm-lag probe.
    pub probe_train_mode_loss: f64,
    pub probe_eval_mode_loss: f64,
    pub lr: f64,
    pub seconds: f64,
    pub images_per_s: f64,
}

const CSV_HEADER: &str = "epoch,train_loss,train_top1,val_loss,val_top1,val_top5,ema_val_loss,ema_val_top1,probe_train_mode_loss,probe_eval_mode_loss,lr,seconds,images_per_s";

impl EpochMetrics {
    fn csv(&self) -> String {
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{},{},{:.6},{:.6},{:.8},{:.2},{:.1}",
            self.epoch,
            self.train_loss,
            self.train_top1,
            self.val_loss,
            self.val_top1,
            self.val_top5,
            opt(self.ema_val_loss),
            opt(self.ema_val_top1),
            self.probe_train_mode_loss,
            self.probe_eval_mode_loss,
            self.lr,
            self.seconds,
            self.images_per_s
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 13 {
            return None;
        }
        let n = |i: usize| f[i].parse::<f64>().ok();
        let o = |i: usize| if f[i].is_empty() { Some(None) } else { f[i].parse::<f64>().ok().map(Some) };
        Some(Self {
            epoch: f[0].parse().ok()?,
            train_loss: n(1)?,
            train_top1: n(2)?,
            val_loss: n(3)?,
            val_top1: n(4)?,
            val_top5: n(5)?,
            ema_val_loss: o(6)?,
            ema_val_top1: o(7)?,
            probe_train_mode_loss: n(8)?,
            probe_eval_mode_loss: n(9)?,
            lr: n(10)?,
            seconds: n(11)?,
            images_per_s: n(12)?,
        })
    }
}

/// Reads `metrics.csv` (rows that do not parse are dropped).
pub fn read_metrics(path: &Path) -> Vec<EpochMetrics> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().skip(1).filter_map(EpochMetrics::parse).collect())
        .unwrap_or_default()
}

fn write_metrics(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for row in rows {
        text.push_str(&row.csv());
        text.push('\n');
    }
    crate::tensor_io::write_atomic(path, text.as_bytes())
}

/// Sets the train/eval flag of every BatchNorm (not Dropout) — `--freeze-bn`.
fn set_bn_training(model: MobileNet, training: bool) -> MobileNet {
    struct BnFlags {
        training: bool,
        containers: Vec<String>,
    }
    impl ModuleMapper for BnFlags {
        fn enter_module(&mut self, _name: &str, container_type: &str) {
            self.containers.push(container_type.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.containers.pop();
        }
        fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
            match self.containers.last().map(String::as_str) {
                Some("Struct:BatchNorm2d") => flag.with_value(self.training),
                _ => flag,
            }
        }
    }
    model.map(&mut BnFlags { training, containers: Vec::new() })
}

/// The weight EMA: a plain-device copy updated after every optimizer step.
struct Ema {
    model: Option<MobileNet>,
    decay: f64,
    warmup: bool,
    updates: u64,
}

impl Ema {
    fn update(&mut self, model: &MobileNet) {
        self.updates += 1;
        let t = self.updates as f64;
        let d = if self.warmup { self.decay.min((1.0 + t) / (10.0 + t)) } else { self.decay };
        let current = params::collect(model);
        let ema = self.model.take().expect("ema model");
        // Running statistics are averaged too (torchvision's `use_buffers=True`).
        self.model = Some(params::map(ema, |path, flat| {
            current.get(path).map(|c| flat.value.clone().mul_scalar(d) + c.value.clone().mul_scalar(1.0 - d))
        }));
    }
}

/// Where a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub output: PathBuf,
    pub metrics: Vec<EpochMetrics>,
    pub final_eval: EvalResult,
}

/// Which parameters the optimizer updates, by key.
fn trainable_filter(model: &MobileNet, config: &TrainConfig) -> impl Fn(&str) -> bool {
    let bn_prefixes: Vec<String> = params::collect(model)
        .keys()
        .filter_map(|k| k.strip_suffix(".running_mean").map(|p| format!("{p}.")))
        .collect();
    let (freeze_backbone, freeze_bn) = (config.freeze_backbone, config.freeze_bn);
    move |path: &str| {
        if freeze_backbone && !path.starts_with("classifier") {
            return false;
        }
        !(freeze_bn && bn_prefixes.iter().any(|p| path.starts_with(p.as_str())))
    }
}

/// Builds the starting model: fresh, or from `--init` weights. Everything but the last
/// classifier layer must match the file; that layer is replaced when the class count differs.
fn initial_model(config: &TrainConfig, device: &Device) -> Result<MobileNet> {
    let model = MobileNet::new(&config.model, device)?;
    let Some(init) = &config.init else {
        return Ok(model);
    };
    if let Some(stored) = weights::read_config(init)? {
        if stored.arch != config.model.arch {
            return Err(Error::file(init, format!("holds {}, but --model is {}", stored.arch, config.model.arch)));
        }
    }
    let (model, head_loaded) = weights::load_backbone(model, init)?;
    if !head_loaded {
        eprintln!("{}: classifier replaced ({} classes)", init.display(), config.model.num_classes);
    }
    Ok(model)
}

fn saved_preprocess(config: &TrainConfig) -> Preprocess {
    config.augment.eval_preprocess()
}

/// Saves plain weights (for `eval`/`predict`) with the run's preprocessing as metadata.
fn save_weights(model: &MobileNet, config: &TrainConfig, path: &Path) -> Result<()> {
    weights::save_with_metadata(&model.valid(), path, &[saved_preprocess(config).to_metadata()])
}

/// Runs (or resumes) training. `resume` is a run folder holding `last.ckpt`.
pub fn run(config: Option<TrainConfig>, resume: Option<&Path>, device: &Device) -> Result<Outcome> {
    let (config, mut model, mut optimizer, ema_model, mut progress, mut rows) = match resume {
        Some(dir) => {
            let path = dir.join("last.ckpt");
            if !path.exists() {
                return Err(Error::file(&path, "no checkpoint to resume from"));
            }
            let ckpt = checkpoint::load(&path, device)?;
            let mut rows = read_metrics(&dir.join("metrics.csv"));
            rows.retain(|r| r.epoch < ckpt.progress.epochs_done);
            let mut config = ckpt.config;
            config.output = dir.to_path_buf();
            (config, ckpt.model, ckpt.optimizer, ckpt.ema, ckpt.progress, rows)
        }
        None => {
            let config = config.expect("a configuration or a run to resume");
            std::fs::create_dir_all(&config.output).map_err(|e| Error::file(&config.output, e))?;
            // The initial weights (and a replaced classifier) come from the seeded generator too.
            device.seed(config.seed);
            let model = initial_model(&config, device)?;
            let ema = config.ema_decay.map(|_| model.valid().eval_mode());
            let progress = Progress { epochs_done: 0, optimizer_steps: 0, ema_updates: 0, best_top1: -1.0, best_epoch: None };
            (config.clone(), model, Optimizer::new(config.optimizer), ema, progress, Vec::new())
        }
    };
    let out = config.output.clone();
    let splits = data::load_spec(&config.data)?;
    if splits.train.num_classes() != config.model.num_classes {
        return Err(Error::InvalidConfig(format!(
            "the data has {} classes but the model is configured for {}",
            splits.train.num_classes(),
            config.model.num_classes
        )));
    }
    let train_set: Arc<Dataset> = Arc::new(splits.train);
    let val_set: Arc<Dataset> = Arc::new(splits.val);
    let mut ema = config.ema_decay.map(|decay| Ema {
        model: ema_model.or_else(|| Some(model.valid().eval_mode())),
        decay,
        warmup: config.ema_warmup,
        updates: progress.ema_updates,
    });
    let trainable = trainable_filter(&model, &config);
    model = model.train_mode();
    if config.freeze_bn {
        model = set_bn_training(model, false);
    }
    let plain = device.clone().without_autodiff();
    let steps_per_epoch = train_set.len().div_ceil(config.batch_size);
    eprintln!(
        "training {} ({} classes, width {}) on {} ({} train / {} val images), {} epochs, batch {}, into {}",
        config.model.arch,
        config.model.num_classes,
        config.model.width_mult,
        config.data,
        train_set.len(),
        val_set.len(),
        config.epochs,
        config.batch_size,
        out.display()
    );
    if progress.epochs_done > 0 {
        eprintln!("resuming after epoch {} of {}", progress.epochs_done, config.epochs);
    }

    for epoch in progress.epochs_done..config.epochs {
        // Every source of randomness in the epoch derives from (seed, epoch): resume is exact.
        device.seed(config.seed.wrapping_add(epoch as u64));
        let order = loader::epoch_order(train_set.len(), config.seed, epoch);
        let rx = loader::spawn(train_set.clone(), config.augment, order, config.batch_size, Mode::Train { seed: config.seed, epoch });
        let bar = progress_bar(steps_per_epoch as u64, &format!("epoch {}/{}", epoch + 1, config.epochs));
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut lr = config.schedule.lr(epoch as f64);
        let mut probe_batch = None;
        for (i, batch) in rx.into_iter().enumerate() {
            let batch = batch?;
            if batch.len() < 2 {
                continue; // BatchNorm needs more than one value per channel.
            }
            let (x, y) = batch.to_tensors(device);
            let logits = model.forward(x);
            let loss = cross_entropy(logits.clone(), y.clone(), config.label_smoothing);
            let loss_value = loss.clone().into_scalar::<f32>() as f64;
            if !loss_value.is_finite() {
                bar.abandon();
                return Err(Error::NonFiniteLoss {
                    epoch: epoch + 1,
                    batch: i + 1,
                    checkpoint: out.join("last.ckpt"),
                });
            }
            let hits = logits.argmax(1).reshape([batch.len()]).equal(y).int().sum().into_scalar::<i64>() as usize;
            let grads = loss.backward();
            lr = config.schedule.lr(epoch as f64 + i as f64 / steps_per_epoch as f64);
            let (next, _) = optimizer.step(model, &grads, lr, &trainable);
            model = next;
            if let Some(ema) = ema.as_mut() {
                ema.update(&model);
            }
            loss_sum += loss_value * batch.len() as f64;
            correct += hits;
            seen += batch.len();
            if probe_batch.is_none() {
                probe_batch = Some(batch);
            }
            let rate = seen as f64 / start.elapsed().as_secs_f64();
            bar.set_message(format!("loss {:.4} acc {:.2}% {:.0} img/s lr {:.4}", loss_sum / seen as f64, 100.0 * correct as f64 / seen as f64, rate, lr));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_seconds = start.elapsed().as_secs_f64();
        if seen == 0 {
            return Err(Error::InvalidConfig("the training split gave no batch of at least two images".into()));
        }

        // Evaluate the raw weights and the EMA, optionally after BN recalibration.
        let mut eval_model = model.valid();
        if config.recalibrate_bn > 0 {
            eval_model = recalibrate_bn(eval_model, &train_set, &config.augment, config.recalibrate_bn, config.batch_size, config.seed, &plain)?;
        }
        let val = evaluate(&eval_model, &val_set, &config.augment, config.batch_size.max(64), &plain, |_| {})?;
        let ema_val = match ema.as_ref().and_then(|e| e.model.as_ref()) {
            Some(m) => Some(evaluate(m, &val_set, &config.augment, config.batch_size.max(64), &plain, |_| {})?),
            None => None,
        };
        let (probe_train, probe_eval) = match &probe_batch {
            Some(batch) => train_eval_gap(&model, batch, &plain),
            None => (f64::NAN, f64::NAN),
        };
        let row = EpochMetrics {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_top1: correct as f64 / seen as f64,
            val_loss: val.loss,
            val_top1: val.top1,
            val_top5: val.top5,
            ema_val_loss: ema_val.as_ref().map(|e| e.loss),
            ema_val_top1: ema_val.as_ref().map(|e| e.top1),
            probe_train_mode_loss: probe_train,
            probe_eval_mode_loss: probe_eval,
            lr,
            seconds: start.elapsed().as_secs_f64(),
            images_per_s: seen as f64 / train_seconds,
        };
        eprintln!(
            "epoch {:>3}/{}: train loss {:.4} top-1 {:.2}% | val loss {:.4} top-1 {:.2}% top-5 {:.2}%{} | {:.0} img/s, {:.1} s",
            epoch + 1,
            config.epochs,
            row.train_loss,
            100.0 * row.train_top1,
            row.val_loss,
            100.0 * row.val_top1,
            100.0 * row.val_top5,
            ema_val.as_ref().map(|e| format!(" | EMA val top-1 {:.2}%", 100.0 * e.top1)).unwrap_or_default(),
            row.images_per_s,
            row.seconds
        );
        warn_bn_lag(&config, probe_train, probe_eval);
        rows.push(row);
        write_metrics(&out.join("metrics.csv"), &rows)?;
        if let Err(e) = chart::training_curves(&rows, &out.join("curves.png"), &format!("{} on {}", config.model.arch, config.data)) {
            eprintln!("warning: could not draw {}: {e}", out.join("curves.png").display());
        }

        progress.epochs_done = epoch + 1;
        progress.optimizer_steps = optimizer.steps;
        progress.ema_updates = ema.as_ref().map(|e| e.updates).unwrap_or(0);
        let improved = val.top1 > progress.best_top1;
        if improved {
            progress.best_top1 = val.top1;
            progress.best_epoch = Some(epoch);
        }
        let ema_ref = ema.as_ref().and_then(|e| e.model.as_ref());
        checkpoint::save(&out.join("last.ckpt"), &config, &progress, &model, &optimizer, ema_ref)?;
        save_weights(&eval_model, &config, &out.join("last.safetensors"))?;
        if let Some(e) = ema_ref {
            save_weights(e, &config, &out.join("ema.safetensors"))?;
        }
        if improved {
            checkpoint::save(&out.join("best.ckpt"), &config, &progress, &model, &optimizer, ema_ref)?;
            save_weights(&eval_model, &config, &out.join("best.safetensors"))?;
        }
    }

    // The final evaluation of the last weights (recalibrated when asked).
    let mut final_model = model.valid();
    if config.recalibrate_bn > 0 {
        final_model = recalibrate_bn(final_model, &train_set, &config.augment, config.recalibrate_bn, config.batch_size, config.seed, &plain)?;
    }
    let final_eval = evaluate(&final_model, &val_set, &config.augment, config.batch_size.max(64), &plain, |_| {})?;
    Ok(Outcome { output: out, metrics: rows, final_eval })
}

/// Warns when BatchNorm's running statistics no longer describe the weights: the same batch
/// scores much worse in eval mode than in train mode.
fn warn_bn_lag(config: &TrainConfig, train_mode: f64, eval_mode: f64) {
    if eval_mode.is_finite() && eval_mode > 1.5 * train_mode && eval_mode - train_mode > 0.5 {
        eprintln!(
            "warning: on the same training batch the eval-mode loss is {eval_mode:.3} but the train-mode loss is {train_mode:.3}: \
             BatchNorm's running statistics lag behind the weights (momentum {}). Evaluate after `--recalibrate-bn 50` \
             (or run `mobilenet recalibrate-bn`), or train with a faster `--bn-momentum 0.1`. See docs/batchnorm-lag.md.",
            config.model.norm_momentum
        );
    }
}

fn progress_bar(len: u64, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}
