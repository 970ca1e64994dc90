//! Lowering a trained model to the engine's layers (BatchNorm folded, weights packed once), and
//! running them on one image at a time.
//!
//! Tensor keys are torchvision's state-dict keys, so the lowering below reads like the models'
//! `features` / `classifier` Sequentials.

use std::collections::{BTreeSet, HashMap};

use crate::buffer::Buffer;
use crate::arch::{Activation, BlockLayer, ConvLayer, HeadLayer, LinearLayer, ModelSpec, Plan, SqueezeExcite, Stage};
use crate::error::{EngineError, Result};
use crate::kernels::{self, MapGeom};
use crate::simd::{pad_channels, Isa};

/// f32 tensors by name: (shape, values), as read from a checkpoint.
pub type NamedTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Where the engine gets tensors from: torchvision's layout and keys, f32.
pub struct TensorSource {
    tensors: NamedTensors,
    used: BTreeSet<String>,
    /// When set, every requested tensor is made up (for benchmarks): a seed.
    random: Option<u64>,
}

impl TensorSource {
    pub fn new(tensors: NamedTensors) -> Self {
        Self { tensors, used: BTreeSet::new(), random: None }
    }

    /// Made-up weights of the right shapes and scales (He-normal-like convs, BatchNorm near
    /// identity): for timing, where the values do not matter but must stay finite and normal.
    pub fn random(seed: u64) -> Self {
        Self { tensors: HashMap::new(), used: BTreeSet::new(), random: Some(seed) }
    }

    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some(seed) = self.random.as_mut() {
            let n: usize = shape.iter().product();
            let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f32;
            let mut next = || {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            };
            let data = if key.ends_with("running_var") || (key.ends_with(".weight") && shape.len() == 1) {
                (0..n).map(|_| 1.0 + 0.1 * next()).collect()
            } else if shape.len() == 1 {
                (0..n).map(|_| 0.1 * next()).collect()
            } else {
                let scale = (3.0 / fan_in).sqrt();
                (0..n).map(|_| scale * next()).collect()
            };
            return Ok(data);
        }
        let (found, data) = self.tensors.get(key).ok_or_else(|| EngineError::MissingTensor(key.to_string()))?;
        // A 1x1 conv stored as [out, in] (a Linear) or a Linear as [out, in, 1, 1] is the same data.
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        if found != shape && squeeze(found) != squeeze(shape) {
            return Err(EngineError::Shape { key: key.to_string(), expected: shape.to_vec(), found: found.clone() });
        }
        if data.len() != shape.iter().product::<usize>() {
            return Err(EngineError::Shape { key: key.to_string(), expected: shape.to_vec(), found: vec![data.len()] });
        }
        self.used.insert(key.to_string());
        Ok(data.clone())
    }

    /// Strict loading: a tensor the model does not use is an error (a different model's file).
    fn finish(&self) -> Result<()> {
        let unused: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !self.used.contains(*k) && !k.ends_with("num_batches_tracked"))
            .collect();
        match unused.iter().min() {
            None => Ok(()),
            Some(example) => Err(EngineError::UnexpectedTensors { count: unused.len(), example: example.to_string() }),
        }
    }
}

fn act_code(act: Option<Activation>) -> u8 {
    match act {
        None => kernels::ACT_NONE,
        Some(Activation::Relu) => kernels::ACT_RELU,
        Some(Activation::Relu6) => kernels::ACT_RELU6,
        Some(Activation::Hardswish) => kernels::ACT_HARDSWISH,
        Some(Activation::Hardsigmoid) => kernels::ACT_HARDSIGMOID,
    }
}

/// A feature map between layers: its real channel count and the zero border its consumers need.
#[derive(Debug, Clone)]
struct MapInfo {
    channels: usize,
    /// Channel stride: padded, except for the 3-channel input image.
    stride_c: usize,
    pad: usize,
}

#[derive(Debug)]
enum Layer {
    /// The stem: a full conv with few input channels.
    Direct { input: usize, output: usize, cin: usize, kernel: usize, stride: usize, weights: Vec<f32>, bias: Vec<f32>, act: u8 },
    /// 1x1 conv as GEMM, residual added after the activation.
    Pointwise { input: usize, output: usize, residual: Option<usize>, dense: Dense },
    Depthwise { input: usize, output: usize, kernel: usize, stride: usize, weights: Vec<f32>, bias: Vec<f32>, act: u8 },
    /// In place on `map`.
    SqueezeExcite { map: usize, channels: usize, squeeze: usize, squeeze_pad: usize, fc1: Vec<f32>, b1: Vec<f32>, fc2: Vec<f32>, b2: Vec<f32> },
}

impl Layer {
    /// The kernel job of a full or depthwise conv layer, writing whole rows of `out_geom` at
    /// `output`.
    fn conv_job(&self, ws: &Workspace, output: *mut f32, out_geom: MapGeom) -> kernels::Conv {
        let (input, cin, kernel, stride, weights, bias, act) = match self {
            Layer::Direct { input, cin, kernel, stride, weights, bias, act, .. } => (*input, *cin, *kernel, *stride, weights, bias, *act),
            Layer::Depthwise { input, kernel, stride, weights, bias, act, .. } => (*input, 0, *kernel, *stride, weights, bias, *act),
            _ => unreachable!("conv_job is for conv layers"),
        };
        kernels::Conv {
            input: ws.ptr(input),
            in_geom: ws.geoms[input],
            cin,
            kernel,
            stride,
            weights: weights.as_ptr(),
            bias: bias.as_ptr(),
            act,
            output,
            out_geom,
            out_row0: 0,
            in_row0: 0,
        }
    }
}

/// A packed GEMM operand: a 1x1 conv or a Linear.
#[derive(Debug)]
struct Dense {
    k: usize,
    n_pad: usize,
    packed: Buffer,
    bias: Vec<f32>,
    act: u8,
}

impl Dense {
    /// `weights` in torch's [n, k] layout.
    fn new(weights: &[f32], bias: &[f32], n: usize, k: usize, act: u8, lanes: usize) -> Self {
        let (packed, n_pad) = kernels::pack_gemm_weights(weights, n, k, lanes);
        Self { k, n_pad, packed: Buffer::from_slice(&packed), bias: padded(bias, n_pad), act }
    }

    /// The GEMM job `c = act(a · W + bias) (+ res)` over the maps `a` and `c` (and `res`).
    fn job(&self, a: *const f32, a_geom: MapGeom, c: *mut f32, c_geom: MapGeom, res: Option<(*const f32, MapGeom)>) -> kernels::Gemm {
        kernels::Gemm {
            a,
            a_geom,
            k: self.k,
            b: self.packed.as_ptr(),
            n_pad: self.n_pad,
            bias: self.bias.as_ptr(),
            act: self.act,
            c,
            c_geom,
            res: res.map_or(std::ptr::null(), |r| r.0),
            res_geom: res.map_or(c_geom, |r| r.1),
        }
    }
}

fn padded(v: &[f32], len: usize) -> Vec<f32> {
    let mut out = vec![0.0; len];
    out[..v.len()].copy_from_slice(v);
    out
}

