//! The model zoo: one name per architecture, one configuration type for all of them, and the
//! [`MobileNet`] type that gives every family the same API (timm-style: features, head,
//! classifier reset, train/eval mode).

use burn::module::{Flag, Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

use crate::error::Result;
use crate::models::blocks::init;
use crate::models::config::{Arch, ModelConfig, ModelSpec, Plan};
use crate::models::summary::Summary;
use crate::models::{Family, MobileNetV1, MobileNetV2, MobileNetV3};

/// Any MobileNet. Module paths skip the variant name (`V2`), so they equal torchvision's keys
/// when stores are built with `skip_enum_variants(true)`, as [`crate::io::weights`] does.
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
        let plan = config.plan()?;
        Ok(match config.arch() {
            Arch::V1 => MobileNet::V1(MobileNetV1::new(&plan, config, device)),
            Arch::V2 => MobileNet::V2(MobileNetV2::new(&plan, config, device)),
            Arch::V3Large | Arch::V3Small => MobileNet::V3(MobileNetV3::new(&plan, config, device)),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        each!(self, m => &m.config)
    }

    /// The resolved layers this model was built from.
    pub fn plan(&self) -> Plan {
        Plan::new(&self.config().spec).expect("a built model's config is valid")
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
        self.config().spec.num_classes
    }

    /// Channels of the pooled features fed to the classifier.
    pub fn num_features(&self) -> usize {
        each!(self, m => m.num_features())
    }

    /// Replaces the last Linear with a freshly initialised one for `num_classes` classes.
    pub fn reset_classifier(mut self, num_classes: usize, device: &Device) -> Result<Self> {
        let mut config = *self.config();
        config.spec.num_classes = num_classes;
        let plan = config.plan()?;
        let output = plan.output_layer();
        let fresh = init::linear(output.in_features, output.out_features, device);
        each!(&mut self, m => {
            *m.output_layer_mut() = fresh;
            *m.config_mut() = config;
        });
        Ok(self)
    }

    /// The key prefix of the last Linear (the layer `reset_classifier` replaces).
    pub fn classifier_key(&self) -> String {
        self.plan().output_layer().key.clone()
    }

    /// Checks an input batch shape `[N, 3, H, W]` before running it.
    pub fn check_input(&self, dims: &[usize]) -> Result<()> {
        Ok(ModelSpec::check_input(dims)?)
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

    /// Per-layer output shapes, parameters and MACs for an `image_size` x `image_size` input.
    pub fn summary(&self, image_size: usize) -> Summary {
        Summary::new(&self.plan(), image_size)
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
}
