//! The building blocks shared by the MobileNet family, laid out exactly like torchvision's so
//! that module paths equal `state_dict` keys.
//!
//! | block | paper | torchvision |
//! |---|---|---|
//! | [`Conv2dNormActivation`] | conv → BN → act | `torchvision.ops.misc.Conv2dNormActivation` |
//! | [`DepthwiseSeparable`] | V1 §3.1 | (none; V1 is not in torchvision) |
//! | [`InvertedResidualV2`] | V2 §3.3, Table 1 | `mobilenetv2.InvertedResidual` (`conv`) |
//! | [`SqueezeExcitation`] | V3 §5.3 | `torchvision.ops.misc.SqueezeExcitation` |
//! | [`InvertedResidualV3`] | V3 Fig. 4 | `mobilenetv3.InvertedResidual` (`block`) |
//!
//! Every block is built from its entry in the model's resolved plan
//! ([`mobilenet_engine::arch::Plan`]), which holds each layer's channels, kernel, stride,
//! activation and residual flag; the blocks add weights and the forward pass. The three weight
//! initialisation rules of torchvision live in [`init`] and nowhere else.

use burn::module::{Flag, Module, Param, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor};

use crate::sequential;
pub use mobilenet_engine::arch::{make_divisible, Activation};
use mobilenet_engine::arch::{Block, BlockLayer, ConvLayer, LinearLayer};

/// Weight initialisation, exactly as torchvision's MobileNet constructors do it.
pub mod init {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::{Initializer, LinearConfig, PaddingConfig2d};

    /// A bias-free or biased square convolution with torchvision's padding `(k - 1) / 2`.
    /// Weights: `kaiming_normal_(mode="fan_out")`, i.e. N(0, 2 / (out_channels · k · k)) (torch's
    /// fan-out does not divide by groups, burn's does, so the std is computed here); bias: zeros.
    pub fn conv2d(
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        groups: usize,
        bias: bool,
        device: &Device,
    ) -> Conv2d {
        let pad = (kernel - 1) / 2;
        let std = (2.0 / (channels[1] * kernel * kernel) as f64).sqrt();
        let mut conv = Conv2dConfig::new(channels, [kernel, kernel])
            .with_stride([stride, stride])
            .with_groups(groups)
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(bias)
            .with_initializer(Initializer::Normal { mean: 0.0, std })
            .init(device);
        if bias {
            conv.bias = Some(Initializer::Zeros.init([channels[1]], device));
        }
        conv
    }

    /// The bias-free conv of a plan layer.
    pub fn conv(layer: &mobilenet_engine::arch::ConvLayer, device: &Device) -> Conv2d {
        let channels = [layer.in_channels, layer.out_channels];
        conv2d(channels, layer.kernel, layer.stride, layer.groups, false, device)
    }

    /// A fully connected layer: weight N(0, 0.01), bias zeros.
    pub fn linear(d_input: usize, d_output: usize, device: &Device) -> Linear {
        let mut linear = LinearConfig::new(d_input, d_output)
            .with_initializer(Initializer::Normal { mean: 0.0, std: 0.01 })
            .init(device);
        linear.bias = Some(Initializer::Zeros.init([d_output], device));
        linear
    }
}

/// BatchNorm hyper-parameters. torchvision: V1/V2 use PyTorch's defaults (eps 1e-5, momentum
/// 0.1); V3 uses eps 1e-3, momentum 0.01 (the TensorFlow values, where momentum 0.99 means the
/// same thing), which is what makes its running statistics lag (see docs/batchnorm-lag.md).
#[derive(burn::config::Config, Debug, Copy, PartialEq)]
pub struct NormConfig {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Weight of the new batch statistic in the running average (PyTorch convention).
    pub momentum: f64,
}

