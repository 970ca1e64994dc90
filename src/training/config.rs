//! What defines a training run: stored in every checkpoint, so `--resume` needs nothing else.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
use crate::error::{Error, Result};
use crate::models::ModelConfig;
use crate::training::optim::OptimizerConfig;
use crate::training::schedule::Schedule;

/// Everything that defines a run; stored in every checkpoint, so `--resume` needs nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    /// A folder, or [`crate::data::EMBEDDED`].
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
    /// Which implementation computes the steps (runs written before this setting used burn).
    #[serde(default)]
    pub backend: TrainBackend,
}

/// The most bytes one batch of network inputs may take (`batch x 3 x size x size` f32 values):
/// beyond it a run would die in an allocation, so it is refused up front.
pub const MAX_BATCH_INPUT_BYTES: u64 = 4 << 30;

/// Checks that `batch` images of `size x size` fit [`MAX_BATCH_INPUT_BYTES`]; the error names the
/// options.
pub fn check_batch_bytes(batch_option: &str, batch: usize, size: usize) -> Result<()> {
    let bytes = (batch as u64).saturating_mul(3 * 4).saturating_mul((size as u64).saturating_mul(size as u64));
    if bytes > MAX_BATCH_INPUT_BYTES {
        return Err(Error::InvalidConfig(format!(
            "{batch_option} {batch} at image size {size} needs {:.1} GiB for the input batch alone; at most {} GiB: \
             use a smaller batch or image size",
            bytes as f64 / (1u64 << 30) as f64,
            MAX_BATCH_INPUT_BYTES >> 30
        )));
    }
    Ok(())
}

impl TrainConfig {
    /// Every setting of a run, checked before anything runs: the command line's options (the
    /// messages name them) and a checkpoint's stored state on `--resume` alike. What this
    /// accepts, the training loop, `eval` and `predict` can run.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig(what));
        self.model.validate()?;
        self.augment.validate()?;
        if self.epochs == 0 || self.epochs > 1_000_000 {
            return bad(format!("--epochs must be in [1, 1000000], got {}", self.epochs));
        }
        if self.batch_size < 2 {
            return bad(format!(
                "--batch-size must be at least 2 (BatchNorm needs two values per channel), got {}",
                self.batch_size
            ));
        }
        check_batch_bytes("--batch-size", self.batch_size, self.augment.image_size)?;
        let finite = |name: &str, v: f64, ok: bool| -> Result<()> {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(Error::InvalidConfig(format!("{name} {v} is out of range")))
            }
        };
        let o = &self.optimizer;
        finite("--momentum", o.momentum, (0.0..1.0).contains(&o.momentum))?;
        finite("--weight-decay", o.weight_decay, o.weight_decay >= 0.0)?;
        finite("--opt-alpha", o.alpha, (0.0..1.0).contains(&o.alpha))?;
        finite("--opt-eps", o.eps, o.eps >= 0.0)?;
        finite("AdamW beta1", o.beta1, (0.0..1.0).contains(&o.beta1))?;
        if let Some(c) = o.clip_grad_norm {
            finite("--clip-grad-norm", c, c > 0.0)?;
        }
        let s = &self.schedule;
        finite("--lr", s.base_lr, s.base_lr > 0.0)?;
        finite("--warmup-epochs", s.warmup_epochs, s.warmup_epochs >= 0.0)?;
        finite("--warmup-factor", s.warmup_factor, s.warmup_factor > 0.0 && s.warmup_factor <= 1.0)?;
        finite("--lr-gamma", s.gamma, s.gamma > 0.0)?;
        finite("--min-lr", s.min_lr, s.min_lr >= 0.0)?;
        if s.step_size == 0 {
            return bad("--lr-step-size must be at least 1".into());
        }
        if s.epochs != self.epochs {
            return bad(format!("the schedule spans {} epochs but the run has {}", s.epochs, self.epochs));
        }
        finite("--label-smoothing", self.label_smoothing, (0.0..1.0).contains(&self.label_smoothing))?;
        if let Some(d) = self.ema_decay {
            finite("--ema-decay", d, d > 0.0 && d < 1.0)?;
        }
        if self.recalibrate_bn > 100_000 {
            return bad(format!("--recalibrate-bn {} is more batches than any data set needs", self.recalibrate_bn));
        }
        Ok(())
    }
}

/// Which implementation computes the training steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TrainBackend {
    /// burn's autodiff on `--device` (the CPU's flex backend, or a GPU).
    #[default]
    Burn,
    /// The hand-written CPU trainer (mobilenet-engine: NHWC, SIMD, no burn).
    Engine,
}

impl TrainBackend {
    /// How the run's messages name it.
    pub fn name(self) -> &'static str {
        match self {
            TrainBackend::Burn => "burn",
            TrainBackend::Engine => "CPU trainer",
        }
    }
}
