//! MobileNetV1 (Howard et al., 2017, Table 1). Not in torchvision; laid out in torchvision's
//! style so that its keys read like V2's: stem `features.0.{0,1}`, blocks
//! `features.{1..13}.{0=depthwise,1=pointwise}.{0=conv,1=bn}`, classifier `classifier.1`.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::blocks::{
    global_avg_pool, make_divisible, Conv2dNormActivation, DepthwiseSeparable, DropoutLinear, FeatureStages,
};
use crate::sequential;
use crate::summary::ShapeTrace;
use crate::zoo::ModelConfig;

/// The paper's Table 1 after the stem ((output channels, stride) per depthwise separable block)
/// and the stem width, defined once in the engine crate's `arch` module.
pub use mobilenet_engine::arch::{V1_BLOCKS, V1_STEM_CHANNELS};

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
    pub fn new(config: &ModelConfig, device: &Device) -> Self {
        let (norm, act) = (config.norm(), config.v1_activation);
        let scale = |c: usize| make_divisible(c as f64 * config.width_mult, 8);
        let mut channels = scale(V1_STEM_CHANNELS);
        let stem = Conv2dNormActivation::new(3, channels, 3, 2, 1, Some(act), norm, device);
        let blocks = V1_BLOCKS
            .iter()
            .map(|&(out, stride)| {
                let block = DepthwiseSeparable::new(channels, scale(out), stride, act, norm, device);
                channels = scale(out);
                block
            })
            .collect();
        Self {
            features: MobileNetV1Features { stem, blocks },
            classifier: DropoutLinear::new(channels, config.num_classes, config.dropout, device),
            config: *config,
        }
    }

    fn stages(&self) -> FeatureStages<'_, DepthwiseSeparable> {
        FeatureStages { stem: &self.features.stem, blocks: &self.features.blocks, last: None }
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
        self.features.blocks.last().map(|b| b.pointwise.out_channels()).unwrap_or(0)
    }

    pub fn reset_classifier(mut self, num_classes: usize, device: &Device) -> Self {
        let prob = self.classifier.dropout.prob;
        self.classifier = DropoutLinear::new(self.num_features(), num_classes, prob, device);
        self.config.num_classes = num_classes;
        self
    }

    pub fn trace(&self, trace: &mut ShapeTrace) {
        self.stages().trace(trace);
        trace.global_pool("avgpool");
        self.classifier.trace("classifier", trace);
    }
}
