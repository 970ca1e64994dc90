//! Lowering a model to the engine's layers: [`Network::build`] walks the resolved
//! [`crate::arch::Plan`] (every layer with its torchvision key) and the [`Builder`] turns each
//! conv into one engine layer, folding its BatchNorm into the weights and bias (in f64, rounded
//! once) and packing the weights once into the layout its kernel reads; a block's residual is
//! added in its last conv's store and the classifier's activation in the Linear before it. The
//! fused groups are found once the layers are known ([`super::fusion::groups`]).

use crate::arch::{Activation, BlockLayer, ConvLayer, HeadLayer, LinearLayer, ModelSpec, Plan, SqueezeExcite, Stage};
use crate::error::Result;
use crate::simd::{pad_channels, Isa};

use super::fusion;
use super::layers::{padded, Dense, Layer, MapInfo};
use super::source::TensorSource;
use super::Network;

/// Collects the maps and layers of a network as the plan is walked.
pub(super) struct Builder<'a> {
    pub(super) source: &'a mut TensorSource,
    /// BatchNorm's ε.
    pub(super) norm_eps: f64,
    /// The ISA's vector width, which GEMM weights are packed for.
    pub(super) lanes: usize,
    pub(super) maps: Vec<MapInfo>,
    pub(super) layers: Vec<Layer>,
}

impl Builder<'_> {
    fn new_map(&mut self, channels: usize) -> usize {
        self.maps.push(MapInfo { channels, stride_c: pad_channels(channels), pad: 0 });
        self.maps.len() - 1
    }

    /// Conv weights with BatchNorm folded in: w' = w·γ/√(var+ε), b' = β − mean·γ/√(var+ε).
    /// Computed in f64, then rounded once.
    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        cout: usize,
        cin_per_group: usize,
        kernel: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let w = self.source.take(&format!("{conv}.weight"), &[cout, cin_per_group, kernel, kernel])?;
        let gamma = self.source.take(&format!("{bn}.weight"), &[cout])?;
        let beta = self.source.take(&format!("{bn}.bias"), &[cout])?;
        let mean = self.source.take(&format!("{bn}.running_mean"), &[cout])?;
        let var = self.source.take(&format!("{bn}.running_var"), &[cout])?;
        let per_out = cin_per_group * kernel * kernel;
        let mut weights = vec![0.0f32; w.len()];
        let mut bias = vec![0.0f32; cout];
        for o in 0..cout {
            let scale = gamma[o] as f64 / (var[o] as f64 + self.norm_eps).sqrt();
            for i in 0..per_out {
                weights[o * per_out + i] = (w[o * per_out + i] as f64 * scale) as f32;
            }
            bias[o] = (beta[o] as f64 - mean[o] as f64 * scale) as f32;
        }
        Ok((weights, bias))
    }

    /// One conv of the plan reading map `input`, with its residual map if it ends a block that
    /// adds its input.
    pub(super) fn conv(&mut self, layer: &ConvLayer, input: usize, residual: Option<usize>) -> Result<usize> {
        let (conv, bn) = (layer.conv_key.as_str(), layer.norm_key.as_str());
        let (cout, kernel, stride) = (layer.out_channels, layer.kernel, layer.stride);
        let cin = self.maps[input].channels;
        debug_assert_eq!(cin, layer.in_channels, "{conv}: the plan's channels");
        let act = layer.activation;
        if layer.is_depthwise() {
            let (w, b) = self.conv_bn(conv, bn, cout, 1, kernel)?;
            let output = self.new_map(cout);
            let c_pad = self.maps[output].stride_c;
            // [c][k·k] → [k·k][c_pad]
            let taps = kernel * kernel;
            let mut weights = vec![0.0; taps * c_pad];
            for ch in 0..cout {
                for t in 0..taps {
                    weights[t * c_pad + ch] = w[ch * taps + t];
                }
            }
            self.need_border(input, kernel);
            self.layers.push(Layer::Depthwise { input, output, kernel, stride, weights, bias: padded(&b, c_pad), act });
            Ok(output)
        } else if kernel == 1 && stride == 1 {
            let (w, b) = self.conv_bn(conv, bn, cout, cin, 1)?;
            let output = self.new_map(cout);
            let dense = Dense::new(&w, &b, cout, cin, act, self.lanes);
            self.layers.push(Layer::Pointwise { input, output, residual, dense });
            Ok(output)
        } else {
            let (w, b) = self.conv_bn(conv, bn, cout, cin, kernel)?;
            let output = self.new_map(cout);
            let c_pad = self.maps[output].stride_c;
            // [cout][cin][k][k] → [k][k][cin][cout_pad]
            let mut weights = vec![0.0; kernel * kernel * cin * c_pad];
            for o in 0..cout {
                for i in 0..cin {
                    for t in 0..kernel * kernel {
                        weights[(t * cin + i) * c_pad + o] = w[(o * cin + i) * kernel * kernel + t];
                    }
                }
            }
            self.need_border(input, kernel);
            self.layers.push(Layer::Direct {
                input,
                output,
                cin,
                kernel,
                stride,
                weights,
                bias: padded(&b, c_pad),
                act,
            });
            Ok(output)
        }
    }

    /// `map` is read by a `kernel`-wide conv: it needs a zero border of half that.
    fn need_border(&mut self, map: usize, kernel: usize) {
        let pad = &mut self.maps[map].pad;
        *pad = (*pad).max((kernel - 1) / 2);
    }

    /// torchvision's `SqueezeExcitation` at `prefix` (`fc1`, `fc2`: 1x1 convs with bias).
    pub(super) fn squeeze_excite(&mut self, se: &SqueezeExcite, map: usize) -> Result<()> {
        let (prefix, squeeze) = (se.key.as_str(), se.squeeze_channels);
        let channels = self.maps[map].channels;
        let c_pad = self.maps[map].stride_c;
        let squeeze_pad = pad_channels(squeeze);
        let w1 = self.source.take(&format!("{prefix}.fc1.weight"), &[squeeze, channels, 1, 1])?;
        let b1 = self.source.take(&format!("{prefix}.fc1.bias"), &[squeeze])?;
        let w2 = self.source.take(&format!("{prefix}.fc2.weight"), &[channels, squeeze, 1, 1])?;
        let b2 = self.source.take(&format!("{prefix}.fc2.bias"), &[channels])?;
        // fc1: [s][c] → [c][s_pad]; fc2: [c][s] → [s][c_pad]: the output dimension innermost.
        let mut fc1 = vec![0.0; channels * squeeze_pad];
        let mut fc2 = vec![0.0; squeeze * c_pad];
        for s in 0..squeeze {
            for c in 0..channels {
                fc1[c * squeeze_pad + s] = w1[s * channels + c];
                fc2[s * c_pad + c] = w2[c * squeeze + s];
            }
        }
        // Each in the order the kernel streams it (pass by pass).
        let fc1 = crate::kernels::pack_vec_mat(&fc1, channels, squeeze_pad, self.lanes);
        let fc2 = crate::kernels::pack_vec_mat(&fc2, squeeze, c_pad, self.lanes);
        self.layers.push(Layer::SqueezeExcite {
            map,
            channels,
            squeeze,
            squeeze_pad,
            fc1,
            b1: padded(&b1, squeeze_pad),
            fc2,
            b2: padded(&b2, c_pad),
        });
        Ok(())
    }

    /// A Linear of the classifier, with the activation that follows it fused in.
    pub(super) fn linear(&mut self, linear: &LinearLayer, act: Option<Activation>) -> Result<Dense> {
        let (prefix, n, k) = (&linear.key, linear.out_features, linear.in_features);
        let w = self.source.take(&format!("{prefix}.weight"), &[n, k])?;
        let b = self.source.take(&format!("{prefix}.bias"), &[n])?;
        Ok(Dense::new(&w, &b, n, k, act, self.lanes))
    }
}

