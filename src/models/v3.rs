//! MobileNetV3-Large and -Small (Howard et al., 2019), exactly torchvision's
//! `mobilenet_v3_large` / `mobilenet_v3_small`.

use burn::module::Module;
use burn::nn::{Dropout, Linear};
use burn::tensor::{Device, Tensor};

use crate::models::blocks::{dropout, init, ActivationLayer, Conv2dNormActivation, FeatureStages, InvertedResidualV3};
use crate::models::config::ModelConfig;
use crate::models::{plan_parts, Family};
use crate::sequential;
use mobilenet_engine::arch::{HeadLayer, Plan};

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
        pub activation: ActivationLayer,
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
    /// Built from `plan` (the paper's Table 1 or 2 at `config`'s width, resolved once in the
    /// engine crate's `arch::plan`).
    pub fn new(plan: &Plan, config: &ModelConfig, device: &Device) -> Self {
        let norm = config.norm();
        let (stem, blocks, last, _) = plan_parts(plan);
        let last = last.expect("V3 ends its features in a 1x1 conv");
        let (hidden, activation, output) = match &plan.classifier[..] {
            [HeadLayer::Linear(hidden), HeadLayer::Activation { activation, .. }, HeadLayer::Dropout { .. }, HeadLayer::Linear(output)] => {
                (hidden, *activation, output)
            }
            other => panic!("not V3's classifier layout: {other:?}"),
        };
        Self {
            features: MobileNetV3Features {
                stem: Conv2dNormActivation::new(stem, norm, device),
                // Built fresh for every model: no block is shared between instances.
                blocks: blocks.iter().map(|b| InvertedResidualV3::new(b, norm, device)).collect(),
                last: Conv2dNormActivation::new(last, norm, device),
            },
            classifier: MobileNetV3Classifier {
                hidden: init::linear(hidden.in_features, hidden.out_features, device),
                activation: ActivationLayer(activation),
                dropout: dropout(config.dropout),
                output: init::linear(output.in_features, output.out_features, device),
            },
            config: *config,
        }
    }
}

impl Family for MobileNetV3 {
    type Block = InvertedResidualV3;

    fn stages(&self) -> FeatureStages<'_, InvertedResidualV3> {
        FeatureStages { stem: &self.features.stem, blocks: &self.features.blocks, last: Some(&self.features.last) }
    }

    fn classify(&self, pooled: Tensor<2>) -> Tensor<2> {
        self.classifier.forward(pooled)
    }

    fn output_layer_mut(&mut self) -> &mut Linear {
        &mut self.classifier.output
    }

    fn config_mut(&mut self) -> &mut ModelConfig {
        &mut self.config
    }
}
