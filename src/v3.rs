//! MobileNetV3-Large and -Small (Howard et al., 2019), exactly torchvision's
//! `mobilenet_v3_large` / `mobilenet_v3_small`.

use burn::module::Module;
use burn::nn::{Dropout, Linear};
use burn::tensor::{Device, Tensor};

use crate::blocks::{
    dropout, global_avg_pool, init, make_divisible, Activation, BneckConfig, Conv2dNormActivation,
    FeatureStages, InvertedResidualV3,
};
use crate::sequential;
use crate::summary::ShapeTrace;
use crate::zoo::{Arch, ModelConfig};

const HS: Activation = Activation::Hardswish;

/// The paper's Tables 1 and 2 (`bneck_conf` rows: input, kernel, expanded, output, SE,
/// activation, stride), defined once in the engine crate's `arch` module.
pub use mobilenet_engine::arch::{V3_LARGE_BNECK, V3_LARGE_LAST_CHANNELS, V3_SMALL_BNECK, V3_SMALL_LAST_CHANNELS};

sequential! {
    /// `features`: h-swish stem, the bneck blocks, the 1x1 conv to 6x the last block's width.
    pub struct MobileNetV3Features {
        pub stem: Conv2dNormActivation,
        pub blocks: Vec<InvertedResidualV3>,
        pub last: Conv2dNormActivation,
    }
}

sequential! {
    /// `nn.Sequential(Linear, Hardswish, Dropout, Linear)`: keys `classifier.0`, `classifier.3`.
    pub struct MobileNetV3Classifier {
        pub hidden: Linear,
        pub activation: Activation,
        pub dropout: Dropout,
        pub output: Linear,
    }
}

impl MobileNetV3Classifier {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.activation.forward(self.hidden.forward(x));
        self.output.forward(self.dropout.forward(x))
    }
}

#[derive(Module, Debug)]
pub struct MobileNetV3 {
    pub features: MobileNetV3Features,
    pub classifier: MobileNetV3Classifier,
    #[module(skip)]
    pub config: ModelConfig,
}

impl MobileNetV3 {
    /// `config.arch` picks the table: [`Arch::V3Large`] or [`Arch::V3Small`].
    pub fn new(config: &ModelConfig, device: &Device) -> Self {
        let (table, last): (&[BneckConfig], usize) = match config.arch {
            Arch::V3Small => (&V3_SMALL_BNECK, V3_SMALL_LAST_CHANNELS),
            _ => (&V3_LARGE_BNECK, V3_LARGE_LAST_CHANNELS),
        };
        let norm = config.norm();
        let width = config.width_mult;
        // Built fresh for every model: no block is shared between instances.
        let rows: Vec<BneckConfig> = table.iter().map(|row| row.scaled(width)).collect();
        // Unlike V2, V3 scales its classifier width too.
        let last_channels = make_divisible(last as f64 * width, 8);
        let stem_out = rows[0].input_channels;
        let stem = Conv2dNormActivation::new(3, stem_out, 3, 2, 1, Some(HS), norm, device);
        let blocks = rows.iter().map(|row| InvertedResidualV3::new(row, norm, device)).collect();
        let last_in = rows[rows.len() - 1].out_channels;
        let last_out = 6 * last_in;
        let last_conv = Conv2dNormActivation::new(last_in, last_out, 1, 1, 1, Some(HS), norm, device);
        Self {
            features: MobileNetV3Features { stem, blocks, last: last_conv },
            classifier: MobileNetV3Classifier {
                hidden: init::linear(last_out, last_channels, device),
                activation: HS,
                dropout: dropout(config.dropout),
                output: init::linear(last_channels, config.num_classes, device),
            },
            config: *config,
        }
    }

    fn stages(&self) -> FeatureStages<'_, InvertedResidualV3> {
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
        let hidden = self.classifier.hidden.weight.dims()[1];
        self.classifier.output = init::linear(hidden, num_classes, device);
        self.config.num_classes = num_classes;
        self
    }

    pub fn trace(&self, trace: &mut ShapeTrace) {
        self.stages().trace(trace);
        trace.global_pool("avgpool");
        trace.linear("classifier.0", &self.classifier.hidden);
        trace.activation("classifier.1", &self.classifier.activation);
        trace.dropout("classifier.2");
        trace.linear("classifier.3", &self.classifier.output);
    }
}
