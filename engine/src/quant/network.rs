//! The int8 network: a [`QuantModel`] (a folded model with int8 conv weights and the calibrated
//! parameters of every map) lowered to u8 maps and int8 kernels, and run one image at a time.
//!
//! What runs in int8: every conv (the stem as an im2col GEMM, 1x1 convs as GEMMs, depthwise
//! convs), with bias, activation (ReLU/ReLU6 as the store's clamp, hard-swish in the store) and
//! the residual add fused into the requantising store ([`crate::quant::scheme::requantize_full`]);
//! squeeze-excite's rescaling of its map. What stays f32 on purpose, small and
//! precision-sensitive: squeeze-excite's two tiny fully connected layers (on the pooled map),
//! the mean pool's result and the classifier (whose weights are the bulk of a batch-1 pass's
//! memory traffic only for V3-Large; see the module plan). Every map has its own scale and zero
//! point; the zero border each map's readers need holds its zero point (the real 0).

use crate::arch::{Activation, ModelSpec};
use crate::kernels::MapGeom;
use crate::network::folded::{FoldedConv, FoldedLayer, FoldedModel};
use crate::network::Network;
use crate::simd::{pad_channels, Isa};

use super::depthwise::{depthwise_u8, PackedDepthwise};
use super::gemm::{gemm_u8s8_store, PackedB};
use super::isa::Int8Isa;
use super::maps;
use super::scheme::{quantize_weights, ActivationQuant, QuantizedWeights, Requant, WEIGHT_QMAX, WEIGHT_QMAX_7BIT};

/// A model quantised: the folded model (its conv weights replaced by the dequantised int8 ones,
/// so that it is the fake-quantised f32 reference), the int8 weights of each conv and the
/// parameters of each map. What a quantised file holds ([`crate::quant::format`]).
#[derive(Debug, Clone)]
pub struct QuantModel {
    pub folded: FoldedModel,
    /// Per conv, in [`FoldedModel::convs`] order.
    pub conv_weights: Vec<QuantizedWeights>,
    /// Per map (map 0 is the input image).
    pub activations: Vec<ActivationQuant>,
}

/// How many bits the weights use: 8 (`[-127, 127]`), or 7 (`[-63, 63]`), which the AVX2
/// `vpmaddubsw` kernel needs to be both exact and fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightBits {
    Eight,
    Seven,
}

impl WeightBits {
    /// 8 where this CPU has VNNI, 7 where only AVX2 (ONNX Runtime's `reduce_range` rule).
    pub fn for_this_cpu() -> WeightBits {
        match Int8Isa::detect() {
            Int8Isa::Avx2 => WeightBits::Seven,
            _ => WeightBits::Eight,
        }
    }
    pub fn qmax(self) -> i32 {
        match self {
            WeightBits::Eight => WEIGHT_QMAX,
            WeightBits::Seven => WEIGHT_QMAX_7BIT,
        }
    }
    pub fn bits(self) -> u8 {
        match self {
            WeightBits::Eight => 8,
            WeightBits::Seven => 7,
        }
    }
}

impl QuantModel {
    /// Quantises every conv of `folded` per output channel and pairs the model with the
    /// calibrated parameters of its maps.
    pub fn quantize(mut folded: FoldedModel, activations: Vec<ActivationQuant>, bits: WeightBits) -> QuantModel {
        assert_eq!(activations.len(), folded.maps.len(), "one parameter set per map");
        let mut conv_weights = Vec::new();
        for layer in &mut folded.layers {
            if let FoldedLayer::Conv(c) = layer {
                let q = quantize_weights(&c.weights, c.cout, bits.qmax());
                c.weights = q.dequantize();
                conv_weights.push(q);
            }
        }
        QuantModel { folded, conv_weights, activations }
    }

    /// The fake-quantised reference: the f32 network of the dequantised weights, unfused, whose
    /// maps [`Self::fake_quantize_map`] rounds in place as they are written.
    pub fn reference_network(&self, isa: Isa) -> Network {
        Network::from_folded(&self.folded, isa).unfused()
    }

