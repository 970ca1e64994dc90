//! Lowering a folded model ([`super::folded::FoldedModel`]: BatchNorms folded, topology
//! decided) to the engine's f32 layers: [`Network::from_folded`] puts each conv's weights into
//! the layout its kernel reads and packs them once, gives each map the zero border its readers
//! need, and finds the fused groups ([`super::fusion::groups`]).

use crate::arch::ModelSpec;
use crate::error::Result;
use crate::simd::{pad_channels, Isa};

use super::folded::{FoldSource, FoldedConv, FoldedLayer, FoldedModel, FoldedSqueezeExcite};
use super::fusion;
use super::layers::{padded, Dense, Layer, MapInfo};
use super::Network;

/// One folded conv in its kernel's layout.
fn lower_conv(c: &FoldedConv, maps: &[MapInfo], lanes: usize) -> Layer {
    let (input, output, kernel, stride, act) = (c.input, c.output, c.kernel, c.stride, c.act);
    let c_pad = maps[output].stride_c;
    let taps = kernel * kernel;
    if c.depthwise {
        // [c][k·k] → [k·k][c_pad]
        let mut weights = vec![0.0; taps * c_pad];
        for ch in 0..c.cout {
            for t in 0..taps {
                weights[t * c_pad + ch] = c.weights[ch * taps + t];
            }
        }
        Layer::Depthwise { input, output, kernel, stride, weights, bias: padded(&c.bias, c_pad), act }
    } else if c.is_pointwise() {
        let dense = Dense::new(&c.weights, &c.bias, c.cout, c.cin, act, lanes);
        Layer::Pointwise { input, output, residual: c.residual, dense }
    } else {
        // [cout][cin][k][k] → [k][k][cin][cout_pad]
        let cin = c.cin;
        let mut weights = vec![0.0; taps * cin * c_pad];
        for o in 0..c.cout {
            for i in 0..cin {
                for t in 0..taps {
                    weights[(t * cin + i) * c_pad + o] = c.weights[(o * cin + i) * taps + t];
                }
            }
        }
        Layer::Direct { input, output, cin, kernel, stride, weights, bias: padded(&c.bias, c_pad), act }
    }
}

/// torchvision's `SqueezeExcitation` in the squeeze-excite kernel's layout.
fn lower_squeeze_excite(se: &FoldedSqueezeExcite, maps: &[MapInfo], lanes: usize) -> Layer {
    let (channels, squeeze) = (se.channels, se.squeeze);
    let c_pad = maps[se.map].stride_c;
    let squeeze_pad = pad_channels(squeeze);
    // fc1: [s][c] → [c][s_pad]; fc2: [c][s] → [s][c_pad]: the output dimension innermost.
    let mut fc1 = vec![0.0; channels * squeeze_pad];
    let mut fc2 = vec![0.0; squeeze * c_pad];
    for s in 0..squeeze {
        for c in 0..channels {
            fc1[c * squeeze_pad + s] = se.fc1[s * channels + c];
            fc2[s * c_pad + c] = se.fc2[c * squeeze + s];
        }
    }
    // Each in the order the kernel streams it (pass by pass).
    let fc1 = crate::kernels::pack_vec_mat(&fc1, channels, squeeze_pad, lanes);
    let fc2 = crate::kernels::pack_vec_mat(&fc2, squeeze, c_pad, lanes);
    Layer::SqueezeExcite {
        map: se.map,
        channels,
        squeeze,
        squeeze_pad,
        fc1,
        b1: padded(&se.b1, squeeze_pad),
        fc2,
        b2: padded(&se.b2, c_pad),
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

    /// Folds and lowers `spec` with the tensors of `source`.
    pub fn build(spec: &ModelSpec, source: &mut dyn FoldSource, isa: Isa) -> Result<Network> {
        Ok(Self::from_folded(&FoldedModel::fold(spec, source)?, isa))
    }

    /// Lowers a folded model: one engine layer per conv and per squeeze-excite, a block's
    /// residual added in its last conv's store, the classifier's activations in its Linears.
    pub fn from_folded(model: &FoldedModel, isa: Isa) -> Network {
        // The image keeps its 3 channels unpadded: the stem reads them directly.
        Self::lower(model, isa, model.maps[0])
    }

    /// [`Self::from_folded`] with the input map's channel stride given.
    pub(crate) fn lower(model: &FoldedModel, isa: Isa, input_stride: usize) -> Network {
        let lanes = isa.lanes();
        let borders = model.borders();
        let maps: Vec<MapInfo> = model
            .maps
            .iter()
            .zip(&borders)
            .enumerate()
            .map(|(i, (&channels, &pad))| {
                let stride_c = if i == 0 { input_stride } else { pad_channels(channels) };
                MapInfo { channels, stride_c, pad }
            })
            .collect();
        let layers = model
            .layers
            .iter()
            .map(|layer| match layer {
                FoldedLayer::Conv(c) => lower_conv(c, &maps, lanes),
                FoldedLayer::SqueezeExcite(se) => lower_squeeze_excite(se, &maps, lanes),
            })
            .collect();
        let head = model.head.iter().map(|l| Dense::new(&l.weights, &l.bias, l.n, l.k, l.act, lanes)).collect();
        Network::new(model.spec, isa, maps, layers, model.features, head)
    }
}