impl Network {
    /// The network of these maps and layers, pooling map `features` into the `head`; finds the
    /// fused groups.
    pub(super) fn new(
        spec: ModelSpec,
        isa: Isa,
        maps: Vec<MapInfo>,
        layers: Vec<Layer>,
        features: usize,
        head: Vec<Dense>,
    ) -> Self {
        let groups = fusion::groups(&layers, maps.len(), features);
        Network { spec, isa, maps, layers, features, head, groups }
    }

    /// Lowers the resolved plan of `spec`: one engine layer per conv (BatchNorm folded), one per
    /// squeeze-excite, a block's residual added in its last conv's store, and the classifier's
    /// activation fused into the Linear before it.
    pub fn build(spec: &ModelSpec, source: &mut TensorSource, isa: Isa) -> Result<Network> {
        let plan = Plan::new(spec)?;
        let mut b =
            Builder { source, norm_eps: spec.norm_eps, lanes: isa.lanes(), maps: Vec::new(), layers: Vec::new() };
        b.maps.push(MapInfo { channels: 3, stride_c: 3, pad: 0 });
        let mut x = 0;
        for stage in &plan.features {
            match stage {
                Stage::Conv(conv) => x = b.conv(conv, x, None)?,
                Stage::Block(block) => {
                    let input = x;
                    let last = block.layers.len() - 1;
                    for (i, layer) in block.layers.iter().enumerate() {
                        match layer {
                            BlockLayer::Conv(conv) => {
                                let residual = (block.residual && i == last).then_some(input);
                                x = b.conv(conv, x, residual)?;
                            }
                            BlockLayer::SqueezeExcite(se) => b.squeeze_excite(se, x)?,
                        }
                    }
                }
            }
        }
        let mut head: Vec<Dense> = Vec::new();
        let mut linears = plan.classifier.iter().peekable();
        while let Some(layer) = linears.next() {
            if let HeadLayer::Linear(linear) = layer {
                let act = match linears.peek() {
                    Some(HeadLayer::Activation { activation, .. }) => Some(*activation),
                    _ => None,
                };
                head.push(b.linear(linear, act)?);
            }
        }
        b.source.finish()?;
        Ok(Network::new(*spec, isa, b.maps, b.layers, x, head))
    }
}