    /// Rounds map `m`'s values to its int8 grid, as the int8 network stores them.
    pub fn fake_quantize_map(&self, mut m: crate::network::ObservedMap) {
        let q = self.activations[m.map];
        m.for_each(|x| *x = q.dequantize(q.quantize(*x)));
    }
}

/// A u8 map between layers.
#[derive(Debug, Clone)]
struct QMap {
    channels: usize,
    stride_c: usize,
    pad: usize,
    q: ActivationQuant,
}

/// How a conv runs.
#[derive(Debug)]
enum ConvKind {
    /// 1x1: a GEMM over the map's pixels.
    Pointwise(PackedB),
    Depthwise {
        weights: PackedDepthwise,
        kernel: usize,
        stride: usize,
    },
    /// A full conv (the stem): its input windows copied into rows (im2col), then a GEMM.
    Im2col {
        b: PackedB,
        cin: usize,
        kernel: usize,
        stride: usize,
    },
}

#[derive(Debug)]
enum QLayer {
    Conv {
        input: usize,
        output: usize,
        residual: Option<usize>,
        kind: ConvKind,
        req: Requant,
    },
    /// Rescales its map in place (f32 fully connected layers on the pooled map); the weights
    /// transposed (`fc1t`: `[channels][squeeze]`, `fc2t`: `[squeeze][channels]`).
    SqueezeExcite {
        map: usize,
        channels: usize,
        squeeze: usize,
        fc1t: Vec<f32>,
        b1: Vec<f32>,
        fc2t: Vec<f32>,
        b2: Vec<f32>,
    },
}

impl QLayer {
    /// The map this layer writes (a squeeze-excite rewrites its own).
    fn writes(&self) -> usize {
        match self {
            QLayer::Conv { output, .. } => *output,
            QLayer::SqueezeExcite { map, .. } => *map,
        }
    }
}

/// The lowered int8 model.
#[derive(Debug)]
pub struct QuantNetwork {
    pub spec: ModelSpec,
    pub isa: Int8Isa,
    maps: Vec<QMap>,
    layers: Vec<QLayer>,
    features: usize,
    /// The f32 classifier (a network of no layers whose input is the pooled feature row).
    head: Network,
    head_macs: usize,
}

/// One thread's buffers for a [`QuantNetwork`], reused from run to run. Maps share buffers
/// ("slots") when their lifetimes do not overlap, as the f32 network's do, so the working set
/// is a few maps rather than the whole network; a map's border is refilled with its zero point
/// before its producer writes it, since its slot may have held another map.
pub struct QuantWorkspace {
    size: (usize, usize),
    geoms: Vec<MapGeom>,
    slots: Vec<Vec<u8>>,
    /// The slot holding each map.
    slot_of: Vec<usize>,
    /// im2col rows of the stem.
    cols: Vec<u8>,
}

impl QuantWorkspace {
    pub fn fits(&self, h: usize, w: usize) -> bool {
        self.size == (h, w)
    }

    /// Map `m`'s buffer.
    fn map(&self, m: usize) -> &[u8] {
        &self.slots[self.slot_of[m]][..self.geoms[m].len()]
    }

    fn map_mut(&mut self, m: usize) -> &mut [u8] {
        let len = self.geoms[m].len();
        &mut self.slots[self.slot_of[m]][..len]
    }

    /// Map `m`'s slot, out of the workspace while its producer writes it and reads others
    /// (which never share its slot: their lifetimes overlap), its border set to `zero_point`.
    fn take_for_writing(&mut self, m: usize, zero_point: u8) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.slots[self.slot_of[m]]);
        fill_border(&mut buf, self.geoms[m], zero_point);
        buf
    }

    fn put_back(&mut self, m: usize, buf: Vec<u8>) {
        self.slots[self.slot_of[m]] = buf;
    }
}

