//! MobileNetV2 (Sandler et al., 2018), exactly torchvision's `mobilenet_v2`.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::blocks::{
    global_avg_pool, make_divisible, Activation, Conv2dNormActivation, DropoutLinear, FeatureStages,
    InvertedResidualV2,
};
use crate::sequential;
use crate::summary::ShapeTrace;
use crate::zoo::ModelConfig;

/// The paper's Table 2 (expansion t, output channels c, repeats n, first stride s), the stem
/// and last widths, defined once in the engine crate's `arch` module.
pub use mobilenet_engine::arch::{V2_INVERTED_RESIDUAL_SETTING, V2_LAST_CHANNELS, V2_STEM_CHANNELS};

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
    pub fn new(config: &ModelConfig, device: &Device) -> Self {
        let norm = config.norm();
        let width = config.width_mult;
        let act = Some(Activation::Relu6);
        let mut channels = make_divisible(V2_STEM_CHANNELS as f64 * width, 8);
        // The last conv never shrinks below 1280 channels (torchvision: max(1.0, width_mult)).
        let last_channels = make_divisible(V2_LAST_CHANNELS as f64 * width.max(1.0), 8);
        let stem = Conv2dNormActivation::new(3, channels, 3, 2, 1, act, norm, device);
        let mut blocks = Vec::new();
        for [t, c, n, s] in V2_INVERTED_RESIDUAL_SETTING {
            let out = make_divisible(c as f64 * width, 8);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                blocks.push(InvertedResidualV2::new(channels, out, stride, t, norm, device));
                channels = out;
            }
        }
        let last = Conv2dNormActivation::new(channels, last_channels, 1, 1, 1, act, norm, device);
        Self {
            features: MobileNetV2Features { stem, blocks, last },
            classifier: DropoutLinear::new(last_channels, config.num_classes, config.dropout, device),
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
