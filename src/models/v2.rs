//! MobileNetV2 (Sandler et al., 2018), exactly torchvision's `mobilenet_v2`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::models::blocks::{Conv2dNormActivation, DropoutLinear, FeatureStages, InvertedResidualV2};
use crate::models::config::ModelConfig;
use crate::models::{plan_parts, Family};
use crate::sequential;
use mobilenet_engine::arch::Plan;

sequential! {
    /// `features`: stem, 17 inverted residuals, the 1x1 conv to 1280 channels.
    pub struct MobileNetV2Features {
        pub stem: Conv2dNormActivation,
        pub blocks: Vec<InvertedResidualV2>,
        pub last: Conv2dNormActivation,
    }
}

#[derive(Module, Debug)]
pub struct MobileNetV2 {
    pub features: MobileNetV2Features,
    pub classifier: DropoutLinear,
    #[module(skip)]
    pub config: ModelConfig,
}

impl MobileNetV2 {
    /// Built from `plan` (the paper's Table 2 at `config`'s width, resolved once in the engine
    /// crate's `arch::plan`).
    pub fn new(plan: &Plan, config: &ModelConfig, device: &Device) -> Self {
        let norm = config.norm();
        let (stem, blocks, last, output) = plan_parts(plan);
        let last = last.expect("V2 ends its features in a 1x1 conv");
        Self {
            features: MobileNetV2Features {
                stem: Conv2dNormActivation::new(stem, norm, device),
                blocks: blocks.iter().map(|b| InvertedResidualV2::new(b, norm, device)).collect(),
                last: Conv2dNormActivation::new(last, norm, device),
            },
            classifier: DropoutLinear::new(output, config.dropout, device),
            config: *config,
        }
    }
}

impl Family for MobileNetV2 {
    type Block = InvertedResidualV2;

    fn stages(&self) -> FeatureStages<'_, InvertedResidualV2> {
        FeatureStages { stem: &self.features.stem, blocks: &self.features.blocks, last: Some(&self.features.last) }
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