/// Sets the border of the map `g` in `buf` to `value`.
fn fill_border(buf: &mut [u8], g: MapGeom, value: u8) {
    if g.pad == 0 {
        return;
    }
    let row = g.row_stride();
    let buf = &mut buf[..g.len()];
    buf[..g.pad * row].fill(value);
    buf[(g.pad + g.h) * row..].fill(value);
    for y in g.pad..g.pad + g.h {
        let r = &mut buf[y * row..(y + 1) * row];
        r[..g.pad * g.c].fill(value);
        r[(g.pad + g.w) * g.c..].fill(value);
    }
}

impl QuantNetwork {
    /// Lowers `model` for the int8 kernels of `isa` (the f32 classifier uses `f32_isa`).
    ///
    /// Panics if this CPU cannot run `isa`'s kernels.
    pub fn new(model: &QuantModel, isa: Int8Isa, f32_isa: Isa) -> QuantNetwork {
        assert!(isa.is_available(), "this CPU cannot run the {isa} int8 kernels");
        let folded = &model.folded;
        let borders = folded.borders();
        let maps: Vec<QMap> = folded
            .maps
            .iter()
            .enumerate()
            .map(|(i, &channels)| QMap {
                channels,
                // The image stays 3 channels wide: im2col reads it.
                stride_c: if i == 0 { channels } else { pad_channels(channels) },
                pad: borders[i],
                q: model.activations[i],
            })
            .collect();
        let mut weights = model.conv_weights.iter();
        let layers = folded
            .layers
            .iter()
            .map(|layer| match layer {
                FoldedLayer::Conv(c) => {
                    let q = weights.next().expect("one int8 weight set per conv");
                    lower_conv(c, q, &maps)
                }
                FoldedLayer::SqueezeExcite(se) => QLayer::SqueezeExcite {
                    map: se.map,
                    channels: se.channels,
                    squeeze: se.squeeze,
                    fc1t: transpose(&se.fc1, se.squeeze, se.channels),
                    b1: se.b1.clone(),
                    fc2t: transpose(&se.fc2, se.channels, se.squeeze),
                    b2: se.b2.clone(),
                },
            })
            .collect();
        let features = folded.features;
        let c = folded.maps[features];
        let head_model = FoldedModel {
            spec: folded.spec,
            maps: vec![c],
            layers: Vec::new(),
            features: 0,
            head: folded.head.clone(),
        };
        let head = Network::lower(&head_model, f32_isa, pad_channels(c));
        let head_macs = folded.head.iter().map(|l| l.n * l.k).sum();
        QuantNetwork { spec: folded.spec, isa, maps, layers, features, head, head_macs }
    }

    /// Width of one pooled feature row.
    pub fn pooled_stride(&self) -> usize {
        self.head.pooled_stride()
    }

    /// The classifier over `m` pooled rows; logits `[m][classes]`.
    pub fn head(&self, pooled: &[f32], m: usize, logits: &mut [f32]) {
        self.head.head(pooled, m, logits)
    }

