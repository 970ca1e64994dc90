//! What defines a training run: stored in every checkpoint, so `--resume` needs nothing else.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentConfig;
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