/// The lowered model.
#[derive(Debug)]
pub struct Network {
    pub spec: ModelSpec,
    pub isa: Isa,
    maps: Vec<MapInfo>,
    layers: Vec<Layer>,
    /// The map that is pooled into the classifier.
    features: usize,
    head: Vec<Dense>,
    /// `fuse[i]`: layer i is a depthwise conv whose output only layer i + 1, a pointwise conv,
    /// reads; the pair runs a band of rows at a time and the depthwise map never leaves cache.
    fuse: Vec<bool>,
    /// `fuse3[i]`: layer i is a pointwise expand whose output only the depthwise conv i + 1
    /// reads, and i + 1 is fused with i + 2: the three run in bands, and neither the expanded
    /// nor the depthwise map is ever whole.
    fuse3: Vec<bool>,
    /// `chain[i]`: layers i, i + 1 are a fused pair whose pointwise output only the fused pair
    /// i + 2, i + 3 reads (V1's blocks): the second pair reads the first's output through a
    /// ring of rows, as a triple reads its expand, so that map is never whole either.
    chain: Vec<bool>,
}

/// What computes the rows of the map that a ring-fed depthwise conv reads.
#[derive(Clone, Copy)]
enum Producer<'a> {
    /// A 1x1 expand conv of the whole map `input`.
    Expand { input: usize, dense: &'a Dense },
    /// A fused depthwise → pointwise pair; its depthwise conv reads a whole map.
    Pair { dw: &'a Layer, dense: &'a Dense },
}

struct Builder<'a> {
    src: &'a mut TensorSource,
    eps: f64,
    lanes: usize,
    maps: Vec<MapInfo>,
    layers: Vec<Layer>,
}

impl Builder<'_> {
    fn new_map(&mut self, channels: usize) -> usize {
        self.maps.push(MapInfo { channels, stride_c: pad_channels(channels), pad: 0 });
        self.maps.len() - 1
    }

    /// Conv weights with BatchNorm folded in: w' = w·γ/√(var+ε), b' = β − mean·γ/√(var+ε).
    /// Computed in f64, then rounded once.
    fn conv_bn(&mut self, conv: &str, bn: &str, cout: usize, cin_per_group: usize, kernel: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let w = self.src.take(&format!("{conv}.weight"), &[cout, cin_per_group, kernel, kernel])?;
        let gamma = self.src.take(&format!("{bn}.weight"), &[cout])?;
        let beta = self.src.take(&format!("{bn}.bias"), &[cout])?;
        let mean = self.src.take(&format!("{bn}.running_mean"), &[cout])?;
        let var = self.src.take(&format!("{bn}.running_var"), &[cout])?;
        let per_out = cin_per_group * kernel * kernel;
        let mut weights = vec![0.0f32; w.len()];
        let mut bias = vec![0.0f32; cout];
        for o in 0..cout {
            let scale = gamma[o] as f64 / (var[o] as f64 + self.eps).sqrt();
            for i in 0..per_out {
                weights[o * per_out + i] = (w[o * per_out + i] as f64 * scale) as f32;
            }
            bias[o] = (beta[o] as f64 - mean[o] as f64 * scale) as f32;
        }
        Ok((weights, bias))
    }

    /// One conv of the plan reading map `input`, with its residual map if it ends a block that
    /// adds its input.
    fn conv(&mut self, layer: &ConvLayer, input: usize, residual: Option<usize>) -> Result<usize> {
        let (conv, bn) = (layer.conv_key.as_str(), layer.norm_key.as_str());
        let (cout, kernel, stride) = (layer.out_channels, layer.kernel, layer.stride);
        let cin = self.maps[input].channels;
        debug_assert_eq!(cin, layer.in_channels, "{conv}: the plan's channels");
        let act = act_code(layer.activation);
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
            self.layers.push(Layer::Direct { input, output, cin, kernel, stride, weights, bias: padded(&b, c_pad), act });
            Ok(output)
        }
    }

    fn need_border(&mut self, map: usize, kernel: usize) {
        let pad = &mut self.maps[map].pad;
        *pad = (*pad).max((kernel - 1) / 2);
    }

    /// torchvision's `SqueezeExcitation` at `prefix` (`fc1`, `fc2`: 1x1 convs with bias).
    fn squeeze_excite(&mut self, se: &SqueezeExcite, map: usize) -> Result<()> {
        let (prefix, squeeze) = (se.key.as_str(), se.squeeze_channels);
        let channels = self.maps[map].channels;
        let c_pad = self.maps[map].stride_c;
        let squeeze_pad = pad_channels(squeeze);
        let w1 = self.src.take(&format!("{prefix}.fc1.weight"), &[squeeze, channels, 1, 1])?;
        let b1 = self.src.take(&format!("{prefix}.fc1.bias"), &[squeeze])?;
        let w2 = self.src.take(&format!("{prefix}.fc2.weight"), &[channels, squeeze, 1, 1])?;
        let b2 = self.src.take(&format!("{prefix}.fc2.bias"), &[channels])?;
        // fc1: [s][c] → [c][s_pad]; fc2: [c][s] → [s][c_pad]: the output dimension innermost.
        let mut fc1 = vec![0.0; channels * squeeze_pad];
        let mut fc2 = vec![0.0; squeeze * c_pad];
        for s in 0..squeeze {
            for c in 0..channels {
                fc1[c * squeeze_pad + s] = w1[s * channels + c];
                fc2[s * c_pad + c] = w2[c * squeeze + s];
            }
        }
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

    fn linear(&mut self, linear: &LinearLayer, act: Option<Activation>) -> Result<Dense> {
        let (prefix, n, k) = (&linear.key, linear.out_features, linear.in_features);
        let w = self.src.take(&format!("{prefix}.weight"), &[n, k])?;
        let b = self.src.take(&format!("{prefix}.bias"), &[n])?;
        Ok(Dense::new(&w, &b, n, k, act_code(act), self.lanes))
    }
}

impl Network {
    fn new(spec: ModelSpec, isa: Isa, maps: Vec<MapInfo>, layers: Vec<Layer>, features: usize, head: Vec<Dense>) -> Self {
        let mut readers = vec![0usize; maps.len()];
        for layer in &layers {
            match layer {
                Layer::Direct { input, .. } | Layer::Depthwise { input, .. } => readers[*input] += 1,
                Layer::Pointwise { input, residual, .. } => {
                    readers[*input] += 1;
                    if let Some(r) = residual {
                        readers[*r] += 1;
                    }
                }
                Layer::SqueezeExcite { map, .. } => readers[*map] += 1,
            }
        }
        let fuse = (0..layers.len())
            .map(|i| match (&layers[i], layers.get(i + 1)) {
                (Layer::Depthwise { output, .. }, Some(Layer::Pointwise { input, .. })) => {
                    output == input && readers[*output] == 1 && *output != features
                }
                _ => false,
            })
            .collect::<Vec<bool>>();
        let fuse3 = (0..layers.len())
            .map(|i| match (&layers[i], layers.get(i + 1)) {
                (Layer::Pointwise { output, residual: None, .. }, Some(Layer::Depthwise { input, .. })) => {
                    output == input && readers[*output] == 1 && *output != features && fuse[i + 1]
                }
                _ => false,
            })
            .collect::<Vec<bool>>();
        let chain = (0..layers.len()).map(|i| fuse[i] && fuse3.get(i + 1) == Some(&true)).collect();
        Network { spec, isa, maps, layers, features, head, fuse, fuse3, chain }
    }

