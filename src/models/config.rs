//! A model's configuration: the architecture's [`ModelSpec`] (what defines its layers, shared
//! with the engine) plus the settings only training uses.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::models::blocks::NormConfig;
pub use mobilenet_engine::arch::{Activation, Arch, ModelSpec, Plan, MIN_INPUT_SIZE};

/// Everything needed to build a model; saved as weight-file metadata (`mobilenet.config`, the
/// spec's fields flattened beside these) so a file loads without repeating the flags.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Architecture, classes, width multiplier α, BatchNorm eps, V1's activation.
    #[serde(flatten)]
    pub spec: ModelSpec,
    /// Dropout before the last Linear (torchvision: 0.2 for all).
    pub dropout: f64,
    /// Weight of the new batch statistic in BatchNorm's running averages (PyTorch convention).
    pub norm_momentum: f64,
}

impl ModelConfig {
    /// torchvision's defaults for `arch`: 1000 classes, width 1.0, dropout 0.2.
    pub fn new(arch: Arch) -> Self {
        Self { spec: ModelSpec::new(arch), dropout: 0.2, norm_momentum: arch.default_norm_momentum() }
    }

    pub fn arch(&self) -> Arch {
        self.spec.arch
    }

    pub fn with_num_classes(mut self, num_classes: usize) -> Self {
        self.spec.num_classes = num_classes;
        self
    }

    pub fn with_width_mult(mut self, width_mult: f64) -> Self {
        self.spec.width_mult = width_mult;
        self
    }

    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    pub fn with_norm(mut self, eps: f64, momentum: f64) -> Self {
        self.spec.norm_eps = eps;
        self.norm_momentum = momentum;
        self
    }

    pub fn with_v1_activation(mut self, activation: Activation) -> Self {
        self.spec.v1_activation = activation;
        self
    }

    pub fn norm(&self) -> NormConfig {
        NormConfig::new(self.spec.norm_eps, self.norm_momentum)
    }

    /// Rejects settings that would build a broken model, before anything is allocated: the
    /// spec's checks (shared with the engine), then dropout and momentum.
    pub fn validate(&self) -> Result<()> {
        self.spec.validate()?;
        let bad = |what: String| Err(mobilenet_engine::EngineError::Spec(what).into());
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(0.0..=1.0).contains(&self.norm_momentum) {
            return bad(format!("BatchNorm momentum must be in [0, 1], got {}", self.norm_momentum));
        }
        Ok(())
    }

    /// The resolved layers (validated first).
    pub fn plan(&self) -> Result<Plan> {
        self.validate()?;
        Ok(Plan::new(&self.spec)?)
    }
}