    /// Buffers for `h` x `w` inputs: maps share slots by lifetime (a slot is free for a map
    /// once every reader of its occupant has run before the map's producer).
    pub fn workspace(&self, h: usize, w: usize) -> QuantWorkspace {
        let geoms = self.geometry(h, w);
        // Layer i produces its output at step i + 1 (the image at step 0) and reads at i + 1.
        let n = geoms.len();
        let (mut produced, mut last_use) = (vec![0usize; n], vec![0usize; n]);
        for (i, layer) in self.layers.iter().enumerate() {
            let step = i + 1;
            let (reads, writes): (Vec<usize>, Option<usize>) = match layer {
                QLayer::Conv { input, output, residual, .. } => {
                    (std::iter::once(*input).chain(*residual).collect(), Some(*output))
                }
                QLayer::SqueezeExcite { map, .. } => (vec![*map], None),
            };
            for r in reads {
                last_use[r] = last_use[r].max(step);
            }
            if let Some(o) = writes {
                produced[o] = step;
                last_use[o] = last_use[o].max(step);
            }
        }
        // The pooled map is read after the last layer.
        last_use[self.features] = usize::MAX;
        let mut slot_of = vec![0usize; n];
        let (mut sizes, mut free_after): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
        for m in 0..n {
            let need = geoms[m].len();
            let free = (0..sizes.len())
                .filter(|&s| free_after[s] < produced[m])
                .min_by_key(|&s| (sizes[s] < need, sizes[s].abs_diff(need)));
            let s = free.unwrap_or_else(|| {
                sizes.push(0);
                free_after.push(0);
                sizes.len() - 1
            });
            sizes[s] = sizes[s].max(need);
            free_after[s] = last_use[m];
            slot_of[m] = s;
        }
        let slots = sizes.iter().map(|&len| vec![0u8; len]).collect();
        let mut cols = 0;
        for layer in &self.layers {
            if let QLayer::Conv { output, kind: ConvKind::Im2col { b, .. }, .. } = layer {
                let g = geoms[*output];
                cols = cols.max(g.h * g.w * b.k());
            }
        }
        QuantWorkspace { size: (h, w), geoms, slots, slot_of, cols: vec![0; cols] }
    }

    fn geometry(&self, h: usize, w: usize) -> Vec<MapGeom> {
        let mut geoms = vec![MapGeom { h: 0, w: 0, c: 0, pad: 0 }; self.maps.len()];
        geoms[0] = MapGeom { h, w, c: self.maps[0].stride_c, pad: self.maps[0].pad };
        for layer in &self.layers {
            if let QLayer::Conv { input, output, kind, .. } = layer {
                let (kernel, stride) = match kind {
                    ConvKind::Pointwise(_) => (1, 1),
                    ConvKind::Depthwise { kernel, stride, .. } | ConvKind::Im2col { kernel, stride, .. } => {
                        (*kernel, *stride)
                    }
                };
                let g = geoms[*input];
                let pad = (kernel - 1) / 2;
                let out = |d: usize| (d + 2 * pad - kernel) / stride + 1;
                let m = &self.maps[*output];
                geoms[*output] = MapGeom { h: out(g.h), w: out(g.w), c: m.stride_c, pad: m.pad };
            }
        }
        geoms
    }

    /// Runs one NCHW image and writes the pooled feature row (f32, dequantised) into `pooled`.
    pub fn features_into(&self, ws: &mut QuantWorkspace, image: &[f32], pooled: &mut [f32]) {
        self.load_image(ws, image);
        for layer in &self.layers {
            self.run_layer(layer, ws);
        }
        let (g, m) = (ws.geoms[self.features], &self.maps[self.features]);
        maps::mean_pool_u8(self.isa, ws.map(self.features), g, m.channels, m.q, pooled);
    }

    /// Runs one image and returns every map's final values, dequantised (interior, real
    /// channels, NHWC): what the report sets against the f32 network's.
    pub fn dequantized_maps(&self, ws: &mut QuantWorkspace, image: &[f32]) -> Vec<Vec<f32>> {
        // Maps share slots: each is read as soon as it is written.
        let read = |ws: &QuantWorkspace, m: usize| {
            let (g, info) = (ws.geoms[m], &self.maps[m]);
            let mut v = Vec::with_capacity(g.h * g.w * info.channels);
            for y in 0..g.h {
                for x in 0..g.w {
                    v.extend(ws.map(m)[g.offset(y, x)..][..info.channels].iter().map(|&q| info.q.dequantize(q)));
                }
            }
            v
        };
        let mut out = vec![Vec::new(); self.maps.len()];
        self.load_image(ws, image);
        out[0] = read(ws, 0);
        for layer in &self.layers {
            self.run_layer(layer, ws);
            let m = layer.writes();
            out[m] = read(ws, m);
        }
        out
    }

