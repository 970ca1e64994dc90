//! The model zoo: one name per architecture, one configuration type for all of them, and the
//! [`MobileNet`] type that gives every family the same API (timm-style: features, head,
//! classifier reset, train/eval mode).

use burn::module::{Flag, Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::blocks::{Activation, NormConfig};
use crate::error::{Error, Result};
use crate::summary::ShapeTrace;
use crate::{MobileNetV1, MobileNetV2, MobileNetV3};

/// The four architectures, named as torchvision names its constructors (defined in the engine
/// crate, so that both implementations share one list).
pub use mobilenet_engine::Arch;

/// Default BatchNorm settings: PyTorch's for V1/V2, TensorFlow's for V3 (as torchvision).
pub fn default_norm(arch: Arch) -> NormConfig {
    match arch {
        Arch::V1 | Arch::V2 => NormConfig::new(1e-5, 0.1),
        Arch::V3Large | Arch::V3Small => NormConfig::new(1e-3, 0.01),
    }
}

/// Everything needed to build a model; saved as weight-file metadata so a file loads without
/// repeating the flags.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub num_classes: usize,
    /// Channel multiplier α; channels go through `_make_divisible(c · α, 8)`.
    pub width_mult: f64,
    /// Dropout before the last Linear (torchvision: 0.2 for all).
    pub dropout: f64,
    pub norm_eps: f64,
    pub norm_momentum: f64,
    /// V1 only: ReLU (the paper) or ReLU6 (TF-slim, the write-up).
    pub v1_activation: Activation,
}

impl ModelConfig {
    /// torchvision's defaults for `arch`: 1000 classes, width 1.0, dropout 0.2.
    pub fn new(arch: Arch) -> Self {
        let norm = default_norm(arch);
        Self {
            arch,
            num_classes: 1000,
            width_mult: 1.0,
            dropout: 0.2,
            norm_eps: norm.eps,
            norm_momentum: norm.momentum,
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

    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    pub fn with_norm(mut self, eps: f64, momentum: f64) -> Self {
        self.norm_eps = eps;
        self.norm_momentum = momentum;
        self
    }

    pub fn with_v1_activation(mut self, activation: Activation) -> Self {
        self.v1_activation = activation;
        self
    }

    pub fn norm(&self) -> NormConfig {
        NormConfig::new(self.norm_eps, self.norm_momentum)
    }

    /// Rejects settings that would build a broken model, before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig(what));
        if self.num_classes == 0 {
            return bad("num_classes must be at least 1".into());
        }
        if !(self.width_mult.is_finite() && self.width_mult > 0.0 && self.width_mult <= 8.0) {
            return bad(format!("width_mult must be in (0, 8], got {}", self.width_mult));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(format!("BatchNorm eps must be positive, got {}", self.norm_eps));
        }
        if !(0.0..=1.0).contains(&self.norm_momentum) {
            return bad(format!("BatchNorm momentum must be in [0, 1], got {}", self.norm_momentum));
        }
        if !matches!(self.v1_activation, Activation::Relu | Activation::Relu6) {
            return bad(format!("V1 activation must be ReLU or ReLU6, got {}", self.v1_activation));
        }
        Ok(())
    }
}

/// The smallest input side the models accept (five stride-2 stages leave 1x1).
pub const MIN_INPUT_SIZE: usize = 32;

/// Any MobileNet. Module paths skip the variant name (`V2`), so they equal torchvision's keys
/// when stores are built with `skip_enum_variants(true)`, as [`crate::weights`] does.
#[derive(Module, Debug)]
pub enum MobileNet {
    V1(MobileNetV1),
    V2(MobileNetV2),
    V3(MobileNetV3),
}

macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            MobileNet::V1($m) => $body,
            MobileNet::V2($m) => $body,
            MobileNet::V3($m) => $body,
        }
    };
}

