//! The models: every architecture built from one resolved plan.
//!
//! - [`config`]: [`ModelConfig`], the engine crate's [`ModelSpec`] plus training-only settings.
//! - [`blocks`]: conv-BN-act, depthwise separable, inverted residuals (V2, V3), squeeze-excite,
//!   BatchNorm with torchvision's semantics, torchvision's weight initialisation.
//! - [`v1`], [`v2`], [`v3`]: one model type each, built by a short loop over the plan.
//! - [`mobilenet`]: [`MobileNet`], the one API over all of them (features, head, reset, modes).
//! - [`sequential`]: how module paths become torchvision's `nn.Sequential` keys.
//! - [`summary`]: the layer table (shapes, parameters, MACs), computed from the plan.
//!
//! The architectures themselves (tables, widths, keys, residual rule) live in
//! [`mobilenet_engine::arch`], shared with the inference engine and the CPU trainer.

pub mod blocks;
pub mod config;
pub mod mobilenet;
pub mod sequential;
pub mod summary;
pub mod v1;
pub mod v2;
pub mod v3;

pub use config::{Activation, Arch, ModelConfig, ModelSpec, Plan, MIN_INPUT_SIZE};
pub use mobilenet::MobileNet;
pub use v1::MobileNetV1;
pub use v2::MobileNetV2;
pub use v3::MobileNetV3;

use burn::nn::Linear;
use burn::tensor::Tensor;
use mobilenet_engine::arch::{Block, ConvLayer, LinearLayer, Stage};

use blocks::{global_avg_pool, FeatureLayer, FeatureStages};

/// What each family (V1, V2, V3) provides; the forward API every model shares is written once
/// on top of it, and [`MobileNet`] dispatches to it.
pub trait Family {
    type Block: FeatureLayer;
    /// `features`: the stem, the blocks, and (V2, V3) the last conv.
    fn stages(&self) -> FeatureStages<'_, Self::Block>;
    /// The classifier on pooled features `[N, C]`.
    fn classify(&self, pooled: Tensor<2>) -> Tensor<2>;
    /// The last Linear (what a classifier reset replaces).
    fn output_layer_mut(&mut self) -> &mut Linear;
    fn config_mut(&mut self) -> &mut ModelConfig;

    /// The last feature map, before pooling.
    fn forward_features(&self, x: Tensor<4>) -> Tensor<4> {
        self.stages().forward(x)
    }

    /// The output of every top-level `features` layer, in order.
    fn forward_intermediates(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        self.stages().intermediates(x)
    }

    /// Global average pool and classifier.
    fn forward_head(&self, features: Tensor<4>) -> Tensor<2> {
        self.classify(global_avg_pool(features).flatten(1, 3))
    }

    /// Channels of the pooled features fed to the classifier.
    fn num_features(&self) -> usize {
        self.stages().out_channels()
    }
}

/// A plan's `features` as the models hold them: the stem, the blocks, the last 1x1 conv (V2,
/// V3), and the classifier's output Linear.
fn plan_parts(plan: &Plan) -> (&ConvLayer, Vec<&Block>, Option<&ConvLayer>, &LinearLayer) {
    fn conv(stage: &Stage) -> Option<&ConvLayer> {
        match stage {
            Stage::Conv(c) => Some(c),
            Stage::Block(_) => None,
        }
    }
    let stem = plan.features.first().and_then(conv).expect("every plan starts with a stem conv");
    let blocks = plan
        .features
        .iter()
        .filter_map(|s| match s {
            Stage::Block(b) => Some(b),
            Stage::Conv(_) => None,
        })
        .collect();
    let last = plan.features[1..].last().and_then(conv);
    (stem, blocks, last, plan.output_layer())
}