    /// Each layer on its reference input: runs layer after layer, but before each one puts the
    /// maps the fake-quantised reference wrote (`events[0]` the image, `events[i + 1]` what layer
    /// `i` wrote, NHWC interior values) in place of its own, so every layer is checked on the
    /// same input as the reference's. Returns what each layer wrote, dequantised, with the
    /// written map's scale.
    #[cfg(test)]
    pub(crate) fn run_teacher_forced(
        &self,
        ws: &mut QuantWorkspace,
        image: &[f32],
        events: &[Vec<f32>],
    ) -> Vec<(Vec<f32>, f32)> {
        self.load_image(ws, image);
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            self.run_layer(layer, ws);
            let m = layer.writes();
            let (g, info) = (ws.geoms[m], &self.maps[m]);
            let mut got = Vec::new();
            let mut want = events[i + 1].iter();
            for y in 0..g.h {
                for x in 0..g.w {
                    for q in &mut ws.map_mut(m)[g.offset(y, x)..][..info.channels] {
                        got.push(info.q.dequantize(*q));
                        *q = info.q.quantize(*want.next().expect("the reference map's size"));
                    }
                }
            }
            out.push((got, info.q.scale));
        }
        out
    }

    /// The NCHW image, quantised, into map 0 (NHWC).
    fn load_image(&self, ws: &mut QuantWorkspace, image: &[f32]) {
        let (h, w) = ws.size;
        let g = ws.geoms[0];
        let (c, q) = (self.maps[0].channels, self.maps[0].q);
        assert_eq!(image.len(), c * h * w, "image size");
        let plane = h * w;
        let mut buf = ws.take_for_writing(0, q.zero_point);
        let mut line = vec![0u8; w];
        for y in 0..h {
            let row = &mut buf[g.offset(y, 0)..][..w * g.c];
            for ch in 0..c {
                maps::quantize_slice(self.isa, &image[ch * plane + y * w..][..w], q, &mut line);
                for (px, &v) in row.chunks_exact_mut(g.c).zip(&line) {
                    px[ch] = v;
                }
            }
        }
        ws.put_back(0, buf);
    }

    fn run_layer(&self, layer: &QLayer, ws: &mut QuantWorkspace) {
        match layer {
            QLayer::Conv { input, output, residual, kind, req } => {
                let (in_g, out_g) = (ws.geoms[*input], ws.geoms[*output]);
                let mut out = ws.take_for_writing(*output, self.maps[*output].q.zero_point);
                match kind {
                    ConvKind::Depthwise { weights, stride, .. } => {
                        depthwise_u8(self.isa, ws.map(*input), in_g, weights, *stride, req, &mut out, out_g, 0..out_g.h)
                    }
                    ConvKind::Pointwise(b) => {
                        let res = residual.map(|r| (ws.map(r), ws.geoms[r]));
                        gemm_map(self.isa, ws.map(*input), in_g, b, req, res, &mut out, out_g);
                    }
                    ConvKind::Im2col { b, cin, kernel, stride } => {
                        let k = b.k();
                        let cols = &mut ws.cols[..out_g.h * out_g.w * k];
                        maps::im2col(&ws.slots[ws.slot_of[*input]], in_g, *cin, *kernel, *stride, out_g, cols);
                        let cols_g = MapGeom { h: out_g.h, w: out_g.w, c: k, pad: 0 };
                        gemm_map(self.isa, cols, cols_g, b, req, None, &mut out, out_g);
                    }
                }
                ws.put_back(*output, out);
            }
            QLayer::SqueezeExcite { map, channels, squeeze, fc1t, b1, fc2t, b2 } => {
                let (g, q) = (ws.geoms[*map], self.maps[*map].q);
                let se = maps::SqueezeExcite { channels: *channels, squeeze: *squeeze, fc1t, b1, fc2t, b2 };
                maps::squeeze_excite(self.isa, &se, ws.map_mut(*map), g, q);
            }
        }
    }
}

