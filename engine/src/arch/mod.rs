//! The four architectures as data, described once for every consumer.
//!
//! - [`tables`]: the papers' tables (V1 Table 1, V2 Table 2, V3 Tables 1 and 2), unscaled.
//! - [`plan`]: [`Plan::new`] resolves a [`ModelSpec`] (architecture, width, classes) into the
//!   list of layers with their torchvision keys, channels, kernels, strides, squeeze widths,
//!   activations, residual connections and classifier layout. The `mobilenet` crate's burn
//!   models, the engine's lowering and the summary table are all loops over a plan: no rule of
//!   an architecture (V2's 1280-channel floor, V3's `6 · last` conv, when a block adds its
//!   input) is written anywhere else.

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

pub mod plan;
pub mod tables;

pub use plan::{Block, BlockLayer, ConvLayer, HeadLayer, LinearLayer, Plan, SqueezeExcite, Stage};
pub use tables::BneckConfig;

/// The four architectures, named as torchvision names its constructors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "mobilenet_v1")]
    V1,
    #[serde(rename = "mobilenet_v2")]
    V2,
    #[serde(rename = "mobilenet_v3_large")]
    V3Large,
    #[serde(rename = "mobilenet_v3_small")]
    V3Small,
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::V1, Arch::V2, Arch::V3Large, Arch::V3Small];

    pub fn name(&self) -> &'static str {
        match self {
            Arch::V1 => "mobilenet_v1",
            Arch::V2 => "mobilenet_v2",
            Arch::V3Large => "mobilenet_v3_large",
            Arch::V3Small => "mobilenet_v3_small",
        }
    }

    /// Accepts `mobilenet_v3_small`, `v3_small`, `v3-small`, any case.
    pub fn parse(s: &str) -> Option<Arch> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        Arch::ALL.into_iter().find(|a| a.name() == key || a.name().trim_start_matches("mobilenet_") == key)
    }

    /// BatchNorm eps: PyTorch's for V1/V2, TensorFlow's for V3 (as torchvision).
    pub fn default_norm_eps(&self) -> f64 {
        match self {
            Arch::V1 | Arch::V2 => 1e-5,
            Arch::V3Large | Arch::V3Small => 1e-3,
        }
    }

    /// BatchNorm momentum (the weight of a new batch in the running statistics, torch's
    /// convention): PyTorch's 0.1 for V1/V2, TensorFlow's 0.01 for V3 (as torchvision), which is
    /// what makes V3's running statistics lag (docs/batchnorm-lag.md).
    pub fn default_norm_momentum(&self) -> f64 {
        match self {
            Arch::V1 | Arch::V2 => 0.1,
            Arch::V3Large | Arch::V3Small => 0.01,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        Arch::parse(s).ok_or_else(|| EngineError::UnknownModel(s.to_string()))
    }
}

/// The parameter-free activations of the family (the one definition: the burn models wrap it in
/// a module, the engine's kernels take it as a const code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// max(x, 0): V1 (paper), V2-V3 "RE" blocks.
    Relu,
    /// min(max(x, 0), 6): V2 everywhere, V1 in TF-slim and the write-up.
    Relu6,
    /// x · ReLU6(x + 3) / 6: V3 "HS" blocks, stem, last conv, classifier.
    Hardswish,
    /// ReLU6(x + 3) / 6: the gate of V3's squeeze-excite.
    Hardsigmoid,
}

impl Activation {
    /// torch's class name (the summary table's type column).
    pub fn torch_name(&self) -> &'static str {
        match self {
            Activation::Relu => "ReLU",
            Activation::Relu6 => "ReLU6",
            Activation::Hardswish => "Hardswish",
            Activation::Hardsigmoid => "Hardsigmoid",
        }
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.torch_name())
    }
}

/// torchvision's `_make_divisible`: round `value` to the nearest multiple of `divisor`, never
/// below `divisor` and never more than 10% below `value`.
pub fn make_divisible(value: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_value = ((value + d / 2.0) as usize / divisor * divisor).max(divisor);
    if (new_value as f64) < 0.9 * value {
        new_value += divisor;
    }
    new_value
}

/// `_make_divisible(c · width_mult, 8)`: how every family scales a channel count.
pub fn scale_channels(channels: usize, width_mult: f64) -> usize {
    make_divisible(channels as f64 * width_mult, 8)
}

/// The smallest input side the models accept (five stride-2 stages leave 1x1).
pub const MIN_INPUT_SIZE: usize = 32;

/// What defines a model's layers: architecture, classes, width, BatchNorm eps and V1's
/// activation. Stored as the `mobilenet.config` metadata of the weight files the `mobilenet`
/// tool writes, next to the training-only settings of its `ModelConfig` (which wraps this type;
/// extra fields are ignored here).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub arch: Arch,
    pub num_classes: usize,
    pub width_mult: f64,
    pub norm_eps: f64,
    /// V1 only: ReLU (the paper) or ReLU6 (TF-slim).
    #[serde(default = "default_v1_activation")]
    pub v1_activation: Activation,
}

fn default_v1_activation() -> Activation {
    Activation::Relu
}

impl ModelSpec {
    /// torchvision's defaults: 1000 classes, width 1.0.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            num_classes: 1000,
            width_mult: 1.0,
            norm_eps: arch.default_norm_eps(),
            v1_activation: Activation::Relu,
        }
    }

    pub fn with_num_classes(mut self, num_classes: usize) -> Self {
        self.num_classes = num_classes;
        self
    }

    pub fn with_width_mult(mut self, width_mult: f64) -> Self {
        self.width_mult = width_mult;
        self
    }

    pub fn with_norm_eps(mut self, norm_eps: f64) -> Self {
        self.norm_eps = norm_eps;
        self
    }

    pub fn with_v1_activation(mut self, activation: Activation) -> Self {
        self.v1_activation = activation;
        self
    }

    /// Rejects settings that would build a broken model, before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(EngineError::Spec(what));
        if self.num_classes == 0 {
            return bad("num_classes must be at least 1".into());
        }
        if !(self.width_mult.is_finite() && self.width_mult > 0.0 && self.width_mult <= 8.0) {
            return bad(format!("width_mult must be in (0, 8], got {}", self.width_mult));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(format!("BatchNorm eps must be positive, got {}", self.norm_eps));
        }
        if !matches!(self.v1_activation, Activation::Relu | Activation::Relu6) {
            return bad(format!("V1 activation must be ReLU or ReLU6, got {}", self.v1_activation));
        }
        Ok(())
    }

    /// Checks an input batch shape `[N, 3, H, W]` before it is run.
    pub fn check_input(dims: &[usize]) -> Result<()> {
        match dims {
            [n, 3, h, w] if *n > 0 && *h >= MIN_INPUT_SIZE && *w >= MIN_INPUT_SIZE => Ok(()),
            _ => Err(EngineError::InputShape {
                found: dims.to_vec(),
                expected: format!("[N>=1, 3, H>={MIN_INPUT_SIZE}, W>={MIN_INPUT_SIZE}]"),
            }),
        }
    }
}
