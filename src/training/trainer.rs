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

use crate::data::loader::{self, Batch, Mode};
use crate::data::preprocess::Preprocess;
use crate::data::{self, Dataset};
use crate::error::{Error, Result};
use crate::inference::backend::{Backend, Runner};
use crate::io::weights;
use crate::models::MobileNet;
use crate::training::checkpoint::{self, Progress};
use crate::training::config::{TrainBackend, TrainConfig};
use crate::training::cpu::CpuSteps;
use crate::training::curves;
use crate::training::ema::Ema;
use crate::training::evaluate::{
    cross_entropy, evaluate_with, recalibrate_bn_burn, recalibration_batches, train_eval_gap, EvalResult,
};
use crate::training::metrics::{read_metrics, write_metrics, EpochMetrics};
use crate::training::optim::{trainable_filter, Optimizer};

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

/// Where a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub output: PathBuf,
    pub metrics: Vec<EpochMetrics>,
    pub final_eval: EvalResult,
}

/// Builds the starting model: fresh, or from `--init` weights. Everything but the last
/// classifier layer must match the file; that layer is replaced when the class count differs.
fn initial_model(config: &TrainConfig, device: &Device) -> Result<MobileNet> {
    let model = MobileNet::new(&config.model, device)?;
    let Some(init) = &config.init else {
        return Ok(model);
    };
    if let Some(stored) = weights::read_config(init)? {
        if stored.spec.arch != config.model.spec.arch {
            return Err(Error::file(
                init,
                format!("holds {}, but --model is {}", stored.spec.arch, config.model.spec.arch),
            ));
        }
    }
    let (model, head_loaded) = weights::load_backbone(model, init)?;
    if !head_loaded {
        eprintln!("{}: classifier replaced ({} classes)", init.display(), config.model.spec.num_classes);
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

/// How a run starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// A new run with this configuration (its output folder is created).
    Fresh(Box<TrainConfig>),
    /// The run in folder `dir`, from its `last.ckpt`, exactly where it stopped; on its own step
    /// path, or on `backend` (both paths read and write the same checkpoints).
    Resume { dir: PathBuf, backend: Option<TrainBackend> },
}

/// A run between two epochs: everything a checkpoint holds.
struct RunState {
    config: TrainConfig,
    model: MobileNet,
    optimizer: Optimizer,
    ema: Option<Ema>,
    progress: Progress,
    rows: Vec<EpochMetrics>,
}

impl RunState {
    fn fresh(config: TrainConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        std::fs::create_dir_all(&config.output).map_err(|e| Error::file(&config.output, e))?;
        // The initial weights (and a replaced classifier) come from the seeded generator too.
        device.seed(config.seed);
        let model = initial_model(&config, device)?;
        let progress =
            Progress { epochs_done: 0, optimizer_steps: 0, ema_updates: 0, best_top1: -1.0, best_epoch: None };
        let ema = Ema::new(&config, None, &model, 0);
        Ok(Self { optimizer: Optimizer::new(config.optimizer), config, model, ema, progress, rows: Vec::new() })
    }

    /// The run in `dir` as its `last.ckpt` records it. The folder is first brought to that
    /// state: temporary files of dead writers are swept, the committed epoch's staged files are
    /// published and uncommitted ones discarded ([`checkpoint::publish_epoch`]), and files the
    /// epoch promises but the folder lacks (a folder written before staging, or files deleted)
    /// are regenerated where the checkpoint holds what they need.
    fn resume(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join("last.ckpt");
        if !path.exists() {
            return Err(Error::file(&path, "no checkpoint to resume from"));
        }
        for removed in crate::io::atomic::sweep_stale_temps(dir) {
            eprintln!("removed {}, left by an interrupted write", removed.display());
        }
        let ckpt = checkpoint::load(&path, device)?;
        let done = ckpt.progress.epochs_done;
        checkpoint::publish_epoch(dir, done)?;
        let metrics = dir.join("metrics.csv");
        let mut rows = if done == 0 { Vec::new() } else { read_metrics(&metrics)? };
        rows.retain(|r| r.epoch < done);
        if rows.iter().map(|r| r.epoch).ne(0..done) {
            return Err(Error::file(
                &metrics,
                format!(
                    "records epochs {:?}, but last.ckpt has {done} completed epochs: the run folder is damaged",
                    rows.iter().map(|r| r.epoch + 1).collect::<Vec<_>>()
                ),
            ));
        }
        let mut config = ckpt.config;
        config.output = dir.to_path_buf();
        let ema = Ema::new(&config, ckpt.ema, &ckpt.model, ckpt.progress.ema_updates);
        let state = Self { config, model: ckpt.model, optimizer: ckpt.optimizer, ema, progress: ckpt.progress, rows };
        state.regenerate_missing(&path)?;
        Ok(state)
    }

    /// Rewrites the files of the last completed epoch that the folder lacks, from the
    /// checkpoint: `last.safetensors` (unless BatchNorm recalibration made it: that needs the
    /// data), `ema.safetensors`, and `best.*` when the last epoch was the best.
    fn regenerate_missing(&self, ckpt_path: &Path) -> Result<()> {
        if self.progress.epochs_done == 0 {
            return Ok(());
        }
        let out = &self.config.output;
        let regenerated = |file: &str| eprintln!("regenerated {} from last.ckpt", out.join(file).display());
        let last = out.join("last.safetensors");
        if !last.exists() && self.config.recalibrate_bn == 0 {
            save_weights(&self.model, &self.config, &last)?;
            regenerated("last.safetensors");
        }
        if let Some(ema) = self.ema_model() {
            if !out.join("ema.safetensors").exists() {
                save_weights(ema, &self.config, &out.join("ema.safetensors"))?;
                regenerated("ema.safetensors");
            }
        }
        if self.progress.best_epoch == Some(self.progress.epochs_done - 1) {
            if !out.join("best.ckpt").exists() {
                let bytes = std::fs::read(ckpt_path).map_err(|e| Error::file(ckpt_path, e))?;
                crate::io::atomic::write_atomic(&out.join("best.ckpt"), &bytes)?;
                regenerated("best.ckpt");
            }
            if !out.join("best.safetensors").exists() && last.exists() {
                let bytes = std::fs::read(&last).map_err(|e| Error::file(&last, e))?;
                crate::io::atomic::write_atomic(&out.join("best.safetensors"), &bytes)?;
                regenerated("best.safetensors");
            }
        }
        for file in ["last.safetensors", "best.ckpt", "best.safetensors"] {
            let promised = file == "last.safetensors" || self.progress.best_epoch.is_some();
            if promised && !out.join(file).exists() {
                eprintln!("warning: {} is missing and cannot be regenerated from last.ckpt", out.join(file).display());
            }
        }
        Ok(())
    }

    fn ema_model(&self) -> Option<&MobileNet> {
        self.ema.as_ref().and_then(|e| e.model.as_ref())
    }
}

/// The data of a run, checked against its model.
struct RunData {
    train: Arc<Dataset>,
    val: Arc<Dataset>,
}

impl RunData {
    fn load(config: &TrainConfig) -> Result<Self> {
        let splits = data::load_spec(&config.data)?;
        let classes = config.model.spec.num_classes;
        if splits.train.num_classes() != classes {
            return Err(Error::InvalidConfig(format!(
                "the data has {} classes but the model is configured for {classes}",
                splits.train.num_classes(),
            )));
        }
        Ok(Self { train: Arc::new(splits.train), val: Arc::new(splits.val) })
    }
}

/// What one epoch of optimizer steps saw.
struct EpochTraining {
    loss_sum: f64,
    correct: usize,
    seen: usize,
    /// The learning rate of the last step.
    lr: f64,
    /// The first batch, for the BatchNorm-lag probe.
    probe_batch: Option<Batch>,
    /// When the epoch began (its metrics row times training and evaluation together).
    started: Instant,
    /// Seconds of training steps alone.
    seconds: f64,
}

/// Runs (or resumes) training.
pub fn run(start: Start, device: &Device) -> Result<Outcome> {
    let mut state = match start {
        Start::Fresh(config) => RunState::fresh(*config, device)?,
        Start::Resume { dir, backend } => {
            let mut state = RunState::resume(&dir, device)?;
            if let Some(backend) = backend.filter(|&b| b != state.config.backend) {
                eprintln!(
                    "resuming on the {} step path (the run began on {})",
                    backend.name(),
                    state.config.backend.name()
                );
                state.config.backend = backend;
            }
            state
        }
    };
    let data = RunData::load(&state.config)?;
    let trainable = trainable_filter(&state.model, state.config.freeze_backbone, state.config.freeze_bn);
    state.model = state.model.train_mode();
    if state.config.freeze_bn {
        state.model = set_bn_training(state.model, false);
    }
    announce(&state, &data);
    let plain = device.clone().without_autodiff();
    // The CPU trainer holds the weights during epochs on the engine path.
    let mut cpu = match state.config.backend {
        TrainBackend::Burn => None,
        TrainBackend::Engine => Some(CpuSteps::new(&state.config, &state.model, &state.optimizer, state.ema.as_ref())?),
    };
    for epoch in state.progress.epochs_done..state.config.epochs {
        let training;
        (state, training) = match cpu.as_mut() {
            None => train_epoch(state, &data, epoch, &trainable, device)?,
            Some(cpu) => {
                let (mut state, training) = train_epoch_cpu(state, &data, epoch, &trainable, cpu)?;
                state.model = cpu.write_back(state.model, &mut state.optimizer, state.ema.as_mut(), &plain)?;
                (state, training)
            }
        };
        let eval_model = evaluation_model(&state, &data, &plain, cpu.as_mut())?;
        let row = evaluate_epoch(&state, &data, &eval_model, epoch, &training, &plain, cpu.as_mut())?;
        report_epoch(&state.config, &row);
        save_epoch(&mut state, row, &eval_model)?;
    }
    let final_model = evaluation_model(&state, &data, &plain, cpu.as_mut())?;
    let final_eval = evaluate_on(&state.config, &final_model, &data.val, &plain)?;
    Ok(Outcome { output: state.config.output, metrics: state.rows, final_eval })
}

fn announce(state: &RunState, data: &RunData) {
    let (config, spec) = (&state.config, &state.config.model.spec);
    eprintln!(
        "training {} ({} classes, width {}) on {} ({} train / {} val images), {} epochs, batch {}, steps on {}, into {}",
        spec.arch,
        spec.num_classes,
        spec.width_mult,
        config.data,
        data.train.len(),
        data.val.len(),
        config.epochs,
        config.batch_size,
        config.backend.name(),
        config.output.display()
    );
    if state.progress.epochs_done > 0 {
        eprintln!("resuming after epoch {} of {}", state.progress.epochs_done, config.epochs);
    }
}

/// One epoch of steps with a progress bar: the batches in the epoch's order, the schedule's
/// learning rate, and a stop on a non-finite loss (before that batch's update).
/// `step(batch, lr)` trains on one batch and returns its loss and correct top-1 predictions, or
/// the non-finite loss alone (then nothing was updated).
fn epoch_steps(
    config: &TrainConfig,
    data: &RunData,
    epoch: usize,
    mut step: impl FnMut(&Batch, f64) -> Result<(f64, usize)>,
) -> Result<EpochTraining> {
    let steps_per_epoch = data.train.len().div_ceil(config.batch_size);
    let order = loader::epoch_order(data.train.len(), config.seed, epoch);
    let mode = Mode::Train { seed: config.seed, epoch };
    let rx = loader::spawn(data.train.clone(), config.augment, order, config.batch_size, mode);
    let bar = progress_bar(steps_per_epoch as u64, &format!("epoch {}/{}", epoch + 1, config.epochs));
    let start = Instant::now();
    let mut t = EpochTraining {
        loss_sum: 0.0,
        correct: 0,
        seen: 0,
        lr: config.schedule.lr(epoch as f64),
        probe_batch: None,
        started: start,
        seconds: 0.0,
    };
    for (i, batch) in rx.into_iter().enumerate() {
        let batch = batch?;
        if batch.len() < 2 {
            continue; // BatchNorm needs more than one value per channel.
        }
        let lr = config.schedule.lr(epoch as f64 + i as f64 / steps_per_epoch as f64);
        let (loss, hits) = step(&batch, lr)?;
        if !loss.is_finite() {
            bar.abandon();
            return Err(Error::NonFiniteLoss {
                epoch: epoch + 1,
                batch: i + 1,
                checkpoint: config.output.join("last.ckpt"),
            });
        }
        t.lr = lr;
        t.loss_sum += loss * batch.len() as f64;
        t.correct += hits;
        t.seen += batch.len();
        if t.probe_batch.is_none() {
            t.probe_batch = Some(batch);
        }
        let rate = t.seen as f64 / start.elapsed().as_secs_f64();
        let (loss, acc) = (t.loss_sum / t.seen as f64, 100.0 * t.correct as f64 / t.seen as f64);
        bar.set_message(format!("loss {loss:.4} acc {acc:.2}% {rate:.0} img/s lr {:.4}", t.lr));
        bar.inc(1);
    }
    bar.finish_and_clear();
    t.seconds = start.elapsed().as_secs_f64();
    if t.seen == 0 {
        return Err(Error::InvalidConfig("the training split gave no batch of at least two images".into()));
    }
    Ok(t)
}

/// One epoch on burn. (Takes the state by value: the model moves through the optimizer, which
/// updates tensors in place only when nothing else holds them.)
fn train_epoch(
    mut state: RunState,
    data: &RunData,
    epoch: usize,
    trainable: &dyn Fn(&str) -> bool,
    device: &Device,
) -> Result<(RunState, EpochTraining)> {
    // Every source of randomness in the epoch derives from (seed, epoch): resume is exact.
    device.seed(state.config.seed.wrapping_add(epoch as u64));
    let mut model = Some(state.model);
    let (config, optimizer, ema) = (&state.config, &mut state.optimizer, &mut state.ema);
    let t = epoch_steps(config, data, epoch, |batch, lr| {
        let current = model.take().expect("the model between steps");
        let (x, y) = batch.to_tensors(device);
        let logits = current.forward(x);
        let loss = cross_entropy(logits.clone(), y.clone(), config.label_smoothing);
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        if !loss_value.is_finite() {
            model = Some(current);
            return Ok((loss_value, 0));
        }
        let hits = logits.argmax(1).reshape([batch.len()]).equal(y).int().sum().into_scalar::<i64>() as usize;
        let grads = loss.backward();
        let (next, _) = optimizer.step(current, &grads, lr, trainable);
        if let Some(ema) = ema.as_mut() {
            ema.update(&next);
        }
        model = Some(next);
        Ok((loss_value, hits))
    })?;
    state.model = model.expect("the model after the epoch");
    Ok((state, t))
}

/// One epoch on the CPU trainer (`--train-backend engine`).
fn train_epoch_cpu(
    mut state: RunState,
    data: &RunData,
    epoch: usize,
    trainable: &dyn Fn(&str) -> bool,
    cpu: &mut CpuSteps,
) -> Result<(RunState, EpochTraining)> {
    cpu.start_epoch(state.config.seed, epoch);
    let (config, ema) = (&state.config, &mut state.ema);
    let t = epoch_steps(config, data, epoch, |batch, lr| cpu.step(batch, lr, trainable, ema.as_mut()))?;
    Ok((state, t))
}

fn eval_batch(config: &TrainConfig) -> usize {
    config.batch_size.max(64)
}

/// The weights as evaluated and saved: eval mode, BatchNorm recalibrated when asked (on the
/// run's CPU trainer when it has one).
fn evaluation_model(state: &RunState, data: &RunData, plain: &Device, cpu: Option<&mut CpuSteps>) -> Result<MobileNet> {
    let config = &state.config;
    let model = state.model.valid();
    if config.recalibrate_bn == 0 {
        return Ok(model);
    }
    let batches =
        recalibration_batches(&data.train, &config.augment, config.recalibrate_bn, config.batch_size, config.seed);
    match cpu {
        Some(cpu) => cpu.recalibrated(model, batches),
        None => recalibrate_bn_burn(model, batches, plain),
    }
}

/// Validation of `model`: on the inference engine when the run trains on the CPU trainer, else
/// on burn (`plain`: the run's device without autodiff).
fn evaluate_on(config: &TrainConfig, model: &MobileNet, data: &Arc<Dataset>, plain: &Device) -> Result<EvalResult> {
    let backend = match config.backend {
        TrainBackend::Engine => Backend::Engine,
        TrainBackend::Burn => Backend::Burn,
    };
    let runner = Runner::new(model.valid(), backend, plain, 0)?;
    evaluate_with(&runner, data, &config.augment, eval_batch(config), |_| {})
}

/// Validation of the weights and the EMA, and the BatchNorm-lag probe: the epoch's metrics row.
fn evaluate_epoch(
    state: &RunState,
    data: &RunData,
    eval_model: &MobileNet,
    epoch: usize,
    t: &EpochTraining,
    plain: &Device,
    cpu: Option<&mut CpuSteps>,
) -> Result<EpochMetrics> {
    let config = &state.config;
    let val = evaluate_on(config, eval_model, &data.val, plain)?;
    let ema_val = match state.ema_model() {
        Some(m) => Some(evaluate_on(config, m, &data.val, plain)?),
        None => None,
    };
    let (probe_train, probe_eval) = match (&t.probe_batch, cpu) {
        (Some(batch), Some(cpu)) => cpu.train_eval_gap(batch)?,
        (Some(batch), None) => train_eval_gap(&state.model, batch, plain),
        (None, _) => (f64::NAN, f64::NAN),
    };
    warn_bn_lag(config, probe_train, probe_eval);
    Ok(EpochMetrics {
        epoch,
        train_loss: t.loss_sum / t.seen as f64,
        train_top1: t.correct as f64 / t.seen as f64,
        val_loss: val.loss,
        val_top1: val.top1,
        val_top5: val.top5,
        ema_val_loss: ema_val.as_ref().map(|e| e.loss),
        ema_val_top1: ema_val.as_ref().map(|e| e.top1),
        probe_train_mode_loss: probe_train,
        probe_eval_mode_loss: probe_eval,
        lr: t.lr,
        seconds: t.started.elapsed().as_secs_f64(),
        images_per_s: t.seen as f64 / t.seconds,
    })
}

fn report_epoch(config: &TrainConfig, row: &EpochMetrics) {
    eprintln!(
        "epoch {:>3}/{}: train loss {:.4} top-1 {:.2}% | val loss {:.4} top-1 {:.2}% top-5 {:.2}%{} | {:.0} img/s, {:.1} s",
        row.epoch + 1,
        config.epochs,
        row.train_loss,
        100.0 * row.train_top1,
        row.val_loss,
        100.0 * row.val_top1,
        100.0 * row.val_top5,
        row.ema_val_top1.map(|top1| format!(" | EMA val top-1 {:.2}%", 100.0 * top1)).unwrap_or_default(),
        row.images_per_s,
        row.seconds
    );
}

/// Metrics, curves, `last` checkpoint and weights, and `best` when the epoch improved: staged,
/// committed by replacing `last.ckpt`, then published (see [`checkpoint::stage_dir`]), so that a
/// kill at any instant leaves a folder that is, or on resume becomes, the recorded epoch's.
fn save_epoch(state: &mut RunState, row: EpochMetrics, eval_model: &MobileNet) -> Result<()> {
    let out = state.config.output.clone();
    let (epoch, val_top1) = (row.epoch, row.val_top1);
    state.rows.push(row);
    let progress = &mut state.progress;
    progress.epochs_done = epoch + 1;
    progress.optimizer_steps = state.optimizer.steps;
    progress.ema_updates = state.ema.as_ref().map(|e| e.updates).unwrap_or(0);
    let improved = val_top1 > progress.best_top1;
    if improved {
        progress.best_top1 = val_top1;
        progress.best_epoch = Some(epoch);
    }
    let stage = checkpoint::stage_dir(&out, epoch + 1);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| Error::file(&stage, e))?;
    }
    std::fs::create_dir(&stage).map_err(|e| Error::file(&stage, e))?;
    write_metrics(&stage.join("metrics.csv"), &state.rows)?;
    let title = format!("{} on {}", state.config.model.spec.arch, state.config.data);
    if let Err(e) = curves::training_curves(&state.rows, &stage.join("curves.png"), &title) {
        eprintln!("warning: could not draw {}: {e}", out.join("curves.png").display());
    }
    let (config, ema) = (&state.config, state.ema_model());
    let ckpt = checkpoint::to_bytes(config, &state.progress, &state.model, &state.optimizer, ema)?;
    save_weights(eval_model, config, &stage.join("last.safetensors"))?;
    if let Some(e) = ema {
        save_weights(e, config, &stage.join("ema.safetensors"))?;
    }
    if improved {
        crate::io::atomic::write_atomic(&stage.join("best.ckpt"), &ckpt)?;
        save_weights(eval_model, config, &stage.join("best.safetensors"))?;
    }
    crate::io::atomic::write_atomic(&out.join("last.ckpt"), &ckpt)?;
    checkpoint::publish_epoch(&out, epoch + 1)
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