impl QuantNetwork {
    /// Per-layer median times on one image (each layer run alone, inputs hot, and within whole
    /// passes), with MACs and the bytes each must move; the kinds say `int8` or `f32`, so the
    /// parts kept in f32 show.
    pub fn profile(&self, ws: &mut QuantWorkspace, image: &[f32], runs: usize) -> Vec<crate::LayerProfile> {
        let runs = runs.max(1);
        let timed = |f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        };
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let features = self.maps[self.features].channels;
        let mut pooled = vec![0.0f32; self.pooled_stride()];
        let mut logits = vec![0.0f32; self.spec.num_classes];
        let steps = self.layers.len() + 3;
        let mut in_network = vec![Vec::new(); steps];
        for _ in 0..runs {
            in_network[0].push(timed(&mut || self.load_image(ws, image)));
            for (i, layer) in self.layers.iter().enumerate() {
                in_network[i + 1].push(timed(&mut || self.run_layer(layer, ws)));
            }
            let (g, m) = (ws.geoms[self.features], &self.maps[self.features]);
            in_network[steps - 2].push(timed(&mut || {
                maps::mean_pool_u8(self.isa, ws.map(self.features), g, m.channels, m.q, &mut pooled)
            }));
            in_network[steps - 1].push(timed(&mut || self.head(&pooled, 1, &mut logits)));
        }
        let mut alone = vec![Vec::new(); steps];
        for _ in 0..runs {
            alone[0].push(timed(&mut || self.load_image(ws, image)));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            for _ in 0..runs {
                alone[i + 1].push(timed(&mut || self.run_layer(layer, ws)));
            }
        }
        for _ in 0..runs {
            let (g, m) = (ws.geoms[self.features], &self.maps[self.features]);
            alone[steps - 2].push(timed(&mut || {
                maps::mean_pool_u8(self.isa, ws.map(self.features), g, m.channels, m.q, &mut pooled)
            }));
            alone[steps - 1].push(timed(&mut || self.head(&pooled, 1, &mut logits)));
        }
        let area = |m: usize| ws.geoms[m].h * ws.geoms[m].w;
        let ch = |m: usize| self.maps[m].channels;
        let g0 = ws.geoms[0];
        let mut rows = vec![(format!("int8 quantise image {}ch", ch(0)), (g0.h, g0.w), 0, 5 * g0.h * g0.w * ch(0))];
        for layer in &self.layers {
            rows.push(match layer {
                QLayer::Conv { input, output, residual, kind, .. } => {
                    let (out_hw, a_out) = ((ws.geoms[*output].h, ws.geoms[*output].w), area(*output) * ch(*output));
                    let res = residual.map_or(0, |r| area(r) * ch(r));
                    match kind {
                        ConvKind::Pointwise(b) => (
                            format!(
                                "int8 pointwise {}->{}{}",
                                ch(*input),
                                ch(*output),
                                if residual.is_some() { " +res" } else { "" }
                            ),
                            out_hw,
                            a_out * ch(*input),
                            area(*input) * ch(*input) + a_out + res + b.k() * b.n(),
                        ),
                        ConvKind::Depthwise { kernel, stride, .. } => (
                            format!("int8 depthwise {kernel}x{kernel}/{stride} {}", ch(*output)),
                            out_hw,
                            a_out * kernel * kernel,
                            area(*input) * ch(*input) + a_out,
                        ),
                        ConvKind::Im2col { b, kernel, cin, .. } => (
                            format!("int8 conv {kernel}x{kernel} {cin}->{} (im2col)", ch(*output)),
                            out_hw,
                            a_out * b.k(),
                            area(*input) * cin + area(*output) * b.k() + a_out + b.k() * b.n(),
                        ),
                    }
                }
                QLayer::SqueezeExcite { map, channels, squeeze, .. } => (
                    format!("int8 squeeze-excite {channels}/{squeeze} (f32 FCs)"),
                    (ws.geoms[*map].h, ws.geoms[*map].w),
                    area(*map) * channels + 2 * channels * squeeze,
                    2 * area(*map) * channels + 8 * channels * squeeze,
                ),
            });
        }
        let fg = ws.geoms[self.features];
        rows.push((format!("int8 pool {features}"), (1, 1), fg.h * fg.w * features, fg.h * fg.w * features));
        let head_macs: usize = self.spec_head_macs();
        rows.push((format!("f32 classifier {features}->{}", self.spec.num_classes), (1, 1), head_macs, 4 * head_macs));
        rows.into_iter()
            .zip(alone.into_iter().zip(in_network))
            .map(|((kind, out_hw, macs, bytes), (a, n))| crate::LayerProfile {
                kind,
                out_hw,
                macs,
                bytes,
                ms: median(a),
                ms_in_network: median(n),
                fused: false,
            })
            .collect()
    }

    /// Multiply-adds of the f32 classifier.
    fn spec_head_macs(&self) -> usize {
        self.head_macs
    }
}

