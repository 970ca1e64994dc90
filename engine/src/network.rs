//! Lowering a trained model to the engine's layers (BatchNorm folded, weights packed once), and
//! running them on one image at a time.
//!
//! Tensor keys are torchvision's state-dict keys, so the lowering below reads like the models'
//! `features` / `classifier` Sequentials.

use std::collections::{BTreeSet, HashMap};

use crate::arch::{self, Activation, Arch, ModelSpec};
use crate::error::{EngineError, Result};
use crate::kernels::{self, MapGeom};
use crate::simd::{pad_channels, Isa};

/// Where the engine gets tensors from: torchvision's layout and keys, f32.
pub struct TensorSource {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    used: BTreeSet<String>,
    /// When set, every requested tensor is made up (for benchmarks): a seed.
    random: Option<u64>,
}

impl TensorSource {
    pub fn new(tensors: HashMap<String, (Vec<usize>, Vec<f32>)>) -> Self {
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

/// A packed GEMM operand: a 1x1 conv or a Linear.
#[derive(Debug)]
struct Dense {
    k: usize,
    n_pad: usize,
    packed: Vec<f32>,
    bias: Vec<f32>,
    act: u8,
}

impl Dense {
    /// `weights` in torch's [n, k] layout.
    fn new(weights: &[f32], bias: &[f32], n: usize, k: usize, act: u8, lanes: usize) -> Self {
        let (packed, n_pad) = kernels::pack_gemm_weights(weights, n, k, lanes);
        Self { k, n_pad, packed, bias: padded(bias, n_pad), act }
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

    /// torchvision's `Conv2dNormActivation` at `prefix` (`prefix.0` conv, `prefix.1` BN).
    fn conv_norm_act(&mut self, prefix: &str, input: usize, cout: usize, kernel: usize, stride: usize, depthwise: bool, act: Option<Activation>) -> Result<usize> {
        self.conv(&format!("{prefix}.0"), &format!("{prefix}.1"), input, cout, kernel, stride, depthwise, act, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(&mut self, conv: &str, bn: &str, input: usize, cout: usize, kernel: usize, stride: usize, depthwise: bool, act: Option<Activation>, residual: Option<usize>) -> Result<usize> {
        let cin = self.maps[input].channels;
        let act = act_code(act);
        if depthwise {
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
    fn squeeze_excite(&mut self, prefix: &str, map: usize, squeeze: usize) -> Result<()> {
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

    fn linear(&mut self, prefix: &str, n: usize, k: usize, act: Option<Activation>) -> Result<Dense> {
        let w = self.src.take(&format!("{prefix}.weight"), &[n, k])?;
        let b = self.src.take(&format!("{prefix}.bias"), &[n])?;
        Ok(Dense::new(&w, &b, n, k, act_code(act), self.lanes))
    }
}

impl Network {
    pub fn build(spec: &ModelSpec, src: &mut TensorSource, isa: Isa) -> Result<Network> {
        if spec.num_classes == 0 {
            return Err(EngineError::Spec("num_classes must be at least 1".into()));
        }
        if !(spec.width_mult.is_finite() && spec.width_mult > 0.0 && spec.width_mult <= 8.0) {
            return Err(EngineError::Spec(format!("width_mult must be in (0, 8], got {}", spec.width_mult)));
        }
        let mut b = Builder { src, eps: spec.norm_eps, lanes: isa.lanes(), maps: Vec::new(), layers: Vec::new() };
        b.maps.push(MapInfo { channels: 3, stride_c: 3, pad: 0 });
        let width = spec.width_mult;
        let (features, head) = match spec.arch {
            Arch::V1 => {
                let act = Some(spec.v1_activation);
                let mut x = b.conv_norm_act("features.0", 0, arch::scale_channels(arch::V1_STEM_CHANNELS, width), 3, 2, false, act)?;
                for (i, &(out, stride)) in arch::V1_BLOCKS.iter().enumerate() {
                    let c = b.maps[x].channels;
                    x = b.conv_norm_act(&format!("features.{}.0", i + 1), x, c, 3, stride, true, act)?;
                    x = b.conv_norm_act(&format!("features.{}.1", i + 1), x, arch::scale_channels(out, width), 1, 1, false, act)?;
                }
                let c = b.maps[x].channels;
                (x, vec![b.linear("classifier.1", spec.num_classes, c, None)?])
            }
            Arch::V2 => {
                let act = Some(Activation::Relu6);
                let mut x = b.conv_norm_act("features.0", 0, arch::scale_channels(arch::V2_STEM_CHANNELS, width), 3, 2, false, act)?;
                let mut index = 1;
                for [t, c, n, s] in arch::V2_INVERTED_RESIDUAL_SETTING {
                    let out = arch::scale_channels(c, width);
                    for i in 0..n {
                        let stride = if i == 0 { s } else { 1 };
                        let input = x;
                        let inp = b.maps[input].channels;
                        let p = format!("features.{index}.conv");
                        let mut j = 0;
                        if t != 1 {
                            x = b.conv_norm_act(&format!("{p}.0"), x, inp * t, 1, 1, false, act)?;
                            j += 1;
                        }
                        x = b.conv_norm_act(&format!("{p}.{j}"), x, inp * t, 3, stride, true, act)?;
                        let residual = (stride == 1 && inp == out).then_some(input);
                        x = b.conv(&format!("{p}.{}", j + 1), &format!("{p}.{}", j + 2), x, out, 1, 1, false, None, residual)?;
                        index += 1;
                    }
                }
                let last = arch::make_divisible(arch::V2_LAST_CHANNELS as f64 * width.max(1.0), 8);
                x = b.conv_norm_act(&format!("features.{index}"), x, last, 1, 1, false, act)?;
                (x, vec![b.linear("classifier.1", spec.num_classes, last, None)?])
            }
            Arch::V3Large | Arch::V3Small => {
                let (table, last): (&[arch::BneckConfig], usize) = if spec.arch == Arch::V3Small {
                    (&arch::V3_SMALL_BNECK, arch::V3_SMALL_LAST_CHANNELS)
                } else {
                    (&arch::V3_LARGE_BNECK, arch::V3_LARGE_LAST_CHANNELS)
                };
                let rows: Vec<_> = table.iter().map(|r| r.scaled(width)).collect();
                let hs = Some(Activation::Hardswish);
                let mut x = b.conv_norm_act("features.0", 0, rows[0].input_channels, 3, 2, false, hs)?;
                for (i, row) in rows.iter().enumerate() {
                    let input = x;
                    let p = format!("features.{}.block", i + 1);
                    let act = Some(row.activation);
                    let mut j = 0;
                    if row.expanded_channels != row.input_channels {
                        x = b.conv_norm_act(&format!("{p}.0"), x, row.expanded_channels, 1, 1, false, act)?;
                        j += 1;
                    }
                    x = b.conv_norm_act(&format!("{p}.{j}"), x, row.expanded_channels, row.kernel, row.stride, true, act)?;
                    j += 1;
                    if row.use_se {
                        b.squeeze_excite(&format!("{p}.{j}"), x, row.squeeze_channels())?;
                        j += 1;
                    }
                    let residual = (row.stride == 1 && row.input_channels == row.out_channels).then_some(input);
                    x = b.conv(&format!("{p}.{j}.0"), &format!("{p}.{j}.1"), x, row.out_channels, 1, 1, false, None, residual)?;
                }
                let last_in = b.maps[x].channels;
                x = b.conv_norm_act(&format!("features.{}", rows.len() + 1), x, 6 * last_in, 1, 1, false, hs)?;
                let hidden = arch::scale_channels(last, width);
                let head = vec![
                    b.linear("classifier.0", hidden, 6 * last_in, hs)?,
                    b.linear("classifier.3", spec.num_classes, hidden, None)?,
                ];
                (x, head)
            }
        };
        b.src.finish()?;
        Ok(Network { spec: *spec, isa, maps: b.maps, layers: b.layers, features, head })
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

/// Buffers for one thread: every map of one image, reused from run to run (borders stay zero).
pub struct Workspace {
    size: (usize, usize),
    geoms: Vec<MapGeom>,
    maps: Vec<Vec<f32>>,
    scratch: Vec<f32>,
}

impl Workspace {
    pub fn new(net: &Network, h: usize, w: usize) -> Self {
        let geoms = net.geometry(h, w);
        let maps = geoms.iter().map(|g| vec![0.0; g.len()]).collect();
        let widest = net.maps.iter().map(|m| m.stride_c).max().unwrap_or(0);
        Self { size: (h, w), geoms, maps, scratch: vec![0.0; 2 * widest + 64] }
    }

    pub fn fits(&self, h: usize, w: usize) -> bool {
        self.size == (h, w)
    }
}

impl Network {
    /// Runs the features of one NCHW image (`3·h·w` values) and writes the pooled feature vector
    /// (padded channels) into `pooled`.
    pub fn features_into(&self, ws: &mut Workspace, image: &[f32], pooled: &mut [f32]) {
        self.run_layers(ws, image);
        let g = ws.geoms[self.features];
        assert!(pooled.len() >= g.c);
        kernels::mean_pool(self.isa, ws.maps[self.features].as_ptr(), g, pooled.as_mut_ptr());
    }

    /// Every layer on one NCHW image; the maps stay in `ws`.
    fn run_layers(&self, ws: &mut Workspace, image: &[f32]) {
        let isa = self.isa;
        let (h, w) = ws.size;
        let g0 = ws.geoms[0];
        {
            let buf = &mut ws.maps[0];
            let plane = h * w;
            for y in 0..h {
                for x in 0..w {
                    let o = g0.offset(y, x);
                    for c in 0..self.maps[0].channels {
                        buf[o + c] = image[c * plane + y * w + x];
                    }
                }
            }
        }
        for layer in &self.layers {
            match layer {
                Layer::Direct { input, output, cin, kernel, stride, weights, bias, act } => {
                    let (inp, out) = pair(&mut ws.maps, *input, *output);
                    let d = kernels::DirectConv {
                        input: inp.as_ptr(),
                        in_geom: ws.geoms[*input],
                        cin: *cin,
                        kernel: *kernel,
                        stride: *stride,
                        weights: weights.as_ptr(),
                        bias: bias.as_ptr(),
                        act: *act,
                        output: out.as_mut_ptr(),
                        out_geom: ws.geoms[*output],
                    };
                    kernels::direct_conv(isa, &d, 0, ws.geoms[*output].h);
                }
                Layer::Depthwise { input, output, kernel, stride, weights, bias, act } => {
                    let (inp, out) = pair(&mut ws.maps, *input, *output);
                    let d = kernels::Depthwise {
                        input: inp.as_ptr(),
                        in_geom: ws.geoms[*input],
                        kernel: *kernel,
                        stride: *stride,
                        weights: weights.as_ptr(),
                        bias: bias.as_ptr(),
                        act: *act,
                        output: out.as_mut_ptr(),
                        out_geom: ws.geoms[*output],
                    };
                    kernels::depthwise(isa, &d, 0, ws.geoms[*output].h);
                }
                Layer::Pointwise { input, output, residual, dense } => {
                    let og = ws.geoms[*output];
                    let res = residual.map(|r| (ws.maps[r].as_ptr(), ws.geoms[r]));
                    let (inp, out) = pair(&mut ws.maps, *input, *output);
                    let g = kernels::Gemm {
                        a: inp.as_ptr(),
                        a_geom: ws.geoms[*input],
                        k: dense.k,
                        b: dense.packed.as_ptr(),
                        n_pad: dense.n_pad,
                        bias: dense.bias.as_ptr(),
                        act: dense.act,
                        c: out.as_mut_ptr(),
                        c_geom: og,
                        res: res.map_or(std::ptr::null(), |r| r.0),
                        res_geom: res.map_or(og, |r| r.1),
                    };
                    kernels::gemm(isa, &g, 0, og.h * og.w);
                }
                Layer::SqueezeExcite { map, channels, squeeze, squeeze_pad, fc1, b1, fc2, b2 } => {
                    let se = kernels::SqueezeExcite {
                        x: ws.maps[*map].as_mut_ptr(),
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
                    kernels::squeeze_excite(isa, &se);
                }
            }
        }
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
            let g = kernels::Gemm {
                a: x.as_ptr(),
                a_geom,
                k: dense.k,
                b: dense.packed.as_ptr(),
                n_pad: dense.n_pad,
                bias: dense.bias.as_ptr(),
                act: dense.act,
                c: y.as_mut_ptr(),
                c_geom,
                res: std::ptr::null(),
                res_geom: c_geom,
            };
            kernels::gemm(self.isa, &g, 0, m);
            x = y;
            stride = dense.n_pad;
        }
        let classes = self.spec.num_classes;
        for r in 0..m {
            logits[r * classes..(r + 1) * classes].copy_from_slice(&x[r * stride..r * stride + classes]);
        }
    }
}

/// Disjoint borrows of two maps.
fn pair(maps: &mut [Vec<f32>], input: usize, output: usize) -> (&[f32], &mut [f32]) {
    assert!(input < output, "layers read earlier maps");
    let (lo, hi) = maps.split_at_mut(output);
    (&lo[input], &mut hi[0])
}

/// Property tests: random shapes and weights per layer type, every ISA this CPU has, against
/// [`crate::reference`].
#[cfg(test)]
mod tests {
    use super::*;
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

    fn insert_conv_bn(t: &mut HashMap<String, (Vec<usize>, Vec<f32>)>, p: &str, w: &[f32], shape: Vec<usize>, bn: &Bn) {
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
        tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
        input: &Chw,
        build: impl FnOnce(&mut Builder) -> usize,
    ) -> Chw {
        let mut src = TensorSource::new(tensors);
        let mut b = Builder { src: &mut src, eps: 1e-3, lanes: isa.lanes(), maps: Vec::new(), layers: Vec::new() };
        b.maps.push(MapInfo { channels: input.c, stride_c: pad_channels(input.c), pad: 0 });
        let out = build(&mut b);
        src_finish(b.src);
        let net = Network { spec: ModelSpec::new(Arch::V1), isa, maps: b.maps, layers: b.layers, features: out, head: Vec::new() };
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
                    data[(ch * g.h + y) * g.w + x] = ws.maps[out][g.offset(y, x) + ch];
                }
            }
        }
        Chw { c, h: g.h, w: g.w, data }
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
                let ours = run(isa, t, &x, |b| b.conv("pw.0", "pw.1", 0, cout, 1, 1, false, act, residual.then_some(0)).unwrap());
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
                let ours = run(isa, t, &x, |b| b.conv_norm_act("dw", 0, c, kernel, stride, true, act).unwrap());
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
                let ours = run(isa, t, &x, |b| b.conv_norm_act("stem", 0, cout, 3, stride, false, act).unwrap());
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
                    b.squeeze_excite("se", 0, s).unwrap();
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
                let head = vec![b.linear("h.0", hidden, c, act).unwrap(), b.linear("h.1", classes, hidden, None).unwrap()];
                let spec = ModelSpec::new(Arch::V1).with_num_classes(classes);
                let net = Network { spec, isa, maps: b.maps, layers: Vec::new(), features: 0, head };
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