/// Batch normalisation over N, H, W with torchvision's semantics and key names.
///
/// burn's own `BatchNorm` names its affine parameters `gamma`/`beta`, picks train/eval behaviour
/// from whether the device records gradients, and updates `running_var` with the biased batch
/// variance. This one has torchvision's keys (`weight`, `bias`, `running_mean`, `running_var`),
/// an explicit mode ([`MobileNet::train_mode`](crate::models::MobileNet::train_mode) /
/// [`eval_mode`](crate::models::MobileNet::eval_mode)), and updates `running_var` with the unbiased
/// variance as `torch.nn.BatchNorm2d` does. In train mode it uses batch statistics even without
/// autodiff, which is what BN recalibration needs.
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
    /// Train mode (batch statistics, running-average update) when enabled.
    pub training: Param<Flag>,
    pub momentum: f64,
    pub eps: f64,
}

impl BatchNorm2d {
    /// weight ones, bias zeros, running mean 0 and variance 1, train mode (as `nn.BatchNorm2d`).
    pub fn new(num_features: usize, norm: NormConfig, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([num_features], device)),
            bias: Param::from_tensor(Tensor::zeros([num_features], device)),
            running_mean: RunningState::new(Tensor::zeros([num_features], device)),
            running_var: RunningState::new(Tensor::ones([num_features], device)),
            training: Param::from_bool(true),
            momentum: norm.momentum,
            eps: norm.eps,
        }
    }

    pub fn num_features(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        if !self.training.is_enabled() {
            let device = input.device();
            return burn::tensor::module::batch_norm(
                input,
                self.weight.val(),
                self.bias.val(),
                self.running_mean.value().to_device(&device),
                self.running_var.value().to_device(&device),
                self.eps,
            );
        }
        let [n, _, h, w] = input.dims();
        let count = (n * h * w) as f64;
        let device = input.device();
        let out = burn::tensor::module::batch_norm_train(input, self.weight.val(), self.bias.val(), self.eps);
        // torch normalises with the biased variance but tracks the unbiased one.
        let unbiased = if count > 1.0 { count / (count - 1.0) } else { 1.0 };
        let m = self.momentum;
        let mean = self.running_mean.value_sync().to_device(&device);
        let var = self.running_var.value_sync().to_device(&device);
        let mean = mean.mul_scalar(1.0 - m).add(out.mean.detach().mul_scalar(m));
        let var = var.mul_scalar(1.0 - m).add(out.variance.detach().mul_scalar(m * unbiased));
        self.running_mean.update(mean.detach());
        self.running_var.update(var.detach());
        // `RunningState` keeps an update pending until the next sync, and saving or visiting the
        // module does not sync: flush now so every reader sees this step's statistics.
        let _ = (self.running_mean.value_sync(), self.running_var.value_sync());
        out.output
    }
}

/// `activation` applied to `x`, as torch computes it.
pub fn activate<const D: usize>(activation: Activation, x: Tensor<D>) -> Tensor<D> {
    // relu(x).clamp_max(6) rather than clamp(0, 6): the same values, and on burn's flex
    // backend about 3x faster forward and backward (the per-op training profile showed
    // V2's ReLU6 at 21% of a training step with clamp).
    let relu6 = |x: Tensor<D>| burn::tensor::activation::relu(x).clamp_max(6.0);
    match activation {
        Activation::Relu => burn::tensor::activation::relu(x),
        Activation::Relu6 => relu6(x),
        Activation::Hardswish => x.clone() * relu6(x.add_scalar(3.0)).div_scalar(6.0),
        Activation::Hardsigmoid => relu6(x.add_scalar(3.0)).div_scalar(6.0),
    }
}

/// An activation as a child of an `nn.Sequential`: it takes an index but holds nothing. (A
/// wrapper, because burn's `Module` cannot be implemented for the engine crate's enum here.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivationLayer(pub Activation);

impl ActivationLayer {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        activate(self.0, x)
    }
}