impl MobileNet {
    /// Builds a freshly initialised model (train mode, as a new torchvision model is).
    pub fn new(config: &ModelConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        Ok(match config.arch {
            Arch::V1 => MobileNet::V1(MobileNetV1::new(config, device)),
            Arch::V2 => MobileNet::V2(MobileNetV2::new(config, device)),
            Arch::V3Large | Arch::V3Small => MobileNet::V3(MobileNetV3::new(config, device)),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        each!(self, m => &m.config)
    }

    /// Logits, shape `[N, num_classes]`. No softmax: losses take logits.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_head(self.forward_features(x))
    }

    /// The last feature map, before pooling: `[N, C, H/32, W/32]`.
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<4> {
        each!(self, m => m.forward_features(x))
    }

    /// Global average pool and classifier.
    pub fn forward_head(&self, features: Tensor<4>) -> Tensor<2> {
        each!(self, m => m.forward_head(features))
    }

    /// The output of every top-level `features` layer, in order (for feature pyramids and
    /// inspection).
    pub fn forward_intermediates(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        each!(self, m => m.forward_intermediates(x))
    }

    pub fn num_classes(&self) -> usize {
        self.config().num_classes
    }

    /// Channels of the pooled features fed to the classifier.
    pub fn num_features(&self) -> usize {
        each!(self, m => m.num_features())
    }

    /// Replaces the last Linear with a freshly initialised one for `num_classes` classes.
    pub fn reset_classifier(self, num_classes: usize, device: &Device) -> Result<Self> {
        if num_classes == 0 {
            return Err(Error::InvalidConfig("num_classes must be at least 1".into()));
        }
        Ok(match self {
            MobileNet::V1(m) => MobileNet::V1(m.reset_classifier(num_classes, device)),
            MobileNet::V2(m) => MobileNet::V2(m.reset_classifier(num_classes, device)),
            MobileNet::V3(m) => MobileNet::V3(m.reset_classifier(num_classes, device)),
        })
    }

    /// The key prefix of the last Linear (the layer `reset_classifier` replaces).
    pub fn classifier_key(&self) -> &'static str {
        match self {
            MobileNet::V1(_) | MobileNet::V2(_) => "classifier.1",
            MobileNet::V3(_) => "classifier.3",
        }
    }

    /// Checks an input batch shape `[N, 3, H, W]` before running it.
    pub fn check_input(&self, dims: &[usize]) -> Result<()> {
        match dims {
            [n, 3, h, w] if *n > 0 && *h >= MIN_INPUT_SIZE && *w >= MIN_INPUT_SIZE => Ok(()),
            _ => Err(Error::BadInputShape {
                found: dims.to_vec(),
                expected: format!("[N>=1, 3, H>={MIN_INPUT_SIZE}, W>={MIN_INPUT_SIZE}]"),
            }),
        }
    }

    /// Train mode: BatchNorm uses batch statistics and updates its running averages, dropout is
    /// active (on an autodiff device). This is torch's `model.train()`.
    pub fn train_mode(self) -> Self {
        self.set_training(true)
    }

    /// Eval mode: BatchNorm uses running statistics, dropout is off. torch's `model.eval()`.
    pub fn eval_mode(self) -> Self {
        self.set_training(false)
    }

    fn set_training(self, training: bool) -> Self {
        struct SetFlags(bool);
        impl ModuleMapper for SetFlags {
            fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
                flag.with_value(self.0)
            }
        }
        self.map(&mut SetFlags(training))
    }

    /// Whether every BatchNorm is in train mode (`false` if any is in eval mode).
    pub fn is_training(&self) -> bool {
        struct AllFlags(bool);
        impl ModuleVisitor for AllFlags {
            fn visit_flag(&mut self, flag: &Param<Flag>) {
                self.0 &= flag.is_enabled();
            }
        }
        let mut v = AllFlags(true);
        self.visit(&mut v);
        v.0
    }

    /// Per-layer output shapes, parameters and MACs for an `image_size` x `image_size` input.
    pub fn trace(&self, image_size: usize) -> ShapeTrace {
        self.trace_with(ShapeTrace::new([3, image_size, image_size]))
    }

    /// [`Self::trace`] into a given trace (e.g. one with an op timer).
    pub fn trace_with(&self, mut trace: ShapeTrace) -> ShapeTrace {
        each!(self, m => m.trace(&mut trace));
        trace
    }
}
