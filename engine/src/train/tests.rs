//! Whole-network tests: the trainer against a plain f64 NCHW forward/backward of the same plan
//! (written here, loop by loop), a finite-difference check of that reference, determinism
//! across thread counts, and the running statistics.

#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;

use super::activation::{act_code, act_f64, act_grad_f64, ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_NONE, ACT_RELU};
use super::rng::Rng;
use super::{TrainConfig, Trainer};
use crate::arch::{Arch, BlockLayer, ConvLayer, HeadLayer, ModelSpec, Plan, Stage};
use crate::simd::Isa;

/// An NCHW tensor.
#[derive(Clone, Debug)]
struct T {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    d: Vec<f64>,
}

impl T {
    fn zeros(n: usize, c: usize, h: usize, w: usize) -> T {
        T { n, c, h, w, d: vec![0.0; n * c * h * w] }
    }
    fn idx(&self, n: usize, c: usize, y: usize, x: usize) -> usize {
        ((n * self.c + c) * self.h + y) * self.w + x
    }
    fn plane(&self) -> usize {
        self.h * self.w
    }
}

type Params = HashMap<String, Vec<f64>>;

fn conv(x: &T, w: &[f64], l: &ConvLayer) -> T {
    let (k, s, p, g) = (l.kernel, l.stride, l.padding(), l.groups);
    let (oh, ow) = (l.output_size(x.h), l.output_size(x.w));
    let (cin_g, cout_g) = (x.c / g, l.out_channels / g);
    let mut z = T::zeros(x.n, l.out_channels, oh, ow);
    for n in 0..x.n {
        for o in 0..l.out_channels {
            let grp = o / cout_g;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for i in 0..cin_g {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                                    continue;
                                }
                                acc += w[((o * cin_g + i) * k + ky) * k + kx]
                                    * x.d[x.idx(n, grp * cin_g + i, iy as usize, ix as usize)];
                            }
                        }
                    }
                    let zi = z.idx(n, o, oy, ox);
                    z.d[zi] = acc;
                }
            }
        }
    }
    z
}