// An activation is a parameter-free module: it takes an `nn.Sequential` index but holds nothing.
impl Module for ActivationLayer {
    fn visit<V: burn::module::ModuleVisitor>(&self, _visitor: &mut V) {}
    fn map<M: burn::module::ModuleMapper>(self, _mapper: &mut M) -> Self {
        self
    }
    fn collect_devices(&self, devices: burn::module::Devices) -> burn::module::Devices {
        devices
    }
    fn to_device(self, _device: &Device) -> Self {
        self
    }
    fn fork(self, _device: &Device) -> Self {
        self
    }
    fn valid(&self) -> Self {
        *self
    }
    fn train(self) -> Self {
        self
    }
    fn materialize(self) -> Self {
        self
    }
}
impl burn::module::ModuleDisplayDefault for ActivationLayer {
    fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
        content.add_formatted(&self.0.torch_name()).optional()
    }
}
impl burn::module::ModuleDisplay for ActivationLayer {}

crate::single_sequential_child!(BatchNorm2d, ActivationLayer);

sequential! {
    /// conv → BatchNorm → optional activation, torchvision's `Conv2dNormActivation`
    /// (keys `0.weight`, `1.weight`, `1.bias`, `1.running_mean`, `1.running_var`).
    pub struct Conv2dNormActivation {
        pub conv: Conv2d,
        pub norm: BatchNorm2d,
        pub activation: Option<ActivationLayer>,
    }
}