/// One folded conv with its int8 weights, lowered.
fn lower_conv(c: &FoldedConv, q: &QuantizedWeights, maps: &[QMap]) -> QLayer {
    let (in_q, out_q) = (maps[c.input].q, maps[c.output].q);
    let mut req = Requant::new(in_q, q, Some(&c.bias), out_q);
    req = match c.act {
        None => req,
        Some(Activation::Relu) => req.with_clamp(out_q, Some(0.0), None),
        Some(Activation::Relu6) => req.with_clamp(out_q, Some(0.0), Some(6.0)),
        Some(Activation::Hardswish) => req.with_hardswish(out_q),
        Some(Activation::Hardsigmoid) => unreachable!("no conv of a MobileNet ends in hard-sigmoid"),
    };
    if let Some(r) = c.residual {
        assert!(c.act.is_none(), "{}: a residual after an activation", c.key);
        req = req.with_residual(maps[r].q, out_q);
    }
    let kind = if c.depthwise {
        ConvKind::Depthwise {
            weights: PackedDepthwise::new(q, c.kernel, maps[c.output].stride_c),
            kernel: c.kernel,
            stride: c.stride,
        }
    } else if c.is_pointwise() {
        ConvKind::Pointwise(PackedB::pack_out_major(&q.values, c.cout, c.cin))
    } else {
        // im2col columns in (tap, input channel) order; the weights are [out][in][tap].
        let (cin, taps) = (c.cin, c.kernel * c.kernel);
        let b =
            PackedB::pack_with(taps * cin, c.cout, |kk, j| q.values[j * q.per_channel + (kk % cin) * taps + kk / cin]);
        ConvKind::Im2col { b, cin, kernel: c.kernel, stride: c.stride }
    };
    QLayer::Conv { input: c.input, output: c.output, residual: c.residual, kind, req }
}

/// A 1x1 conv as a GEMM over the pixels of `a` (geometry `a_g`, `b.k()` channels read), stored
/// through `req` into `out` (with the residual map `res` added in the store when the layer has
/// one). Maps whose rows are contiguous run as one GEMM; bordered ones row by row.
#[allow(clippy::too_many_arguments)]
fn gemm_map(
    isa: Int8Isa,
    a: &[u8],
    a_g: MapGeom,
    b: &PackedB,
    req: &Requant,
    res: Option<(&[u8], MapGeom)>,
    out: &mut [u8],
    out_g: MapGeom,
) {
    let dense = |g: &MapGeom| g.pad == 0 && g.row_stride() == g.w * g.c;
    let whole = dense(&a_g) && dense(&out_g) && res.is_none_or(|(_, g)| dense(&g));
    let (rows, m) = if whole { (1, a_g.h * a_g.w) } else { (a_g.h, a_g.w) };
    for y in 0..rows {
        let a_row = &a[a_g.offset(y, 0)..];
        let o = out_g.offset(y, 0);
        let r = res.map(|(r, g)| (&r[g.offset(y, 0)..], g.c));
        gemm_u8s8_store(isa, a_row, a_g.c, m, b, req, r, &mut out[o..], out_g.c);
    }
}

/// `m` (`rows` x `cols`, row-major) transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}