/// (dx, dw) of [`conv`].
fn conv_backward(x: &T, w: &[f64], l: &ConvLayer, dz: &T) -> (T, Vec<f64>) {
    let (k, s, p, g) = (l.kernel, l.stride, l.padding(), l.groups);
    let (cin_g, cout_g) = (x.c / g, l.out_channels / g);
    let mut dx = T::zeros(x.n, x.c, x.h, x.w);
    let mut dw = vec![0.0; w.len()];
    for n in 0..x.n {
        for o in 0..l.out_channels {
            let grp = o / cout_g;
            for oy in 0..dz.h {
                for ox in 0..dz.w {
                    let d = dz.d[dz.idx(n, o, oy, ox)];
                    for i in 0..cin_g {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                                    continue;
                                }
                                let wi = ((o * cin_g + i) * k + ky) * k + kx;
                                let xi = x.idx(n, grp * cin_g + i, iy as usize, ix as usize);
                                dw[wi] += d * x.d[xi];
                                dx.d[xi] += d * w[wi];
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw)
}

/// What the reference forward keeps per layer.
enum Rec {
    Conv {
        layer: ConvLayer,
        x: T,
        xhat: T,
        rstd: Vec<f64>,
        pre: T,
    },
    Se {
        key: String,
        u: T,
        pooled: Vec<f64>,
        hpre: Vec<f64>,
        hidden: Vec<f64>,
        gpre: Vec<f64>,
        gate: Vec<f64>,
        s: usize,
    },
}

struct RefOut {
    loss: f64,
    logits: Vec<f64>,
    grads: Params,
    running: Params,
    /// The smallest distance of a pre-activation from a kink of its activation: f32 and f64
    /// may take different sides of a kink closer than the f32 rounding of the value.
    kink: f64,
}

/// The plan in f64, NCHW: forward in train mode, loss, backward.
fn reference(
    plan: &Plan,
    p: &Params,
    images: &[f32],
    n: usize,
    hw: (usize, usize),
    labels: &[usize],
    masks: &[&[f32]],
    cfg: &TrainConfig,
) -> RefOut {
    let eps = plan.spec.norm_eps;
    let mut x = T { n, c: 3, h: hw.0, w: hw.1, d: images.iter().map(|&v| v as f64).collect() };
    let mut running = Params::new();
    let mut kink = f64::INFINITY;
    let mut stages: Vec<(Vec<Rec>, bool)> = Vec::new();
    for stage in &plan.features {
        let (layers, residual) = match stage {
            Stage::Conv(c) => (vec![BlockLayer::Conv(c.clone())], false),
            Stage::Block(b) => (b.layers.clone(), b.residual),
        };
        let block_in = x.clone();
        let mut recs = Vec::new();
        for layer in &layers {
            match layer {
                BlockLayer::Conv(l) => {
                    let z = conv(&x, &p[&format!("{}.weight", l.conv_key)], l);
                    let c = l.out_channels;
                    let m = (z.n * z.plane()) as f64;
                    let gamma = &p[&format!("{}.weight", l.norm_key)];
                    let beta = &p[&format!("{}.bias", l.norm_key)];
                    let mut xhat = z.clone();
                    let mut pre = z.clone();
                    let mut y = z.clone();
                    let mut rstd = vec![0.0; c];
                    let mut rm = p[&format!("{}.running_mean", l.norm_key)].clone();
                    let mut rv = p[&format!("{}.running_var", l.norm_key)].clone();
                    let act = act_code(l.activation);
                    for ch in 0..c {
                        let zp = z.plane();
                        let vals: Vec<usize> =
                            (0..z.n).flat_map(|b| (0..zp).map(move |q| (b * c + ch) * zp + q)).collect();
                        let (mean, var) = if cfg.frozen_bn {
                            (rm[ch], rv[ch]) // eval-mode BatchNorm: running statistics, unchanged
                        } else {
                            let mean = vals.iter().map(|&i| z.d[i]).sum::<f64>() / m;
                            let var = vals.iter().map(|&i| (z.d[i] - mean).powi(2)).sum::<f64>() / m;
                            rm[ch] = (1.0 - cfg.bn_momentum) * rm[ch] + cfg.bn_momentum * mean;
                            rv[ch] = (1.0 - cfg.bn_momentum) * rv[ch] + cfg.bn_momentum * var * m / (m - 1.0);
                            (mean, var)
                        };
                        rstd[ch] = 1.0 / (var + eps).sqrt();
                        for &i in &vals {
                            xhat.d[i] = (z.d[i] - mean) * rstd[ch];
                            pre.d[i] = gamma[ch] * xhat.d[i] + beta[ch];
                            y.d[i] = act_f64(pre.d[i], act);
                        }
                    }
                    for &v in &pre.d {
                        kink = kink.min(kink_distance(v, act));
                    }
                    running.insert(format!("{}.running_mean", l.norm_key), rm);
                    running.insert(format!("{}.running_var", l.norm_key), rv);
                    recs.push(Rec::Conv { layer: l.clone(), x: x.clone(), xhat, rstd, pre });
                    x = y;
                }
                BlockLayer::SqueezeExcite(se) => {
                    let (c, s) = (se.channels, se.squeeze_channels);
                    let w1 = &p[&format!("{}.fc1.weight", se.key)];
                    let b1 = &p[&format!("{}.fc1.bias", se.key)];
                    let w2 = &p[&format!("{}.fc2.weight", se.key)];
                    let b2 = &p[&format!("{}.fc2.bias", se.key)];
                    let plane = x.plane();
                    let mut pooled = vec![0.0; n * c];
                    for b in 0..n {
                        for ch in 0..c {
                            pooled[b * c + ch] =
                                (0..plane).map(|q| x.d[(b * c + ch) * plane + q]).sum::<f64>() / plane as f64;
                        }
                    }
                    let mut hpre = vec![0.0; n * s];
                    let mut hidden = vec![0.0; n * s];
                    for b in 0..n {
                        for j in 0..s {
                            hpre[b * s + j] = b1[j] + (0..c).map(|ch| w1[j * c + ch] * pooled[b * c + ch]).sum::<f64>();
                            hidden[b * s + j] = act_f64(hpre[b * s + j], ACT_RELU);
                            kink = kink.min(kink_distance(hpre[b * s + j], ACT_RELU));
                        }
                    }
                    let mut gpre = vec![0.0; n * c];
                    let mut gate = vec![0.0; n * c];
                    for b in 0..n {
                        for ch in 0..c {
                            gpre[b * c + ch] = b2[ch] + (0..s).map(|j| w2[ch * s + j] * hidden[b * s + j]).sum::<f64>();
                            gate[b * c + ch] = act_f64(gpre[b * c + ch], ACT_HARDSIGMOID);
                            kink = kink.min(kink_distance(gpre[b * c + ch], ACT_HARDSIGMOID));
                        }
                    }
                    let u = x.clone();
                    for b in 0..n {
                        for ch in 0..c {
                            for q in 0..plane {
                                x.d[(b * c + ch) * plane + q] *= gate[b * c + ch];
                            }
                        }
                    }
                    recs.push(Rec::Se { key: se.key.clone(), u, pooled, hpre, hidden, gpre, gate, s });
                }
            }
        }
        if residual {
            for (v, r) in x.d.iter_mut().zip(&block_in.d) {
                *v += r;
            }
        }
        stages.push((recs, residual));
    }
    // Pool and classifier.
    let f = x.c;
    let plane = x.plane();
    let mut feats: Vec<Vec<f64>> =
        vec![(0..n * f).map(|i| (0..plane).map(|q| x.d[i * plane + q]).sum::<f64>() / plane as f64).collect()];
    let mut widths = vec![f];
    let mut mask_i = 0;
    let mut layer_masks = Vec::new();
    for layer in &plan.classifier {
        let inp = feats.last().unwrap().clone();
        let wi = *widths.last().unwrap();
        match layer {
            HeadLayer::Linear(l) => {
                let w = &p[&format!("{}.weight", l.key)];
                let b = &p[&format!("{}.bias", l.key)];
                let out: Vec<f64> = (0..n * l.out_features)
                    .map(|i| {
                        let (r, o) = (i / l.out_features, i % l.out_features);
                        b[o] + (0..wi).map(|k| w[o * wi + k] * inp[r * wi + k]).sum::<f64>()
                    })
                    .collect();
                feats.push(out);
                widths.push(l.out_features);
                layer_masks.push(None);
            }
            HeadLayer::Activation { activation, .. } => {
                let code = act_code(Some(*activation));
                feats.push(inp.iter().map(|&v| act_f64(v, code)).collect());
                kink = inp.iter().fold(kink, |k, &v| k.min(kink_distance(v, code)));
                widths.push(wi);
                layer_masks.push(None);
            }
            HeadLayer::Dropout { .. } => {
                // The trainer's masks are [n][padded width]; none: dropout off.
                let m: Vec<f64> = match masks.get(mask_i) {
                    Some(mask) => {
                        let wp = mask.len() / n;
                        (0..n * wi).map(|i| mask[(i / wi) * wp + i % wi] as f64).collect()
                    }
                    None => vec![1.0; n * wi],
                };
                mask_i += 1;
                feats.push(inp.iter().zip(&m).map(|(v, m)| v * m).collect());
                widths.push(wi);
                layer_masks.push(Some(m));
            }
        }
    }
    let classes = plan.spec.num_classes;
    let logits = feats.last().unwrap().clone();
    let ls = cfg.label_smoothing;
    let mut loss = 0.0;
    let mut g = vec![0.0; n * classes];
    for r in 0..n {
        let row = &logits[r * classes..(r + 1) * classes];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        let logp: Vec<f64> = row.iter().map(|v| v - lse).collect();
        loss += (1.0 - ls) * -logp[labels[r]] + ls * -logp.iter().sum::<f64>() / classes as f64;
        for k in 0..classes {
            let target = ls / classes as f64 + if k == labels[r] { 1.0 - ls } else { 0.0 };
            g[r * classes + k] = (logp[k].exp() - target) / n as f64;
        }
    }
    loss /= n as f64;
    // Backward.
    let mut grads = Params::new();
    for (li, layer) in plan.classifier.iter().enumerate().rev() {
        let inp = &feats[li];
        let (wi, wo) = (widths[li], widths[li + 1]);
        g = match layer {
            HeadLayer::Linear(l) => {
                let w = &p[&format!("{}.weight", l.key)];
                let mut dw = vec![0.0; wo * wi];
                let mut db = vec![0.0; wo];
                let mut dx = vec![0.0; n * wi];
                for r in 0..n {
                    for o in 0..wo {
                        let d = g[r * wo + o];
                        db[o] += d;
                        for k in 0..wi {
                            dw[o * wi + k] += d * inp[r * wi + k];
                            dx[r * wi + k] += d * w[o * wi + k];
                        }
                    }
                }
                grads.insert(format!("{}.weight", l.key), dw);
                grads.insert(format!("{}.bias", l.key), db);
                dx
            }
            HeadLayer::Activation { activation, .. } => {
                let code = act_code(Some(*activation));
                g.iter().zip(inp).map(|(d, x)| d * act_grad_f64(*x, code)).collect()
            }
            HeadLayer::Dropout { .. } => g.iter().zip(layer_masks[li].as_ref().unwrap()).map(|(d, m)| d * m).collect(),
        };
    }
    let mut dx = T::zeros(n, f, x.h, x.w);
    for i in 0..n * f {
        for q in 0..plane {
            dx.d[i * plane + q] = g[i] / plane as f64;
        }
    }
    for (recs, residual) in stages.iter().rev() {
        let d_out = dx.clone();
        for rec in recs.iter().rev() {
            match rec {
                Rec::Conv { layer: l, x, xhat, rstd, pre } => {
                    let c = l.out_channels;
                    let plane = xhat.plane();
                    let m = (n * plane) as f64;
                    let gamma = &p[&format!("{}.weight", l.norm_key)];
                    let act = act_code(l.activation);
                    let mut dz = dx.clone();
                    let mut dgamma = vec![0.0; c];
                    let mut dbeta = vec![0.0; c];
                    for ch in 0..c {
                        let idx: Vec<usize> =
                            (0..n).flat_map(|b| (0..plane).map(move |q| (b * c + ch) * plane + q)).collect();
                        let gv: Vec<f64> = idx.iter().map(|&i| dx.d[i] * act_grad_f64(pre.d[i], act)).collect();
                        let db: f64 = gv.iter().sum();
                        let dg: f64 = idx.iter().zip(&gv).map(|(&i, g)| g * xhat.d[i]).sum();
                        dgamma[ch] = dg;
                        dbeta[ch] = db;
                        for (&i, gi) in idx.iter().zip(&gv) {
                            // Frozen statistics are constants: only the affine map remains.
                            let centred = if cfg.frozen_bn { *gi } else { gi - db / m - xhat.d[i] * dg / m };
                            dz.d[i] = gamma[ch] * rstd[ch] * centred;
                        }
                    }
                    grads.insert(format!("{}.weight", l.norm_key), dgamma);
                    grads.insert(format!("{}.bias", l.norm_key), dbeta);
                    let (dxi, dw) = conv_backward(x, &p[&format!("{}.weight", l.conv_key)], l, &dz);
                    grads.insert(format!("{}.weight", l.conv_key), dw);
                    dx = dxi;
                }
                Rec::Se { key, u, pooled, hpre, hidden, gpre, gate, s } => {
                    let (c, s) = (u.c, *s);
                    let plane = u.plane();
                    let w1 = &p[&format!("{key}.fc1.weight")];
                    let w2 = &p[&format!("{key}.fc2.weight")];
                    let mut du = dx.clone();
                    let mut dgpre = vec![0.0; n * c];
                    for b in 0..n {
                        for ch in 0..c {
                            let mut dg = 0.0;
                            for q in 0..plane {
                                let i = (b * c + ch) * plane + q;
                                dg += dx.d[i] * u.d[i];
                                du.d[i] = dx.d[i] * gate[b * c + ch];
                            }
                            dgpre[b * c + ch] = dg * act_grad_f64(gpre[b * c + ch], ACT_HARDSIGMOID);
                        }
                    }
                    let mut dw2 = vec![0.0; c * s];
                    let mut db2 = vec![0.0; c];
                    let mut dh = vec![0.0; n * s];
                    for b in 0..n {
                        for ch in 0..c {
                            let d = dgpre[b * c + ch];
                            db2[ch] += d;
                            for j in 0..s {
                                dw2[ch * s + j] += d * hidden[b * s + j];
                                dh[b * s + j] += d * w2[ch * s + j];
                            }
                        }
                    }
                    let mut dw1 = vec![0.0; s * c];
                    let mut db1 = vec![0.0; s];
                    let mut dp = vec![0.0; n * c];
                    for b in 0..n {
                        for j in 0..s {
                            let d = dh[b * s + j] * act_grad_f64(hpre[b * s + j], ACT_RELU);
                            db1[j] += d;
                            for ch in 0..c {
                                dw1[j * c + ch] += d * pooled[b * c + ch];
                                dp[b * c + ch] += d * w1[j * c + ch];
                            }
                        }
                    }
                    for b in 0..n {
                        for ch in 0..c {
                            for q in 0..plane {
                                du.d[(b * c + ch) * plane + q] += dp[b * c + ch] / plane as f64;
                            }
                        }
                    }
                    grads.insert(format!("{key}.fc1.weight"), dw1);
                    grads.insert(format!("{key}.fc1.bias"), db1);
                    grads.insert(format!("{key}.fc2.weight"), dw2);
                    grads.insert(format!("{key}.fc2.bias"), db2);
                    dx = du;
                }
            }
        }
        if *residual {
            for (d, o) in dx.d.iter_mut().zip(&d_out.d) {
                *d += o;
            }
        }
    }
    RefOut { loss, logits, grads, running, kink }
}

/// How far `x` is from a point where the activation's derivative jumps.
fn kink_distance(x: f64, act: u8) -> f64 {
    let kinks: &[f64] = match act {
        ACT_NONE => &[],
        ACT_RELU => &[0.0],
        ACT_HARDSWISH | ACT_HARDSIGMOID => &[-3.0, 3.0],
        _ => &[0.0, 6.0],
    };
    kinks.iter().fold(f64::INFINITY, |m, k| m.min((x - k).abs()))
}

fn params_f64(t: &Trainer) -> Params {
    t.params().map(|(k, _, v)| (k.to_string(), v.iter().map(|&x| x as f64).collect())).collect()
}

fn random_batch(seed: u64, n: usize, h: usize, w: usize, classes: usize) -> (Vec<f32>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let images = (0..n * 3 * h * w).map(|_| rng.normal()).collect();
    let labels = (0..n).map(|_| (rng.next_u64() % classes as u64) as usize).collect();
    (images, labels)
}

/// Randomises BatchNorm affine parameters and running statistics (so they are exercised), and
/// biases.
///
/// Conv weights are redrawn with fan-in scaling (variance-preserving), so that every map
/// stays of order one: torchvision's fan-out initialisation makes the depthwise outputs tiny,
/// BatchNorm then scales them up by 50-200x, and with them the f32 rounding of everything
/// before, which puts pre-activations within f32 noise of a kink (where f32 and f64 may take
/// different sides, a legitimate difference the comparison could not tell from a bug).
fn perturb(t: &mut Trainer, seed: u64) {
    let mut rng = Rng::new(seed);
    let convs: Vec<(String, Vec<usize>)> =
        t.params().filter(|(_, s, _)| s.len() == 4).map(|(k, s, _)| (k.to_string(), s.to_vec())).collect();
    for (key, shape) in convs {
        let fan_in = (shape[1] * shape[2] * shape[3]) as f32;
        let data: Vec<f32> =
            (0..shape.iter().product::<usize>()).map(|_| rng.normal() * (1.0 / fan_in).sqrt()).collect();
        t.load(&key, &data).unwrap();
    }
    let keys: Vec<(String, usize)> =
        t.params().filter(|(_, s, _)| s.len() == 1).map(|(k, _, v)| (k.to_string(), v.len())).collect();
    for (key, len) in keys {
        let data: Vec<f32> = (0..len)
            .map(|_| {
                if key.ends_with("running_var") || key.ends_with(".weight") {
                    0.5 + rng.uniform()
                } else {
                    0.2 * rng.normal()
                }
            })
            .collect();
        t.load(&key, &data).unwrap();
    }
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    if scale == 0.0 {
        err
    } else {
        err / scale
    }
}

fn check_against_reference(
    arch: Arch,
    width: f64,
    size: (usize, usize),
    n: usize,
    isa: Isa,
    dropout: f32,
    smoothing: f64,
    frozen_bn: bool,
) {
    let spec = ModelSpec::new(arch).with_width_mult(width).with_num_classes(10);
    let cfg = TrainConfig::new(arch, n, size.0, size.1)
        .with_isa(isa)
        .with_threads(2)
        .with_dropout(dropout)
        .with_label_smoothing(smoothing)
        .with_frozen_bn(frozen_bn)
        .with_seed(3);
    let mut t = Trainer::new(&spec, cfg.clone()).unwrap();
    perturb(&mut t, 9);
    let before = params_f64(&t);
    let (images, labels) = random_batch(4, n, size.0, size.1, 10);
    let loss = t.step(&images, &labels).unwrap();
    let masks: Vec<Vec<f32>> = t.dropout_masks().into_iter().map(|m| m.to_vec()).collect();
    let mask_refs: Vec<&[f32]> = masks.iter().map(|m| m.as_slice()).collect();
    let r = reference(t.plan(), &before, &images, n, size, &labels, &mask_refs, &cfg);
    let what = format!("{arch} x{width} {}x{} n{n} {isa}{}", size.0, size.1, if frozen_bn { " frozen BN" } else { "" });
    assert!((loss as f64 - r.loss).abs() <= 1e-4 * r.loss.abs().max(1.0), "{what}: loss {loss} vs {}", r.loss);
    assert!(rel_err(t.logits(), &r.logits) <= 1e-4, "{what}: logits");
    let mut checked = 0;
    // Some gradients are exactly zero in exact arithmetic (a BatchNorm bias whose output only
    // feeds another conv + BatchNorm, which removes any per-channel shift): their relative
    // error is measured against a floor of 1e-5 times the largest gradient of the model.
    let global = r.grads.values().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut errors = Vec::new();
    for (key, _, g) in t.grads() {
        let want = r.grads.get(key).unwrap_or_else(|| panic!("{what}: no reference gradient for {key}"));
        let max_abs = |v: &[f64]| v.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        // A BatchNorm bias: against its layer's scale (its weight's gradient shares `g`).
        let layer_scale = key
            .strip_suffix(".bias")
            .and_then(|p| r.grads.get(&format!("{p}.weight")))
            .filter(|w| w.len() == want.len())
            .map_or(0.0, |w| max_abs(w));
        let scale = max_abs(want).max(layer_scale).max(1e-5 * global);
        let err = g.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
        errors.push((err / scale, key.to_string()));
        checked += 1;
    }
    errors.sort_by(|a, b| b.0.total_cmp(&a.0));
    let worst = errors[0].clone();
    assert!(worst.0 <= 1e-4, "{what}: gradient of {}: relative error {:e}", worst.1, worst.0);
    assert_eq!(checked, r.grads.len(), "{what}: every reference gradient checked");
    for (key, want) in &r.running {
        let e = rel_err(t.param(key).unwrap(), want);
        assert!(e <= 1e-5, "{what}: {key}: relative error {e:e}");
    }
    eprintln!("{what}: {checked} gradients, worst relative error {:e} ({}), loss {loss}", worst.0, worst.1);
}

// The configurations keep the last maps at least 2x2 (with 1x1 maps and two or three images,
// BatchNorm normalises two or three values per channel, and the f32 rounding of everything
// before is amplified past the 1e-4 the comparison allows). 33 and 47 are odd sizes.

#[test]
fn gradients_match_f64_reference_v3_small() {
    check_against_reference(Arch::V3Small, 0.25, (33, 33), 4, Isa::detect(), 0.2, 0.1, false);
}

#[test]
fn gradients_match_f64_reference_v3_large() {
    check_against_reference(Arch::V3Large, 0.25, (33, 33), 3, Isa::detect(), 0.2, 0.0, false);
}

#[test]
fn gradients_match_f64_reference_v2() {
    check_against_reference(Arch::V2, 0.25, (48, 48), 4, Isa::detect(), 0.2, 0.1, false);
}

#[test]
fn gradients_match_f64_reference_v1() {
    check_against_reference(Arch::V1, 0.25, (33, 47), 3, Isa::detect(), 0.0, 0.0, false);
}

#[test]
fn gradients_match_f64_reference_every_isa() {
    for isa in Isa::all_available() {
        check_against_reference(Arch::V3Small, 0.25, (33, 33), 4, isa, 0.2, 0.1, false);
    }
}

/// `--freeze-bn`: BatchNorm normalises with the running statistics, which stay unchanged, and
/// its backward is the affine map alone.
#[test]
fn gradients_match_f64_reference_with_frozen_batch_norm() {
    check_against_reference(Arch::V3Small, 0.25, (33, 33), 4, Isa::detect(), 0.2, 0.1, true);
    check_against_reference(Arch::V2, 0.25, (40, 40), 3, Isa::detect(), 0.0, 0.0, true);
}

/// Recalibration: the running statistics become the average of the batches' statistics
/// (torch's `momentum=None`), and nothing else changes.
#[test]
fn recalibration_averages_batch_statistics() {
    let spec = ModelSpec::new(Arch::V3Small).with_width_mult(0.25).with_num_classes(10);
    let (n, h, w) = (4, 33, 33);
    let cfg = TrainConfig::new(Arch::V3Small, n, h, w).with_threads(2);
    let mut t = Trainer::new(&spec, cfg.clone()).unwrap();
    perturb(&mut t, 11);
    let before = params_f64(&t);
    let batches: Vec<Vec<f32>> = (0..3).map(|i| random_batch(20 + i, n, h, w, 10).0).collect();
    // Each batch's statistics, from the reference with momentum 1.
    let one = cfg.clone().with_bn_momentum(1.0);
    let mut want: Params = Params::new();
    for images in &batches {
        let r = reference(t.plan(), &before, images, n, (h, w), &[0; 4], &[], &one);
        for (k, v) in r.running {
            let sum = want.entry(k).or_insert_with(|| vec![0.0; v.len()]);
            sum.iter_mut().zip(&v).for_each(|(s, v)| *s += v / batches.len() as f64);
        }
    }
    let used = t.recalibrate_bn(batches.iter().map(|b| b.as_slice())).unwrap();
    assert_eq!(used, 3);
    for (key, _, values) in t.params() {
        match want.get(key) {
            Some(want) => assert!(rel_err(values, want) <= 1e-5, "{key}: {:e}", rel_err(values, want)),
            None => assert!(values.iter().zip(&before[key]).all(|(a, &b)| *a as f64 == b), "{key} changed"),
        }
    }
    // No batch: nothing changes.
    let snapshot = params_f64(&t);
    assert_eq!(t.recalibrate_bn(std::iter::empty()).unwrap(), 0);
    assert!(params_f64(&t) == snapshot);
}

/// The f64 reference's own gradients against central finite differences of its loss.
#[test]
fn reference_matches_finite_differences() {
    for (arch, n, h, w) in [(Arch::V3Small, 4, 33, 33), (Arch::V2, 4, 48, 48)] {
        let spec = ModelSpec::new(arch).with_width_mult(0.25).with_num_classes(5);
        let cfg = TrainConfig::new(arch, n, h, w).with_dropout(0.0).with_label_smoothing(0.1);
        let mut t = Trainer::new(&spec, cfg.clone()).unwrap();
        perturb(&mut t, 2);
        let plan = t.plan().clone();
        let p = params_f64(&t);
        let (images, labels) = random_batch(6, n, h, w, 5);
        let base = reference(&plan, &p, &images, n, (h, w), &labels, &[], &cfg);
        eprintln!("{arch}: reference nearest kink {:e}", base.kink);
        // A few parameters of every kind: first conv, a depthwise conv, a BN, an SE fc, the
        // classifier.
        let mut picks: Vec<(String, usize)> = Vec::new();
        let mut rng = Rng::new(1);
        for (key, _, v) in t.grads() {
            let kind_pick = key == "features.0.0.weight"
                || key.ends_with("features.2.block.1.0.weight")
                || key.ends_with("features.2.conv.1.0.weight")
                || key == "features.3.block.0.1.weight"
                || key == "features.3.conv.0.1.weight"
                || key.contains("fc1.weight") && picks.iter().all(|(k, _)| !k.contains("fc1"))
                || key.contains("fc2.bias") && picks.iter().all(|(k, _)| !k.contains("fc2"))
                || key.starts_with("classifier") && key.ends_with("weight");
            if kind_pick {
                for _ in 0..2 {
                    picks.push((key.to_string(), (rng.next_u64() % v.len() as u64) as usize));
                }
            }
        }
        assert!(picks.len() >= 8, "{arch}: picked {picks:?}");
        for (key, i) in picks {
            let step = 1e-7;
            let mut plus = p.clone();
            plus.get_mut(&key).unwrap()[i] += step;
            let mut minus = p.clone();
            minus.get_mut(&key).unwrap()[i] -= step;
            let lp = reference(&plan, &plus, &images, n, (h, w), &labels, &[], &cfg).loss;
            let lm = reference(&plan, &minus, &images, n, (h, w), &labels, &[], &cfg).loss;
            let fd = (lp - lm) / (2.0 * step);
            let an = base.grads[&key][i];
            let scale = base.grads[&key].iter().fold(1e-8f64, |m, v| m.max(v.abs()));
            assert!(
                (fd - an).abs() <= 1e-5 * scale.max(1e-3),
                "{arch} {key}[{i}]: finite difference {fd:e}, analytic {an:e}"
            );
        }
    }
}

/// One step gives the same bits (gradients, running statistics, loss, logits) on 1, 2 and 3
/// threads.
#[test]
fn steps_are_bit_identical_across_thread_counts() {
    for arch in [Arch::V3Small, Arch::V2] {
        let spec = ModelSpec::new(arch).with_width_mult(0.5).with_num_classes(10);
        let (n, h, w) = (20, 40, 36);
        let (images, labels) = random_batch(8, n, h, w, 10);
        let run = |threads: usize| {
            let cfg = TrainConfig::new(arch, n, h, w).with_threads(threads).with_label_smoothing(0.1).with_seed(5);
            let mut t = Trainer::new(&spec, cfg).unwrap();
            let loss = t.step(&images, &labels).unwrap();
            t.sgd(0.1);
            let loss2 = t.step(&images, &labels).unwrap();
            let state: Vec<(String, Vec<f32>)> = t.params().map(|(k, _, v)| (k.to_string(), v.to_vec())).collect();
            let grads: Vec<(String, Vec<f32>)> = t.grads().map(|(k, _, v)| (k.to_string(), v.to_vec())).collect();
            (loss.to_bits(), loss2.to_bits(), t.logits().to_vec(), state, grads)
        };
        let one = run(1);
        for threads in [2, 3] {
            let other = run(threads);
            assert_eq!(one.0, other.0, "{arch}: loss, {threads} threads");
            assert_eq!(one.1, other.1, "{arch}: second loss, {threads} threads");
            assert_eq!(one.2, other.2, "{arch}: logits, {threads} threads");
            assert!(one.3 == other.3, "{arch}: parameters / running statistics, {threads} threads");
            assert!(one.4 == other.4, "{arch}: gradients, {threads} threads");
        }
    }
}

/// Eval mode uses the running statistics and no dropout: it matches the inference engine.
#[test]
fn eval_matches_inference_engine() {
    let spec = ModelSpec::new(Arch::V3Small).with_width_mult(0.5).with_num_classes(7);
    let (n, h, w) = (3, 32, 32);
    let mut t = Trainer::new(&spec, TrainConfig::new(Arch::V3Small, n, h, w)).unwrap();
    perturb(&mut t, 4);
    let (images, labels) = random_batch(2, n, h, w, 7);
    t.step(&images, &labels).unwrap();
    t.sgd(0.05);
    let tensors: crate::NamedTensors = t.params().map(|(k, s, v)| (k.to_string(), (s.to_vec(), v.to_vec()))).collect();
    let engine = crate::Engine::from_tensors(&spec, tensors, crate::EngineOptions::default().with_threads(1)).unwrap();
    let want = engine.run(&crate::Images::new(&images, n, h, w).unwrap()).unwrap();
    let got = t.eval(&images).unwrap().to_vec();
    let scale = want.data.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (g, w) in got.iter().zip(&want.data) {
        assert!((g - w).abs() <= 1e-4 * scale, "eval {g} vs engine {w}");
    }
}

/// A trainer laid out for a larger batch runs a smaller one exactly as one laid out for it.
#[test]
fn smaller_batches_match_a_trainer_of_that_size() {
    let spec = ModelSpec::new(Arch::V3Small).with_width_mult(0.25).with_num_classes(10);
    let (h, w) = (33, 35);
    let (images, labels) = random_batch(12, 5, h, w, 10);
    let run = |batch: usize| {
        let mut t = Trainer::new(&spec, TrainConfig::new(Arch::V3Small, batch, h, w).with_threads(2).with_dropout(0.0))
            .unwrap();
        let loss = t.step(&images, &labels).unwrap();
        let grads: Vec<Vec<f32>> = t.grads().map(|(_, _, g)| g.to_vec()).collect();
        let eval = t.eval(&images[..3 * h * w]).unwrap().to_vec();
        (loss, grads, eval)
    };
    let exact = run(5);
    let larger = run(9);
    assert_eq!(exact.0, larger.0);
    assert!(exact.1 == larger.1);
    assert_eq!(exact.2, larger.2);
}