impl Conv2dNormActivation {
    pub fn new(layer: &ConvLayer, norm: NormConfig, device: &Device) -> Self {
        Self {
            conv: init::conv(layer, device),
            norm: BatchNorm2d::new(layer.out_channels, norm, device),
            activation: layer.activation.map(ActivationLayer),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.norm.forward(self.conv.forward(x));
        match &self.activation {
            Some(act) => act.forward(x),
            None => x,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.conv.weight.dims()[0]
    }
}

sequential! {
    /// MobileNetV1's depthwise separable convolution (paper §3.1, Fig. 3): a 3x3 depthwise
    /// conv → BN → act, then a 1x1 pointwise conv → BN → act. Keys: `0.{0,1}` and `1.{0,1}`.
    pub struct DepthwiseSeparable {
        pub depthwise: Conv2dNormActivation,
        pub pointwise: Conv2dNormActivation,
    }
}

impl DepthwiseSeparable {
    /// `block`: the plan's depthwise and pointwise convs.
    pub fn new(block: &Block, norm: NormConfig, device: &Device) -> Self {
        let [depthwise, pointwise] = convs(block);
        Self {
            depthwise: Conv2dNormActivation::new(depthwise, norm, device),
            pointwise: Conv2dNormActivation::new(pointwise, norm, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.pointwise.forward(self.depthwise.forward(x))
    }

    pub fn out_channels(&self) -> usize {
        self.pointwise.out_channels()
    }
}

/// The convs of a block of `N` convs (and no other layer), in order.
fn convs<const N: usize>(block: &Block) -> [&ConvLayer; N] {
    let convs: Vec<&ConvLayer> = block.convs().collect();
    assert!(convs.len() == N && block.squeeze_excite().is_none(), "{}: the plan has another layout", block.key);
    convs.try_into().expect("length checked")
}

sequential! {
    /// The layers of MobileNetV2's inverted residual, torchvision's `InvertedResidual.conv`:
    /// [1x1 expand conv-BN-ReLU6 (absent when t = 1)], 3x3 depthwise conv-BN-ReLU6, then the
    /// linear bottleneck: 1x1 projection conv and BN with no activation (V2 §3.2).
    pub struct InvertedResidualV2Layers {
        pub expand: Option<Conv2dNormActivation>,
        pub depthwise: Conv2dNormActivation,
        pub project: Conv2d,
        pub project_norm: BatchNorm2d,
    }
}

/// MobileNetV2's inverted residual with linear bottleneck (keys `conv.*`).
#[derive(Module, Debug)]
pub struct InvertedResidualV2 {
    pub conv: InvertedResidualV2Layers,
    /// stride 1 and in == out: add the input back (V2 Fig. 4b).
    pub use_res_connect: bool,
}

impl InvertedResidualV2 {
    /// `block`: the plan's [expand], depthwise and projection convs.
    pub fn new(block: &Block, norm: NormConfig, device: &Device) -> Self {
        let (expand, depthwise, project) = match block.convs().collect::<Vec<_>>()[..] {
            [expand, depthwise, project] => (Some(expand), depthwise, project),
            [depthwise, project] => (None, depthwise, project),
            _ => panic!("{}: not an inverted residual in the plan", block.key),
        };
        Self {
            conv: InvertedResidualV2Layers {
                expand: expand.map(|l| Conv2dNormActivation::new(l, norm, device)),
                depthwise: Conv2dNormActivation::new(depthwise, norm, device),
                project: init::conv(project, device),
                project_norm: BatchNorm2d::new(project.out_channels, norm, device),
            },
            use_res_connect: block.residual,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let layers = &self.conv;
        with_residual(x, self.use_res_connect, |x| {
            let y = layers.depthwise.forward(maybe(&layers.expand, x));
            layers.project_norm.forward(layers.project.forward(y))
        })
    }

    pub fn out_channels(&self) -> usize {
        self.conv.project_norm.num_features()
    }
}

/// `block(x)`, plus `x` when the block adds its input (torchvision's `use_res_connect`).
fn with_residual(x: Tensor<4>, adds_input: bool, block: impl FnOnce(Tensor<4>) -> Tensor<4>) -> Tensor<4> {
    if adds_input {
        x.clone() + block(x)
    } else {
        block(x)
    }
}

/// An optional layer (an inverted residual's expand conv): absent, it passes `x` through.
fn maybe(layer: &Option<Conv2dNormActivation>, x: Tensor<4>) -> Tensor<4> {
    match layer {
        Some(layer) => layer.forward(x),
        None => x,
    }
}

/// Squeeze-and-excitation (V3 §5.3), torchvision's `SqueezeExcitation`: global average pool,
/// 1x1 conv `fc1` (with bias) → ReLU → 1x1 conv `fc2` (with bias) → hard-sigmoid, times the
/// input. No BatchNorm (the write-up's SE has one; neither the paper nor torchvision does).
#[derive(Module, Debug)]
pub struct SqueezeExcitation {
    pub fc1: Conv2d,
    pub fc2: Conv2d,
}

crate::single_sequential_child!(SqueezeExcitation);

impl SqueezeExcitation {
    pub fn new(se: &mobilenet_engine::arch::SqueezeExcite, device: &Device) -> Self {
        let (channels, squeeze) = (se.channels, se.squeeze_channels);
        Self {
            fc1: init::conv2d([channels, squeeze], 1, 1, 1, true, device),
            fc2: init::conv2d([squeeze, channels], 1, 1, 1, true, device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let scale = global_avg_pool(x.clone());
        let scale = activate(Activation::Relu, self.fc1.forward(scale));
        let scale = activate(Activation::Hardsigmoid, self.fc2.forward(scale));
        x * scale
    }
}

sequential! {
    /// The layers of MobileNetV3's bottleneck, torchvision's `InvertedResidual.block`:
    /// [1x1 expand (absent when expanded == input)], k x k depthwise, [squeeze-excite],
    /// 1x1 projection without activation.
    pub struct InvertedResidualV3Layers {
        pub expand: Option<Conv2dNormActivation>,
        pub depthwise: Conv2dNormActivation,
        pub se: Option<SqueezeExcitation>,
        pub project: Conv2dNormActivation,
    }
}

/// MobileNetV3's bottleneck block (keys `block.*`).
#[derive(Module, Debug)]
pub struct InvertedResidualV3 {
    pub block: InvertedResidualV3Layers,
    pub use_res_connect: bool,
}

impl InvertedResidualV3 {
    /// `block`: the plan's [expand], depthwise, [squeeze-excite] and projection layers.
    pub fn new(block: &Block, norm: NormConfig, device: &Device) -> Self {
        let mut expand = None;
        let mut depthwise = None;
        let mut se = None;
        let mut project = None;
        for layer in &block.layers {
            match layer {
                BlockLayer::Conv(c) if c.is_depthwise() => depthwise = Some(Conv2dNormActivation::new(c, norm, device)),
                BlockLayer::Conv(c) if depthwise.is_none() => expand = Some(Conv2dNormActivation::new(c, norm, device)),
                BlockLayer::Conv(c) => project = Some(Conv2dNormActivation::new(c, norm, device)),
                BlockLayer::SqueezeExcite(s) => se = Some(SqueezeExcitation::new(s, device)),
            }
        }
        let missing = |what: &str| format!("{}: the plan's bottleneck has no {what}", block.key);
        Self {
            block: InvertedResidualV3Layers {
                expand,
                depthwise: depthwise.unwrap_or_else(|| panic!("{}", missing("depthwise conv"))),
                se,
                project: project.unwrap_or_else(|| panic!("{}", missing("projection"))),
            },
            use_res_connect: block.residual,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let layers = &self.block;
        with_residual(x, self.use_res_connect, |x| {
            let y = layers.depthwise.forward(maybe(&layers.expand, x));
            let y = match &layers.se {
                Some(se) => se.forward(y),
                None => y,
            };
            layers.project.forward(y)
        })
    }

    pub fn out_channels(&self) -> usize {
        self.block.project.out_channels()
    }
}

/// One layer of a model's `features` sequence (a conv-BN-act, a separable block, an inverted
/// residual): what the shared walk in [`FeatureStages`] needs of it.
pub trait FeatureLayer {
    fn forward(&self, x: Tensor<4>) -> Tensor<4>;
    fn out_channels(&self) -> usize;
}

macro_rules! feature_layer {
    ($($ty:ty),*) => {$(
        impl FeatureLayer for $ty {
            fn forward(&self, x: Tensor<4>) -> Tensor<4> {
                <$ty>::forward(self, x)
            }
            fn out_channels(&self) -> usize {
                <$ty>::out_channels(self)
            }
        }
    )*};
}
feature_layer!(Conv2dNormActivation, DepthwiseSeparable, InvertedResidualV2, InvertedResidualV3);

/// Every model's `features`: a stem conv, the blocks, and (V2, V3) a last 1x1 conv, numbered
/// `features.0`, `features.1`, … in that order.
pub struct FeatureStages<'a, B> {
    pub stem: &'a Conv2dNormActivation,
    pub blocks: &'a [B],
    pub last: Option<&'a Conv2dNormActivation>,
}

impl<B: FeatureLayer> FeatureStages<'_, B> {
    fn layers(&self) -> impl Iterator<Item = &dyn FeatureLayer> {
        std::iter::once(self.stem as &dyn FeatureLayer)
            .chain(self.blocks.iter().map(|b| b as &dyn FeatureLayer))
            .chain(self.last.map(|l| l as &dyn FeatureLayer))
    }

    /// Channels of the last feature map.
    pub fn out_channels(&self) -> usize {
        self.layers().last().map_or(0, |layer| layer.out_channels())
    }

    /// The last feature map.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.layers().fold(x, |x, layer| layer.forward(x))
    }

    /// The output of every layer, in order.
    pub fn intermediates(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut outs: Vec<Tensor<4>> = Vec::new();
        for layer in self.layers() {
            let input = outs.last().cloned().unwrap_or_else(|| x.clone());
            outs.push(layer.forward(input));
        }
        outs
    }
}

/// `AdaptiveAvgPool2d(1)`: works for any input size (the write-up's fixed 7x7 pool did not).
pub fn global_avg_pool(x: Tensor<4>) -> Tensor<4> {
    x.mean_dim(3).mean_dim(2)
}

/// A dropout layer (active only in train mode on an autodiff device).
pub fn dropout(prob: f64) -> Dropout {
    DropoutConfig::new(prob).init()
}

sequential! {
    /// `nn.Sequential(nn.Dropout(p), nn.Linear(in, classes))`: V1's and V2's classifier.
    pub struct DropoutLinear {
        pub dropout: Dropout,
        pub linear: Linear,
    }
}

impl DropoutLinear {
    pub fn new(linear: &LinearLayer, prob: f64, device: &Device) -> Self {
        Self { dropout: dropout(prob), linear: init::linear(linear.in_features, linear.out_features, device) }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear.forward(self.dropout.forward(x))
    }
}

crate::single_sequential_child!(InvertedResidualV2, InvertedResidualV3);