    /// Lowers the resolved plan of `spec`: one engine layer per conv (BatchNorm folded), one per
    /// squeeze-excite, a block's residual added in its last conv's store, and the classifier's
    /// activation fused into the Linear before it.
    pub fn build(spec: &ModelSpec, src: &mut TensorSource, isa: Isa) -> Result<Network> {
        let plan = Plan::new(spec)?;
        let mut b = Builder { src, eps: spec.norm_eps, lanes: isa.lanes(), maps: Vec::new(), layers: Vec::new() };
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
        b.src.finish()?;
        Ok(Network::new(*spec, isa, b.maps, b.layers, x, head))
    }

    /// Every map's geometry for an `h` x `w` input.
    fn geometry(&self, h: usize, w: usize) -> Vec<MapGeom> {
        let mut geoms: Vec<Option<MapGeom>> = vec![None; self.maps.len()];
        let info = &self.maps[0];
        geoms[0] = Some(MapGeom { h, w, c: info.stride_c, pad: info.pad });
        for layer in &self.layers {
            let (input, output, kernel, stride) = match layer {
                Layer::Direct { input, output, kernel, stride, .. } | Layer::Depthwise { input, output, kernel, stride, .. } => {
                    (*input, *output, *kernel, *stride)
                }
                Layer::Pointwise { input, output, .. } => (*input, *output, 1, 1),
                Layer::SqueezeExcite { .. } => continue,
            };
            let g = geoms[input].expect("maps are produced in order");
            let pad = (kernel - 1) / 2;
            let out = |d: usize| (d + 2 * pad - kernel) / stride + 1;
            let info = &self.maps[output];
            geoms[output] = Some(MapGeom { h: out(g.h), w: out(g.w), c: info.stride_c, pad: info.pad });
        }
        geoms.into_iter().map(|g| g.expect("every map is produced")).collect()
    }
}

/// A raw pointer that may cross threads: the parts of a layer write disjoint rows.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// A method, so that closures capture the wrapper rather than the bare field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `f(part, start, end)` over `parts` near-equal ranges of `0..n`, on the current rayon
/// pool when there is more than one.
fn for_parts(parts: usize, n: usize, f: &(dyn Fn(usize, usize, usize) + Sync)) {
    let parts = parts.min(n).max(1);
    if parts == 1 {
        return f(0, 0, n);
    }
    rayon::scope(|scope| {
        for p in 1..parts {
            scope.spawn(move |_| f(p, n * p / parts, n * (p + 1) / parts));
        }
        f(0, 0, n / parts);
    });
}

/// One layer's cost in [`Network::profile`].
#[derive(Debug, Clone)]
pub struct LayerProfile {
    pub kind: String,
    pub out_hw: (usize, usize),
    pub macs: usize,
    pub bytes: usize,
    /// Median time run alone, over and over (inputs hot in cache).
    pub ms: f64,
    /// Median time within whole passes; a fused group (pair, triple, chain) is charged to its
    /// depthwise layer, and the pointwise shows 0.
    pub ms_in_network: f64,
    /// Runs inside a fused group started by an earlier layer.
    pub fused: bool,
}

/// Buffers for one thread, reused from run to run. Maps share buffers ("slots") when their
/// lifetimes do not overlap, so the working set is a few maps, not the whole network: the early
/// 112x112 maps are megabytes each, and keeping them in cache is worth more than any kernel trick.
pub struct Workspace {
    size: (usize, usize),
    geoms: Vec<MapGeom>,
    slots: Vec<Buffer>,
    slot_of: Vec<usize>,
    scratch: Vec<f32>,
    /// Rows of a fused depthwise output, one buffer per part.
    band: Buffer,
    /// Rows of a fused expand output (bordered, with `pad` spare rows in front), one per part.
    eband: Buffer,
    /// Threads each layer is split over (1: the calling thread only).
    parts: usize,
}

impl Workspace {
    #[cfg(test)]
    pub fn new(net: &Network, h: usize, w: usize) -> Self {
        Self::with_parts(net, h, w, 1)
    }

