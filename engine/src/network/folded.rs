//! A model as every lowering sees it, before any kernel layout: [`FoldedModel::fold`] walks the
//! resolved [`crate::arch::Plan`] once and gives each conv with its BatchNorm folded in (torch's
//! `[out, in/groups, k, k]` layout), each squeeze-excite, the maps between layers and the
//! classifier's Linears. The f32 network packs it ([`super::Network::from_folded`]); the int8 one
//! quantises it ([`crate::quant::QuantNetwork`]). The topology — which map feeds which layer,
//! where a residual is added — is decided here and nowhere else.

use crate::arch::{Activation, BlockLayer, ConvLayer, HeadLayer, LinearLayer, ModelSpec, Plan, SqueezeExcite, Stage};
use crate::error::Result;

use super::source::TensorSource;

/// One conv with its BatchNorm folded in.
#[derive(Debug, Clone)]
pub struct FoldedConv {
    /// The conv's torchvision key (`features.3.conv.1.0`).
    pub key: String,
    /// The map it reads and the map it writes (indices into [`FoldedModel::maps`]).
    pub input: usize,
    pub output: usize,
    /// The map added after the activation (the block's input), if the conv ends a residual block.
    pub residual: Option<usize>,
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub stride: usize,
    /// One group per channel (`cin == cout`).
    pub depthwise: bool,
    /// `[cout][cin or 1][kernel][kernel]`.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub act: Option<Activation>,
}

impl FoldedConv {
    /// A 1x1 stride-1 conv: a GEMM over the map's pixels.
    pub fn is_pointwise(&self) -> bool {
        !self.depthwise && self.kernel == 1 && self.stride == 1
    }
}

/// torchvision's `SqueezeExcitation`, in place on `map`: ReLU after `fc1`, hard-sigmoid after
/// `fc2`.
#[derive(Debug, Clone)]
pub struct FoldedSqueezeExcite {
    pub key: String,
    pub map: usize,
    pub channels: usize,
    pub squeeze: usize,
    /// `[squeeze][channels]`.
    pub fc1: Vec<f32>,
    pub b1: Vec<f32>,
    /// `[channels][squeeze]`.
    pub fc2: Vec<f32>,
    pub b2: Vec<f32>,
}

#[derive(Debug, Clone)]
pub enum FoldedLayer {
    Conv(FoldedConv),
    SqueezeExcite(FoldedSqueezeExcite),
}

/// A Linear of the classifier with the activation that follows it.
#[derive(Debug, Clone)]
pub struct FoldedLinear {
    pub key: String,
    /// Output and input features.
    pub n: usize,
    pub k: usize,
    /// `[n][k]`.
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
    pub act: Option<Activation>,
}

/// The whole model, folded: map 0 is the input image; `features` is the map pooled into the
/// classifier.
#[derive(Debug, Clone)]
pub struct FoldedModel {
    pub spec: ModelSpec,
    /// Channels of every map.
    pub maps: Vec<usize>,
    pub layers: Vec<FoldedLayer>,
    pub features: usize,
    pub head: Vec<FoldedLinear>,
}

/// Where folding gets its tensors.
pub trait FoldSource {
    /// The conv `conv` (`[cout][cin_per_group][k][k]`) with the BatchNorm `bn` folded in:
    /// (weights, bias).
    fn folded_conv(&mut self, conv: &str, bn: &str, shape: [usize; 4], norm_eps: f64) -> Result<(Vec<f32>, Vec<f32>)>;
    /// A plain tensor (squeeze-excite, Linear).
    fn tensor(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// Called once everything is taken: refuses tensors nothing used.
    fn finish(&self) -> Result<()>;
}

impl FoldSource for TensorSource {
    /// w' = w·γ/√(var+ε), b' = β − mean·γ/√(var+ε), computed in f64 and rounded once.
    fn folded_conv(&mut self, conv: &str, bn: &str, shape: [usize; 4], norm_eps: f64) -> Result<(Vec<f32>, Vec<f32>)> {
        let cout = shape[0];
        let w = self.take(&format!("{conv}.weight"), &shape)?;
        let gamma = self.take(&format!("{bn}.weight"), &[cout])?;
        let beta = self.take(&format!("{bn}.bias"), &[cout])?;
        let mean = self.take(&format!("{bn}.running_mean"), &[cout])?;
        let var = self.take(&format!("{bn}.running_var"), &[cout])?;
        let per_out = shape[1] * shape[2] * shape[3];
        let mut weights = vec![0.0f32; w.len()];
        let mut bias = vec![0.0f32; cout];
        for o in 0..cout {
            let scale = gamma[o] as f64 / (var[o] as f64 + norm_eps).sqrt();
            for i in 0..per_out {
                weights[o * per_out + i] = (w[o * per_out + i] as f64 * scale) as f32;
            }
            bias[o] = (beta[o] as f64 - mean[o] as f64 * scale) as f32;
        }
        Ok((weights, bias))
    }

    fn tensor(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.take(key, shape)
    }

    fn finish(&self) -> Result<()> {
        TensorSource::finish(self)
    }
}

/// Collects the maps and folded layers as a plan is walked (the tests drive it layer by layer).
pub(super) struct Folder<'a> {
    pub(super) source: &'a mut dyn FoldSource,
    /// BatchNorm's ε.
    pub(super) norm_eps: f64,
    /// Channels of every map so far; map 0 is the input.
    pub(super) maps: Vec<usize>,
    pub(super) layers: Vec<FoldedLayer>,
}

