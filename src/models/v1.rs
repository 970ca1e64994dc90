//! MobileNetV1 (Howard et al., 2017, Table 1). Not in torchvision; laid out in torchvision's
//! style so that its keys read like V2's: stem `features.0.{0,1}`, blocks
//! `features.{1..13}.{0=depthwise,1=pointwise}.{0=conv,1=bn}`, classifier `classifier.1`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::models::blocks::{Conv2dNormActivation, DepthwiseSeparable, DropoutLinear, FeatureStages};
use crate::models::config::ModelConfig;
use crate::models::{plan_parts, Family};
use crate::sequential;
use mobilenet_engine::arch::Plan;

sequential! {
    /// `features`: the stem conv and the 13 depthwise separable blocks.
    pub struct MobileNetV1Features {
        pub stem: Conv2dNormActivation,
        pub blocks: Vec<DepthwiseSeparable>,
    }
}

/// MobileNetV1 with width multiplier α (`width_mult`) and any input resolution (ρ).
#[derive(Module, Debug)]
pub struct MobileNetV1 {
    pub features: MobileNetV1Features,
    pub classifier: DropoutLinear,
    #[module(skip)]
    pub config: ModelConfig,
}

impl MobileNetV1 {
    /// Built from `plan` (the paper's Table 1 at `config`'s width, resolved once in the engine
    /// crate's `arch::plan`).
    pub fn new(plan: &Plan, config: &ModelConfig, device: &Device) -> Self {
        let norm = config.norm();
        let (stem, blocks, _, output) = plan_parts(plan);
        Self {
            features: MobileNetV1Features {
                stem: Conv2dNormActivation::new(stem, norm, device),
                blocks: blocks.iter().map(|b| DepthwiseSeparable::new(b, norm, device)).collect(),
            },
            classifier: DropoutLinear::new(output, config.dropout, device),
            config: *config,
        }
    }
}

impl Family for MobileNetV1 {
    type Block = DepthwiseSeparable;

    fn stages(&self) -> FeatureStages<'_, DepthwiseSeparable> {
        FeatureStages { stem: &self.features.stem, blocks: &self.features.blocks, last: None }
    }

    fn classify(&self, pooled: Tensor<2>) -> Tensor<2> {
        self.classifier.forward(pooled)
    }

    fn output_layer_mut(&mut self) -> &mut Linear {
        &mut self.classifier.linear
    }

    fn config_mut(&mut self) -> &mut ModelConfig {
        &mut self.config
    }
}