    /// A workspace whose layers are split over `parts` threads (run inside a rayon pool).
    pub fn with_parts(net: &Network, h: usize, w: usize, parts: usize) -> Self {
        let parts = parts.max(1);
        let geoms = net.geometry(h, w);
        // Last layer index reading each map (map 0, the image, is "produced" before layer 0).
        let mut produced = vec![0usize; geoms.len()];
        let mut last_use = vec![0usize; geoms.len()];
        // Layers in a fused group run interleaved: every read lasts until the group's end.
        let mut group_end = vec![0usize; net.layers.len()];
        for g in net.group_starts() {
            let n = net.group_len(g);
            group_end[g..g + n].fill(g + n);
        }
        for (i, layer) in net.layers.iter().enumerate() {
            let (reads, writes): (Vec<usize>, Option<usize>) = match layer {
                Layer::Direct { input, output, .. } | Layer::Depthwise { input, output, .. } => (vec![*input], Some(*output)),
                Layer::Pointwise { input, output, residual, .. } => {
                    (std::iter::once(*input).chain(*residual).collect(), Some(*output))
                }
                Layer::SqueezeExcite { map, .. } => (vec![*map], None),
            };
            let last = group_end[i];
            for r in reads {
                last_use[r] = last_use[r].max(last);
            }
            if let Some(o) = writes {
                produced[o] = i + 1;
                last_use[o] = last_use[o].max(i + 1);
            }
        }
        // The pooled map is read after the last layer.
        last_use[net.features] = usize::MAX;
        let mut slot_of = vec![0usize; geoms.len()];
        let mut slot_sizes: Vec<usize> = Vec::new();
        let mut slot_free_after: Vec<usize> = Vec::new();
        for m in 0..geoms.len() {
            let need = geoms[m].len();
            // A slot is free for map m if its occupant's last reader ran before m's producer.
            let free = (0..slot_sizes.len())
                .filter(|&s| slot_free_after[s] < produced[m])
                .min_by_key(|&s| (slot_sizes[s] < need, slot_sizes[s].abs_diff(need)));
            let s = match free {
                Some(s) => s,
                None => {
                    slot_sizes.push(0);
                    slot_free_after.push(0);
                    slot_sizes.len() - 1
                }
            };
            slot_sizes[s] = slot_sizes[s].max(need);
            slot_free_after[s] = last_use[m];
            slot_of[m] = s;
        }
        let slots = slot_sizes.iter().map(|&n| Buffer::zeroed(n)).collect();
        let widest = net.maps.iter().map(|m| m.stride_c).max().unwrap_or(0);
        let band = (0..net.layers.len())
            .filter(|&i| net.fuse[i])
            .map(|i| match (&net.layers[i], &net.layers[i + 1]) {
                (Layer::Depthwise { output, .. }, Layer::Pointwise { dense, .. }) => {
                    let g = geoms[*output];
                    Network::band_rows(&g, dense, parts) * MapGeom { pad: 0, ..g }.row_stride()
                }
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let eband = (0..net.layers.len())
            .filter(|&i| net.fuse3[i])
            .map(|i| match (&net.layers[i + 1], &net.layers[i + 2]) {
                (Layer::Depthwise { input, output, kernel, stride, .. }, Layer::Pointwise { dense, .. }) => {
                    let (eg, dg) = (geoms[*input], geoms[*output]);
                    (Network::band_rows(&dg, dense, parts) - 1) * stride + kernel + eg.pad
                }
                _ => 0,
            } * geoms[match &net.layers[i] {
                Layer::Pointwise { output, .. } => *output,
                _ => 0,
            }]
            .row_stride())
            .max()
            .unwrap_or(0);
        Self {
            size: (h, w),
            geoms,
            slots,
            slot_of,
            scratch: vec![0.0; 2 * widest + 64],
            band: Buffer::zeroed(band * parts),
            eband: Buffer::zeroed(eband * parts),
            parts,
        }
    }

    pub fn fits(&self, h: usize, w: usize, parts: usize) -> bool {
        self.size == (h, w) && self.parts == parts.max(1)
    }

    fn ptr(&self, map: usize) -> *const f32 {
        self.slots[self.slot_of[map]].as_ptr()
    }

    fn ptr_mut(&mut self, map: usize) -> *mut f32 {
        self.slots[self.slot_of[map]].as_mut_ptr()
    }

    /// Map `map`'s buffer (its slot may be longer).
    #[cfg(test)]
    fn map(&self, map: usize) -> &[f32] {
        &self.slots[self.slot_of[map]][..self.geoms[map].len()]
    }

    /// Zeroes the border of `map`: its slot may have held a map of another shape.
    fn zero_border(&mut self, map: usize) {
        let g = self.geoms[map];
        if g.pad == 0 {
            return;
        }
        let row = g.row_stride();
        let buf = &mut self.slots[self.slot_of[map]][..g.len()];
        buf[..g.pad * row].fill(0.0);
        buf[(g.pad + g.h) * row..].fill(0.0);
        for y in g.pad..g.pad + g.h {
            let r = &mut buf[y * row..(y + 1) * row];
            r[..g.pad * g.c].fill(0.0);
            r[(g.pad + g.w) * g.c..].fill(0.0);
        }
    }
}

impl Network {
    /// Runs the features of one NCHW image (`3·h·w` values) and writes the pooled feature vector
    /// (padded channels) into `pooled`.
    pub fn features_into(&self, ws: &mut Workspace, image: &[f32], pooled: &mut [f32]) {
        self.run_layers(ws, image);
        let g = ws.geoms[self.features];
        assert!(pooled.len() >= g.c);
        unsafe { kernels::mean_pool(self.isa, ws.ptr(self.features), g, pooled.as_mut_ptr()) };
    }

    /// Every layer on one NCHW image; the maps stay in `ws`.
    fn run_layers(&self, ws: &mut Workspace, image: &[f32]) {
        self.load_image(ws, image);
        for i in self.group_starts() {
            self.run_group(i, ws);
        }
    }

    /// The NCHW image into the first map.
    fn load_image(&self, ws: &mut Workspace, image: &[f32]) {
        let (h, w) = ws.size;
        let g0 = ws.geoms[0];
        ws.zero_border(0);
        {
            let slot = ws.slot_of[0];
            let buf = &mut ws.slots[slot];
            // NCHW planes into interleaved rows: one image row of each plane at a time, with
            // slices sized up front so that the loops carry no bounds checks.
            let plane = h * w;
            let channels = self.maps[0].channels;
            for y in 0..h {
                let dst = &mut buf[g0.offset(y, 0)..g0.offset(y, 0) + w * g0.c];
                for c in 0..channels {
                    let src = &image[c * plane + y * w..c * plane + (y + 1) * w];
                    for (px, &v) in dst.chunks_exact_mut(g0.c).zip(src) {
                        px[c] = v;
                    }
                }
            }
        }
    }

    /// The first layer of each group that runs together, in order.
    fn group_starts(&self) -> impl Iterator<Item = usize> + '_ {
        let len = self.layers.len();
        std::iter::successors((len > 0).then_some(0), move |&i| Some(i + self.group_len(i)).filter(|&next| next < len))
    }

    /// How many layers run together starting at layer `i` (fused triples and pairs).
    fn group_len(&self, i: usize) -> usize {
        if self.chain[i] {
            4
        } else if self.fuse3[i] {
            3
        } else if self.fuse[i] {
            2
        } else {
            1
        }
    }

    fn run_group(&self, i: usize, ws: &mut Workspace) {
        match self.group_len(i) {
            4 => {
                let Layer::Pointwise { dense, .. } = &self.layers[i + 1] else { unreachable!("chain starts with a pair") };
                let producer = Producer::Pair { dw: &self.layers[i], dense };
                self.run_ring(producer, &self.layers[i + 2], &self.layers[i + 3], ws)
            }
            3 => {
                let Layer::Pointwise { input, dense, .. } = &self.layers[i] else { unreachable!("a triple starts with its expand") };
                self.run_ring(Producer::Expand { input: *input, dense }, &self.layers[i + 1], &self.layers[i + 2], ws)
            }
            2 => self.run_fused(&self.layers[i], &self.layers[i + 1], ws),
            _ => self.run_layer(&self.layers[i], ws),
        }
    }

    /// Output rows of a fused depthwise → pointwise pair per band: about this many bytes of
    /// depthwise output, so that the band stays in L2 between the two kernels.
    const BAND_BYTES: usize = 96 * 1024;

    fn band_rows(g: &MapGeom, dense: &Dense, parts: usize) -> usize {
        // With megabytes of pointwise weights (late layers), a map that fits in L2 is one band:
        // every band re-reads all the weights. Split over threads, it is one band per thread,
        // or the other threads would wait.
        if kernels::panel_outer_pays(dense.k, dense.n_pad) && 4 * g.h * g.w * g.c <= kernels::GEMM_PANEL_OUTER_MAX_A_BYTES {
            return g.h.div_ceil(parts);
        }
        (Self::BAND_BYTES / (4 * g.w * g.c)).clamp(1, g.h.div_ceil(parts))
    }

    /// A depthwise conv and the pointwise conv reading it, a band of rows at a time through
    /// `ws.band` instead of a whole map.
    fn run_fused(&self, dw: &Layer, pw: &Layer, ws: &mut Workspace) {
        let (Layer::Depthwise { output: mid, .. }, Layer::Pointwise { output, residual, dense, .. }) = (dw, pw)
        else {
            unreachable!("fuse marks depthwise → pointwise pairs only")
        };
        ws.zero_border(*output);
        let mid_g = ws.geoms[*mid];
        let rows = Self::band_rows(&mid_g, dense, ws.parts);
        let (og, res) = (ws.geoms[*output], residual.map(|r| (ws.ptr(r), ws.geoms[r])));
        let out = ws.ptr_mut(*output);
        let band_len = ws.band.len() / ws.parts;
        let band_base = SyncPtr(ws.band.as_mut_ptr());
        let (out, res) = (SyncPtr(out), res.map(|(p, g)| (SyncPtr(p as *mut f32), g)));
        let job = dw.conv_job(ws, std::ptr::null_mut(), mid_g);
        let bands = mid_g.h.div_ceil(rows);
        // Bands are independent: with several threads each takes a run of them, with its own
        // band buffer.
        for_parts(ws.parts, bands, &|part, b0, b1| {
            let band = unsafe { band_base.get().add(part * band_len) };
            for b in b0..b1 {
                let y0 = b * rows;
                let y1 = (y0 + rows).min(mid_g.h);
                self.depthwise_then_project(job, band, mid_g, (y0, y1), dense, out, og, res);
            }
        });
    }

    /// A depthwise → pointwise pair fed through a ring of rows: expand (1x1) → depthwise →
    /// project, or pair → pair. Per band of depthwise output rows, the producer computes the
    /// rows of its map that the band needs into `ws.eband` (keeping the rows it shares with the
    /// previous band), the depthwise conv reads them from there into `ws.band`, and the
    /// pointwise conv projects. Neither the producer's map nor the depthwise map is ever whole.
    fn run_ring(&self, producer: Producer, dw: &Layer, proj: &Layer, ws: &mut Workspace) {
        let (Layer::Depthwise { input: e, output: mid, kernel, stride, .. }, Layer::Pointwise { output, residual, dense, .. }) = (dw, proj)
        else {
            unreachable!("a ring feeds a depthwise → pointwise pair")
        };
        ws.zero_border(*output);
        let (eg, mid_g, og) = (ws.geoms[*e], ws.geoms[*mid], ws.geoms[*output]);
        let (k, s, p) = (*kernel, *stride, eg.pad);
        debug_assert_eq!(p, (k - 1) / 2, "the ring's map's only reader is this depthwise conv");
        let ers = eg.row_stride();
        let rows = Self::band_rows(&mid_g, dense, ws.parts);
        let res = residual.map(|r| (SyncPtr(ws.ptr(r) as *mut f32), ws.geoms[r]));
        let out = SyncPtr(ws.ptr_mut(*output));
        let band_len = ws.band.len() / ws.parts;
        let eband_len = ws.eband.len() / ws.parts;
        let band_base = SyncPtr(ws.band.as_mut_ptr());
        let eband_base = SyncPtr(ws.eband.as_mut_ptr());
        let job = dw.conv_job(ws, std::ptr::null_mut(), mid_g);
        // The producer with its pointers and geometry, resolved while `ws` may be borrowed.
        enum Ready<'a> {
            Expand { x: SyncPtr, xg: MapGeom, dense: &'a Dense },
            Pair { job: kernels::Conv, mid_g: MapGeom, rows: usize, dense: &'a Dense },
        }
        let ready = match producer {
            Producer::Expand { input, dense } => Ready::Expand { x: SyncPtr(ws.ptr(input) as *mut f32), xg: ws.geoms[input], dense },
            Producer::Pair { dw: pdw, dense } => {
                let Layer::Depthwise { output: pmid, .. } = pdw else { unreachable!("a pair starts with a depthwise conv") };
                let mid_g = ws.geoms[*pmid];
                Ready::Pair { job: pdw.conv_job(ws, std::ptr::null_mut(), mid_g), mid_g, rows: Self::band_rows(&mid_g, dense, ws.parts), dense }
            }
        };
        let bands = mid_g.h.div_ceil(rows);
        for_parts(ws.parts, bands, &|part, b0, b1| {
            let band = unsafe { band_base.get().add(part * band_len) };
            // Row j of `ebuf` holds bordered row r0 + j of the ring's map; `p` spare rows
            // precede it.
            let ebuf = unsafe { eband_base.get().add(part * eband_len + p * ers) };
            let mut held: Option<(usize, usize)> = None;
            for b in b0..b1 {
                let y0 = b * rows;
                let y1 = (y0 + rows).min(mid_g.h);
                let (r0, r1) = (y0 * s, (y1 - 1) * s + k);
                // Rows already computed for the previous band move to the front.
                let mut start = r0;
                if let Some((lo, hi)) = held {
                    if lo <= r0 && hi > r0 {
                        unsafe { std::ptr::copy(ebuf.add((r0 - lo) * ers), ebuf, (hi - r0) * ers) };
                        start = hi;
                    }
                }
                // Bordered rows outside the image are zero rows.
                for r in start..r1 {
                    if r < p || r >= eg.h + p {
                        unsafe { std::ptr::write_bytes(ebuf.add((r - r0) * ers), 0, ers) };
                    }
                }
                let (v0, v1) = (start.max(p), r1.min(eg.h + p));
                if v0 < v1 {
                    for r in v0..v1 {
                        // Border columns: the buffer is shared with other layers' shapes.
                        let row = unsafe { ebuf.add((r - r0) * ers) };
                        unsafe {
                            std::ptr::write_bytes(row, 0, p * eg.c);
                            std::ptr::write_bytes(row.add((p + eg.w) * eg.c), 0, p * eg.c);
                        }
                    }
                    // Image rows v0 - p .. v1 - p of the ring's map, written so that image row
                    // y lands in ebuf row y + p - r0 (the geometry adds the border `p`).
                    let base = ebuf.wrapping_sub(r0 * ers);
                    match &ready {
                        Ready::Expand { x, xg, dense: exp_dense } => {
                            let g = exp_dense.job(
                                unsafe { x.get().add((v0 - p) * xg.row_stride()) },
                                MapGeom { h: v1 - v0, ..*xg },
                                base.wrapping_add((v0 - p) * ers),
                                MapGeom { h: v1 - v0, ..eg },
                                None,
                            );
                            unsafe { kernels::gemm(self.isa, &g, 0, (v1 - v0) * eg.w) };
                        }
                        Ready::Pair { job: pjob, mid_g: pmid_g, rows: prows, dense: pdense } => {
                            // The pair's own bands, through the same band buffer (used in turn).
                            let mut c0 = v0 - p;
                            while c0 < v1 - p {
                                let c1 = (c0 + prows).min(v1 - p);
                                self.depthwise_then_project(*pjob, band, *pmid_g, (c0, c1), pdense, SyncPtr(base), eg, None);
                                c0 = c1;
                            }
                        }
                    }
                }
                held = Some((r0, r1));
                self.depthwise_then_project(job.reading_band(ebuf, r0), band, mid_g, (y0, y1), dense, out, og, res);
            }
        });
    }

    /// One band of a fused pair or triple: depthwise rows `y0..y1` into `band`, then the
    /// pointwise conv from `band` into the same rows of the output (and residual) maps.
    #[allow(clippy::too_many_arguments)]
    fn depthwise_then_project(
        &self,
        job: kernels::Conv,
        band: *mut f32,
        mid_g: MapGeom,
        (y0, y1): (usize, usize),
        dense: &Dense,
        out: SyncPtr,
        og: MapGeom,
        res: Option<(SyncPtr, MapGeom)>,
    ) {
        let band_g = MapGeom { h: y1 - y0, w: mid_g.w, c: mid_g.c, pad: 0 };
        let d = job.into_band(band, MapGeom { h: mid_g.h, ..band_g }, y0);
        unsafe { kernels::depthwise(self.isa, &d, y0, y1) };
        // Rows y0..y1 of the output (and residual) maps, as maps of their own.
        // (wrapping: a ring's base may point before its buffer; the rows themselves are inside.)
        let rows = |p: *mut f32, g: MapGeom| (p.wrapping_add(y0 * g.row_stride()), MapGeom { h: y1 - y0, ..g });
        let (c, c_geom) = rows(out.get(), og);
        let res = res.map(|(p, g)| {
            let (p, g) = rows(p.get(), g);
            (p as *const f32, g)
        });
        let g = dense.job(band, band_g, c, c_geom, res);
        unsafe { kernels::gemm(self.isa, &g, 0, (y1 - y0) * mid_g.w) };
    }

    fn run_layer(&self, layer: &Layer, ws: &mut Workspace) {
        let isa = self.isa;
        match layer {
            Layer::Direct { output, .. } | Layer::Depthwise { output, .. } | Layer::Pointwise { output, .. } => {
                ws.zero_border(*output)
            }
            Layer::SqueezeExcite { .. } => {}
        }
        {
            match layer {
                Layer::Direct { output, .. } | Layer::Depthwise { output, .. } => {
                    let og = ws.geoms[*output];
                    let out = ws.ptr_mut(*output);
                    let job = layer.conv_job(ws, out, og);
                    let depthwise = matches!(layer, Layer::Depthwise { .. });
                    for_parts(ws.parts, og.h, &|_, a, b| unsafe {
                        if depthwise {
                            kernels::depthwise(isa, &job, a, b)
                        } else {
                            kernels::direct_conv(isa, &job, a, b)
                        }
                    });
                }
                Layer::Pointwise { input, output, residual, dense } => {
                    let og = ws.geoms[*output];
                    let res = residual.map(|r| (ws.ptr(r), ws.geoms[r]));
                    let (inp, out) = (ws.ptr(*input), ws.ptr_mut(*output));
                    let g = dense.job(inp, ws.geoms[*input], out, og, res);
                    for_parts(ws.parts, og.h * og.w, &|_, a, b| unsafe { kernels::gemm(isa, &g, a, b) });
                }
                Layer::SqueezeExcite { map, channels, squeeze, squeeze_pad, fc1, b1, fc2, b2 } => {
                    let se = kernels::SqueezeExcite {
                        x: ws.ptr_mut(*map),
                        geom: ws.geoms[*map],
                        channels: *channels,
                        squeeze: *squeeze,
                        squeeze_pad: *squeeze_pad,
                        fc1: fc1.as_ptr(),
                        b1: b1.as_ptr(),
                        fc2: fc2.as_ptr(),
                        b2: b2.as_ptr(),
                        scratch: ws.scratch.as_mut_ptr(),
                    };
                    unsafe { kernels::squeeze_excite(isa, &se) };
                }
            }
        }
    }

    /// Times every layer on one image (`runs` repetitions, median), with its MACs and the bytes
    /// it must move at least (input and output maps, weights).
    pub fn profile(&self, ws: &mut Workspace, image: &[f32], runs: usize) -> Vec<LayerProfile> {
        self.run_layers(ws, image);
        // In the network: whole passes, each step timed where it runs (a fused pair counts once,
        // on its depthwise layer), so the caches hold what they would.
        let mut in_network: Vec<Vec<f64>> = vec![Vec::new(); self.layers.len()];
        // The steps outside the layers: image copy, pooling, classifier (alone, in network).
        let mut outside: [(Vec<f64>, Vec<f64>); 3] = Default::default();
        let fg = ws.geoms[self.features];
        let mut pooled = vec![0.0f32; self.pooled_stride()];
        let mut logits = vec![0.0f32; self.spec.num_classes];
        let timed = |f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        };
        for _ in 0..runs.max(1) {
            self.run_layers(ws, image);
            outside[0].1.push(timed(&mut || self.load_image(ws, image)));
            for i in self.group_starts() {
                let t = std::time::Instant::now();
                self.run_group(i, ws);
                in_network[i].push(t.elapsed().as_secs_f64() * 1e3);
                for times in &mut in_network[i + 1..i + self.group_len(i)] {
                    times.push(0.0);
                }
            }
            outside[1].1.push(timed(&mut || unsafe { kernels::mean_pool(self.isa, ws.ptr(self.features), fg, pooled.as_mut_ptr()) }));
            outside[2].1.push(timed(&mut || self.head(&pooled, 1, &mut logits)));
        }
        for _ in 0..runs.max(1) {
            outside[0].0.push(timed(&mut || self.load_image(ws, image)));
            outside[1].0.push(timed(&mut || unsafe { kernels::mean_pool(self.isa, ws.ptr(self.features), fg, pooled.as_mut_ptr()) }));
            outside[2].0.push(timed(&mut || self.head(&pooled, 1, &mut logits)));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut group_start = vec![false; self.layers.len()];
        for i in self.group_starts() {
            group_start[i] = true;
        }
        let mut out = Vec::new();
        for (index, layer) in self.layers.iter().enumerate() {
            let mut times: Vec<f64> = (0..runs.max(1))
                .map(|_| {
                    let t = std::time::Instant::now();
                    self.run_layer(layer, ws);
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let area = |m: usize| ws.geoms[m].h * ws.geoms[m].w;
            let ch = |m: usize| self.maps[m].channels;
            let (kind, macs, bytes) = match layer {
                Layer::Direct { input, output, cin, kernel, weights, .. } => (
                    format!("conv {k}x{k} {}->{}", cin, ch(*output), k = kernel),
                    area(*output) * ch(*output) * cin * kernel * kernel,
                    4 * (area(*input) * cin + area(*output) * ch(*output) + weights.len()),
                ),
                Layer::Pointwise { input, output, residual, dense } => (
                    format!("pointwise {}->{}{}", ch(*input), ch(*output), if residual.is_some() { " +res" } else { "" }),
                    area(*output) * ch(*output) * ch(*input),
                    4 * (area(*input) * ch(*input) * (1 + residual.is_some() as usize) + area(*output) * ch(*output) + dense.packed.len()),
                ),
                Layer::Depthwise { input, output, kernel, stride, .. } => (
                    format!("depthwise {k}x{k}/{stride} {}", ch(*output), k = kernel),
                    area(*output) * ch(*output) * kernel * kernel,
                    4 * (area(*input) * ch(*input) + area(*output) * ch(*output)),
                ),
                Layer::SqueezeExcite { map, channels, squeeze, .. } => (
                    format!("squeeze-excite {channels}/{squeeze}"),
                    area(*map) * channels + 2 * channels * squeeze,
                    4 * (2 * area(*map) * channels + 2 * channels * squeeze),
                ),
            };
            let g = ws.geoms[match layer {
                Layer::Direct { output, .. } | Layer::Pointwise { output, .. } | Layer::Depthwise { output, .. } => *output,
                Layer::SqueezeExcite { map, .. } => *map,
            }];
            // Part of the group started by the layer before it (a pair, or a triple's first two).
            let fused = !group_start[index];
            let ms_in_network = median(&mut in_network[index]);
            out.push(LayerProfile { kind, out_hw: (g.h, g.w), macs, bytes, ms: times[times.len() / 2], ms_in_network, fused });
        }
        let (ig, features) = (ws.geoms[0], self.maps[self.features].channels);
        let head_macs: usize = self.head.iter().map(|d| d.k * d.n_pad).sum();
        let head_bytes: usize = self.head.iter().map(|d| 4 * d.packed.len()).sum();
        let steps = [
            (format!("image copy {}ch", self.maps[0].channels), (ig.h, ig.w), 0, 4 * 2 * ig.h * ig.w * self.maps[0].channels),
            (format!("pool {features}"), (1, 1), fg.h * fg.w * features, 4 * fg.h * fg.w * features),
            (format!("classifier {features}->{}", self.spec.num_classes), (1, 1), head_macs, head_bytes),
        ];
        for ((kind, out_hw, macs, bytes), (alone, net)) in steps.into_iter().zip(outside.iter_mut()) {
            out.push(LayerProfile { kind, out_hw, macs, bytes, ms: median(alone), ms_in_network: median(net), fused: false });
        }
        out
    }

    /// Width of one pooled feature row.
    pub fn pooled_stride(&self) -> usize {
        self.maps[self.features].stride_c
    }

    /// The classifier over `m` pooled rows (stride [`Self::pooled_stride`]); logits `[m][classes]`.
    pub fn head(&self, pooled: &[f32], m: usize, logits: &mut [f32]) {
        let mut x = pooled.to_vec();
        let mut stride = self.pooled_stride();
        for dense in &self.head {
            let mut y = vec![0.0f32; m * dense.n_pad];
            let a_geom = MapGeom { h: 1, w: m, c: stride, pad: 0 };
            let c_geom = MapGeom { h: 1, w: m, c: dense.n_pad, pad: 0 };
            let g = dense.job(x.as_ptr(), a_geom, y.as_mut_ptr(), c_geom, None);
            unsafe { kernels::gemm(self.isa, &g, 0, m) };
            x = y;
            stride = dense.n_pad;
        }
        let classes = self.spec.num_classes;
        for r in 0..m {
            logits[r * classes..(r + 1) * classes].copy_from_slice(&x[r * stride..r * stride + classes]);
        }
    }
}


/// Property tests: random shapes and weights per layer type, every ISA this CPU has, against
/// [`crate::reference`].
#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::reference::{self, Chw};

    /// splitmix64: reproducible without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn range(&mut self, lo: usize, hi: usize) -> usize {
            lo + (self.next() % (hi - lo + 1) as u64) as usize
        }
        fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
            lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
        }
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.uniform(-scale, scale)).collect()
        }
        fn act(&mut self) -> Option<Activation> {
            [None, Some(Activation::Relu), Some(Activation::Relu6), Some(Activation::Hardswish)][self.range(0, 3)]
        }
    }

    struct Bn {
        gamma: Vec<f32>,
        beta: Vec<f32>,
        mean: Vec<f32>,
        var: Vec<f32>,
    }

    fn random_bn(rng: &mut Rng, c: usize) -> Bn {
        Bn { gamma: rng.vec(c, 1.5), beta: rng.vec(c, 1.0), mean: rng.vec(c, 0.5), var: (0..c).map(|_| rng.uniform(0.2, 2.0)).collect() }
    }

    fn insert_conv_bn(t: &mut NamedTensors, p: &str, w: &[f32], shape: Vec<usize>, bn: &Bn) {
        let c = bn.gamma.len();
        t.insert(format!("{p}.0.weight"), (shape, w.to_vec()));
        t.insert(format!("{p}.1.weight"), (vec![c], bn.gamma.clone()));
        t.insert(format!("{p}.1.bias"), (vec![c], bn.beta.clone()));
        t.insert(format!("{p}.1.running_mean"), (vec![c], bn.mean.clone()));
        t.insert(format!("{p}.1.running_var"), (vec![c], bn.var.clone()));
    }

    /// Runs the layers `build` adds on `input`, returning map `out` as CHW.
    fn run(
        isa: Isa,
        tensors: NamedTensors,
        input: &Chw,
        build: impl FnOnce(&mut Builder) -> usize,
    ) -> Chw {
        let mut src = TensorSource::new(tensors);
        let mut b = Builder { src: &mut src, eps: 1e-3, lanes: isa.lanes(), maps: Vec::new(), layers: Vec::new() };
        b.maps.push(MapInfo { channels: input.c, stride_c: pad_channels(input.c), pad: 0 });
        let out = build(&mut b);
        src_finish(b.src);
        let net = Network::new(ModelSpec::new(Arch::V1), isa, b.maps, b.layers, out, Vec::new());
        let mut ws = Workspace::new(&net, input.h, input.w);
        // Garbage in the interiors must not leak: only borders are guaranteed zero.
        net.run_layers(&mut ws, &input.data);
        net.run_layers(&mut ws, &input.data);
        let g = ws.geoms[out];
        let c = net.maps[out].channels;
        let mut data = vec![0.0; c * g.h * g.w];
        for ch in 0..c {
            for y in 0..g.h {
                for x in 0..g.w {
                    data[(ch * g.h + y) * g.w + x] = ws.map(out)[g.offset(y, x) + ch];
                }
            }
        }
        Chw { c, h: g.h, w: g.w, data }
    }

    /// A conv-BN-act at `prefix` (`prefix.0`, `prefix.1`), as the plan describes one.
    fn conv_layer(prefix: &str, cin: usize, cout: usize, kernel: usize, stride: usize, depthwise: bool, activation: Option<Activation>) -> ConvLayer {
        ConvLayer {
            conv_key: format!("{prefix}.0"),
            norm_key: format!("{prefix}.1"),
            in_channels: cin,
            out_channels: cout,
            kernel,
            stride,
            groups: if depthwise { cin } else { 1 },
            activation,
        }
    }

    fn src_finish(src: &TensorSource) {
        src.finish().expect("every tensor used");
    }

    fn assert_close(ours: &Chw, want: &Chw, what: &str) {
        assert_eq!((ours.c, ours.h, ours.w), (want.c, want.h, want.w), "{what}: shape");
        for (i, (a, b)) in ours.data.iter().zip(&want.data).enumerate() {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{what}: element {i}: {a} vs {b}");
        }
    }

    fn random_input(rng: &mut Rng, c: usize, h: usize, w: usize) -> Chw {
        Chw { c, h, w, data: rng.vec(c * h * w, 2.0) }
    }

    #[test]
    fn pointwise_conv_matches_reference() {
        let mut rng = Rng(1);
        for isa in Isa::all_available() {
            for case in 0..60 {
                let (cin, cout) = (rng.range(1, 70), rng.range(1, 70));
                let (h, w) = (rng.range(1, 9), rng.range(1, 9));
                let act = rng.act();
                let residual = cin == cout || case % 4 == 0;
                let cout = if residual { cin } else { cout };
                let x = random_input(&mut rng, cin, h, w);
                let wts = rng.vec(cout * cin, 0.5);
                let bn = random_bn(&mut rng, cout);
                let mut want = reference::conv_bn_act(&x, &wts, cout, 1, 1, 1, (&bn.gamma, &bn.beta, &bn.mean, &bn.var, 1e-3), act);
                if residual {
                    want.data.iter_mut().zip(&x.data).for_each(|(y, r)| *y += r);
                }
                let mut t = HashMap::new();
                insert_conv_bn(&mut t, "pw", &wts, vec![cout, cin, 1, 1], &bn);
                let ours = run(isa, t, &x, |b| b.conv(&conv_layer("pw", cin, cout, 1, 1, false, act), 0, residual.then_some(0)).unwrap());
                assert_close(&ours, &want, &format!("{isa} pointwise {cin}->{cout} {h}x{w} {act:?} residual {residual}"));
            }
        }
    }

    #[test]
    fn depthwise_conv_matches_reference() {
        let mut rng = Rng(2);
        for isa in Isa::all_available() {
            for _ in 0..60 {
                let c = rng.range(1, 70);
                let kernel = [3, 5][rng.range(0, 1)];
                let stride = rng.range(1, 2);
                let (h, w) = (rng.range(1, 13), rng.range(1, 13));
                let act = rng.act();
                let x = random_input(&mut rng, c, h, w);
                let wts = rng.vec(c * kernel * kernel, 0.5);
                let bn = random_bn(&mut rng, c);
                let want = reference::conv_bn_act(&x, &wts, c, kernel, stride, c, (&bn.gamma, &bn.beta, &bn.mean, &bn.var, 1e-3), act);
                let mut t = HashMap::new();
                insert_conv_bn(&mut t, "dw", &wts, vec![c, 1, kernel, kernel], &bn);
                let ours = run(isa, t, &x, |b| b.conv(&conv_layer("dw", c, c, kernel, stride, true, act), 0, None).unwrap());
                assert_close(&ours, &want, &format!("{isa} depthwise c{c} k{kernel} s{stride} {h}x{w} {act:?}"));
            }
        }
    }

    #[test]
    fn stem_conv_matches_reference() {
        let mut rng = Rng(3);
        for isa in Isa::all_available() {
            for _ in 0..40 {
                let (cin, cout) = (rng.range(1, 4), rng.range(1, 40));
                let stride = rng.range(1, 2);
                let (h, w) = (rng.range(1, 15), rng.range(1, 15));
                let act = rng.act();
                let x = random_input(&mut rng, cin, h, w);
                let wts = rng.vec(cout * cin * 9, 0.5);
                let bn = random_bn(&mut rng, cout);
                let want = reference::conv_bn_act(&x, &wts, cout, 3, stride, 1, (&bn.gamma, &bn.beta, &bn.mean, &bn.var, 1e-3), act);
                let mut t = HashMap::new();
                insert_conv_bn(&mut t, "stem", &wts, vec![cout, cin, 3, 3], &bn);
                let ours = run(isa, t, &x, |b| b.conv(&conv_layer("stem", cin, cout, 3, stride, false, act), 0, None).unwrap());
                assert_close(&ours, &want, &format!("{isa} stem {cin}->{cout} s{stride} {h}x{w} {act:?}"));
            }
        }
    }

    #[test]
    fn squeeze_excite_matches_reference() {
        let mut rng = Rng(4);
        for isa in Isa::all_available() {
            for _ in 0..40 {
                let (c, s) = (rng.range(1, 70), rng.range(1, 24));
                let (h, w) = (rng.range(1, 9), rng.range(1, 9));
                let x = random_input(&mut rng, c, h, w);
                let (w1, b1, w2, b2) = (rng.vec(s * c, 0.5), rng.vec(s, 0.5), rng.vec(c * s, 0.5), rng.vec(c, 0.5));
                let want = reference::squeeze_excite(&x, &w1, &b1, &w2, &b2);
                let mut t = HashMap::new();
                t.insert("se.fc1.weight".into(), (vec![s, c, 1, 1], w1));
                t.insert("se.fc1.bias".into(), (vec![s], b1));
                t.insert("se.fc2.weight".into(), (vec![c, s, 1, 1], w2));
                t.insert("se.fc2.bias".into(), (vec![c], b2));
                let ours = run(isa, t, &x, |b| {
                    b.squeeze_excite(&SqueezeExcite { key: "se".into(), channels: c, squeeze_channels: s }, 0).unwrap();
                    0
                });
                assert_close(&ours, &want, &format!("{isa} squeeze-excite c{c} s{s} {h}x{w}"));
            }
        }
    }

    #[test]
    fn pooling_and_linear_head_match_reference() {
        let mut rng = Rng(5);
        for isa in Isa::all_available() {
            for _ in 0..30 {
                let (c, hidden, classes) = (rng.range(1, 80), rng.range(1, 80), rng.range(1, 40));
                let (h, w, batch) = (rng.range(1, 7), rng.range(1, 7), rng.range(1, 30));
                let act = rng.act();
                let (w1, b1, w2, b2) = (rng.vec(hidden * c, 0.5), rng.vec(hidden, 0.5), rng.vec(classes * hidden, 0.5), rng.vec(classes, 0.5));
                let mut t = HashMap::new();
                t.insert("h.0.weight".into(), (vec![hidden, c], w1.clone()));
                t.insert("h.0.bias".into(), (vec![hidden], b1.clone()));
                t.insert("h.1.weight".into(), (vec![classes, hidden], w2.clone()));
                t.insert("h.1.bias".into(), (vec![classes], b2.clone()));
                let mut src = TensorSource::new(t);
                let mut b = Builder { src: &mut src, eps: 1e-3, lanes: isa.lanes(), maps: Vec::new(), layers: Vec::new() };
                b.maps.push(MapInfo { channels: c, stride_c: pad_channels(c), pad: 0 });
                let linear = |key: &str, in_features, out_features| LinearLayer { key: key.into(), in_features, out_features };
                let head = vec![b.linear(&linear("h.0", c, hidden), act).unwrap(), b.linear(&linear("h.1", hidden, classes), None).unwrap()];
                let spec = ModelSpec::new(Arch::V1).with_num_classes(classes);
                let net = Network::new(spec, isa, b.maps, Vec::new(), 0, head);
                let mut ws = Workspace::new(&net, h, w);
                let stride = net.pooled_stride();
                let mut pooled = vec![0.0; batch * stride];
                let inputs: Vec<Chw> = (0..batch).map(|_| random_input(&mut rng, c, h, w)).collect();
                for (i, x) in inputs.iter().enumerate() {
                    net.features_into(&mut ws, &x.data, &mut pooled[i * stride..(i + 1) * stride]);
                }
                let mut logits = vec![0.0; batch * classes];
                net.head(&pooled, batch, &mut logits);
                for (i, x) in inputs.iter().enumerate() {
                    let want = reference::linear(&reference::linear(&reference::mean_pool(x), &w1, &b1, act), &w2, &b2, None);
                    for (j, (a, b)) in logits[i * classes..(i + 1) * classes].iter().zip(&want).enumerate() {
                        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{isa} head c{c} hidden{hidden} image {i} class {j}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