impl Folder<'_> {
    /// One conv of the plan reading map `input`, with its residual map if it ends a block that
    /// adds its input; returns the map it writes.
    pub(super) fn conv(&mut self, layer: &ConvLayer, input: usize, residual: Option<usize>) -> Result<usize> {
        let cin = self.maps[input];
        debug_assert_eq!(cin, layer.in_channels, "{}: the plan's channels", layer.conv_key);
        let depthwise = layer.is_depthwise();
        let per_group = if depthwise { 1 } else { cin };
        let shape = [layer.out_channels, per_group, layer.kernel, layer.kernel];
        let (weights, bias) = self.source.folded_conv(&layer.conv_key, &layer.norm_key, shape, self.norm_eps)?;
        self.maps.push(layer.out_channels);
        let output = self.maps.len() - 1;
        self.layers.push(FoldedLayer::Conv(FoldedConv {
            key: layer.conv_key.clone(),
            input,
            output,
            residual,
            cin,
            cout: layer.out_channels,
            kernel: layer.kernel,
            stride: layer.stride,
            depthwise,
            weights,
            bias,
            act: layer.activation,
        }));
        Ok(output)
    }

    /// torchvision's `SqueezeExcitation` at `se.key` (`fc1`, `fc2`: 1x1 convs with bias) on `map`.
    pub(super) fn squeeze_excite(&mut self, se: &SqueezeExcite, map: usize) -> Result<()> {
        let (key, squeeze, channels) = (se.key.clone(), se.squeeze_channels, self.maps[map]);
        let fc1 = self.source.tensor(&format!("{key}.fc1.weight"), &[squeeze, channels, 1, 1])?;
        let b1 = self.source.tensor(&format!("{key}.fc1.bias"), &[squeeze])?;
        let fc2 = self.source.tensor(&format!("{key}.fc2.weight"), &[channels, squeeze, 1, 1])?;
        let b2 = self.source.tensor(&format!("{key}.fc2.bias"), &[channels])?;
        self.layers.push(FoldedLayer::SqueezeExcite(FoldedSqueezeExcite {
            key,
            map,
            channels,
            squeeze,
            fc1,
            b1,
            fc2,
            b2,
        }));
        Ok(())
    }

    /// A Linear of the classifier, with the activation that follows it.
    pub(super) fn linear(&mut self, linear: &LinearLayer, act: Option<Activation>) -> Result<FoldedLinear> {
        let (key, n, k) = (linear.key.clone(), linear.out_features, linear.in_features);
        let weights = self.source.tensor(&format!("{key}.weight"), &[n, k])?;
        let bias = self.source.tensor(&format!("{key}.bias"), &[n])?;
        Ok(FoldedLinear { key, n, k, weights, bias, act })
    }
}

impl FoldedModel {
    /// Walks the resolved plan of `spec`: one [`FoldedConv`] per conv, one
    /// [`FoldedSqueezeExcite`] per squeeze-excite, a block's residual on its last conv, each
    /// classifier activation on the Linear before it.
    pub fn fold(spec: &ModelSpec, source: &mut dyn FoldSource) -> Result<FoldedModel> {
        let plan = Plan::new(spec)?;
        let mut f = Folder { source, norm_eps: spec.norm_eps, maps: vec![3], layers: Vec::new() };
        let mut x = 0;
        for stage in &plan.features {
            match stage {
                Stage::Conv(c) => x = f.conv(c, x, None)?,
                Stage::Block(block) => {
                    let input = x;
                    let last = block.layers.len() - 1;
                    for (i, layer) in block.layers.iter().enumerate() {
                        match layer {
                            BlockLayer::Conv(c) => {
                                let residual = (block.residual && i == last).then_some(input);
                                x = f.conv(c, x, residual)?;
                            }
                            BlockLayer::SqueezeExcite(se) => f.squeeze_excite(se, x)?,
                        }
                    }
                }
            }
        }
        let mut head = Vec::new();
        let mut linears = plan.classifier.iter().peekable();
        while let Some(layer) = linears.next() {
            if let HeadLayer::Linear(linear) = layer {
                let act = match linears.peek() {
                    Some(HeadLayer::Activation { activation, .. }) => Some(*activation),
                    _ => None,
                };
                head.push(f.linear(linear, act)?);
            }
        }
        f.source.finish()?;
        Ok(FoldedModel { spec: *spec, maps: f.maps, layers: f.layers, features: x, head })
    }

    /// The conv layers, in order.
    pub fn convs(&self) -> impl Iterator<Item = &FoldedConv> {
        self.layers.iter().filter_map(|l| match l {
            FoldedLayer::Conv(c) => Some(c),
            FoldedLayer::SqueezeExcite(_) => None,
        })
    }

    /// The zero border each map needs: half the widest kernel that reads it.
    pub fn borders(&self) -> Vec<usize> {
        let mut pad = vec![0usize; self.maps.len()];
        for c in self.convs() {
            pad[c.input] = pad[c.input].max((c.kernel - 1) / 2);
        }
        pad
    }
}
