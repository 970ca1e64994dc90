//! MobileNetV2 (Sandler et al., 2018), exactly torchvision's `mobilenet_v2`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::models::blocks::{global_avg_pool, Conv2dNormActivation, DropoutLinear, FeatureStages, InvertedResidualV2};
use crate::models::config::ModelConfig;
use crate::models::plan_parts;
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

    fn stages(&self) -> FeatureStages<'_, InvertedResidualV2> {
        FeatureStages { stem: &self.features.stem, blocks: &self.features.blocks, last: Some(&self.features.last) }
    }

    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<4> {
        self.stages().forward(x)
    }

    pub fn forward_intermediates(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        self.stages().intermediates(x)
    }

    pub fn forward_head(&self, features: Tensor<4>) -> Tensor<2> {
        self.classifier.forward(global_avg_pool(features).flatten(1, 3))
    }

    pub fn num_features(&self) -> usize {
        self.features.last.out_channels()
    }

    /// The last Linear (what a classifier reset replaces).
    pub fn output_layer_mut(&mut self) -> &mut Linear {
        &mut self.classifier.linear
    }
}
