//! The forward pass: a loop over the nodes, each conv followed by its BatchNorm (batch
//! statistics in train mode, running statistics in eval mode) and activation, then the pool,
//! the classifier and the loss.

use rayon::prelude::*;

use super::activation::{act_scalar, ACT_HARDSIGMOID, ACT_RELU};
use super::batch_norm::{bn_apply, bn_sums};
use super::conv::im2col;
use super::depthwise::depthwise_forward;
use super::lanes::Ptr;
use super::network::{ConvKind, ConvNode, HeadNode, SeNode};
use super::params::ParamStore;
use super::rng::Rng;
use super::rows::{col_dot, scale_rows};
use crate::simd::Isa;

/// Chunks of the batch whose partial sums are reduced in index order: a fixed count (not the
/// thread count), so every reduction gives the same bits on any number of threads.
pub const REDUCE_CHUNKS: usize = 16;

/// What every layer of one pass shares.
#[derive(Clone, Copy)]
pub struct Ctx {
    pub isa: Isa,
    /// The arena's first float.
    pub base: Ptr,
    /// Images in this batch.
    pub n: usize,
    pub chunks: usize,
    /// Which statistics BatchNorm normalises with.
    pub bn: BnStats,
    pub eps: f64,
}

/// The statistics BatchNorm normalises with in a pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BnStats {
    /// The batch's (train mode); the running statistics move towards them by `momentum`
    /// (torch's convention: the weight of the batch), or stay as they are with `None`.
    Batch { momentum: Option<f64> },
    /// The running statistics: eval mode, or frozen BatchNorm while training (`--freeze-bn`),
    /// where BatchNorm is a fixed affine map in both directions.
    Running,
}

impl Ctx {
    /// Images of chunk `c`.
    pub fn chunk(&self, c: usize) -> (usize, usize) {
        (c * self.n / self.chunks, (c + 1) * self.n / self.chunks)
    }
}

/// Runs `f(start, end)` over `total` items split into contiguous ranges on the current pool.
/// Only for work whose result does not depend on the split (each output written by one task).
pub fn par_ranges(total: usize, min_per_task: usize, f: impl Fn(usize, usize) + Sync + Send) {
    let threads = rayon::current_num_threads();
    let tasks = (threads * 4).min(total.div_ceil(min_per_task.max(1))).max(1);
    if threads == 1 || tasks == 1 {
        f(0, total);
        return;
    }
    (0..tasks).into_par_iter().for_each(|t| f(t * total / tasks, (t + 1) * total / tasks));
}

/// The conv alone (its output `z`); [`bn_forward`] follows.
pub fn conv_forward(ctx: &Ctx, node: &mut ConvNode, images: &[f32]) {
    let isa = ctx.isa;
    let n = ctx.n;
    let rows = n * node.out_rows_per_image();
    let z = ctx.base.at(node.z.offset);
    let x = ctx.base.at(node.input.offset);
    match node.kind {
        ConvKind::Stem => {
            let d = node.dense.as_ref().expect("stem weights");
            let l = &node.layer;
            let col = Ptr::new(x);
            let (h, w, ho, wo, ld) = (node.h_in, node.w_in, node.h_out, node.w_out, d.in_p);
            par_ranges(n, 1, |n0, n1| unsafe {
                im2col(images, n0, n1, l.in_channels, h, w, l.kernel, l.stride, ho, wo, ld, col.get())
            });
            d.forward(isa, x, d.in_p, rows, z, node.cout_p);
        }
        ConvKind::Pointwise => {
            let d = node.dense.as_ref().expect("pointwise weights");
            d.forward(isa, x, node.cin_p, rows, z, node.cout_p);
        }
        ConvKind::Depthwise => {
            let g = node.dw_geom();
            let (xp, zp, taps) = (Ptr::new(x), Ptr::new(z), Ptr::new(node.taps.as_ptr() as *mut f32));
            par_ranges(n, 1, |n0, n1| unsafe { depthwise_forward(isa, &g, xp.get(), taps.get(), zp.get(), n0, n1) });
        }
    }
}

/// BatchNorm (batch or running statistics, see [`BnStats`]), activation, residual.
pub fn bn_forward(ctx: &Ctx, node: &mut ConvNode, params: &mut ParamStore, partials: &mut [f64]) {
    let isa = ctx.isa;
    let cp = node.cout_p;
    let c = node.layer.out_channels;
    let per_image = node.out_rows_per_image();
    let rows = ctx.n * per_image;
    let z = ctx.base.at(node.z.offset);
    let bn = &mut node.bn;
    if let BnStats::Batch { momentum } = ctx.bn {
        bn.shift_row.copy_from_slice(unsafe { std::slice::from_raw_parts(z, cp) });
        let out = Ptr::new(partials.as_mut_ptr());
        let shift = Ptr::new(bn.shift_row.as_mut_ptr());
        let zp = Ptr::new(z);
        (0..ctx.chunks).into_par_iter().for_each(|ch| {
            let (n0, n1) = ctx.chunk(ch);
            unsafe { bn_sums(isa, zp.get(), cp, n0 * per_image, n1 * per_image, shift.get(), out.at(ch * 2 * cp)) };
        });
        let m = rows as f64;
        for ch in 0..c {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for part in 0..ctx.chunks {
                s1 += partials[part * 2 * cp + ch];
                s2 += partials[part * 2 * cp + cp + ch];
            }
            let d = s1 / m;
            let mean = bn.shift_row[ch] as f64 + d;
            let var = (s2 / m - d * d).max(0.0);
            if let Some(momentum) = momentum {
                let unbiased = if rows > 1 { var * m / (m - 1.0) } else { var };
                let rm = &mut params.value_mut(bn.running_mean)[ch];
                *rm = ((1.0 - momentum) * *rm as f64 + momentum * mean) as f32;
                let rv = &mut params.value_mut(bn.running_var)[ch];
                *rv = ((1.0 - momentum) * *rv as f64 + momentum * unbiased) as f32;
            }
            let rstd = 1.0 / (var + ctx.eps).sqrt();
            bn.mean[ch] = mean as f32;
            bn.rstd[ch] = rstd as f32;
            let gamma = params.value(bn.gamma)[ch] as f64;
            let beta = params.value(bn.beta)[ch] as f64;
            bn.scale[ch] = (gamma * rstd) as f32;
            bn.shift[ch] = (beta - mean * gamma * rstd) as f32;
        }
    } else {
        for ch in 0..c {
            let mean = params.value(bn.running_mean)[ch] as f64;
            let rstd = 1.0 / (params.value(bn.running_var)[ch] as f64 + ctx.eps).sqrt();
            let gamma = params.value(bn.gamma)[ch] as f64;
            let beta = params.value(bn.beta)[ch] as f64;
            bn.mean[ch] = mean as f32;
            bn.rstd[ch] = rstd as f32;
            bn.scale[ch] = (gamma * rstd) as f32;
            bn.shift[ch] = (beta - mean * gamma * rstd) as f32;
        }
    }
    let res = node.residual.map_or(std::ptr::null_mut(), |r| ctx.base.at(r.offset));
    let (zp, yp, resp) = (Ptr::new(z), Ptr::new(ctx.base.at(node.y.offset)), Ptr::new(res));
    let (scale, shift) = (Ptr::new(bn.scale.as_mut_ptr()), Ptr::new(bn.shift.as_mut_ptr()));
    let act = node.act;
    par_ranges(rows, 64, |r0, r1| unsafe {
        bn_apply(isa, zp.get(), cp, r0, r1, scale.get(), shift.get(), act, resp.get(), yp.get())
    });
}

/// Squeeze-excite: pool, fc1 + bias, ReLU, fc2 + bias, hard-sigmoid, scale.
pub fn se_forward(ctx: &Ctx, se: &mut SeNode) {
    let isa = ctx.isa;
    let n = ctx.n;
    let rows = se.h * se.w;
    let cp = se.cp;
    let sp = se.fc1.out_p;
    let u = Ptr::new(ctx.base.at(se.input.offset));
    let v = Ptr::new(ctx.base.at(se.output.offset));
    let sums = Ptr::new(se.sums.as_mut_ptr());
    par_ranges(n, 1, |n0, n1| {
        for i in n0..n1 {
            unsafe { col_dot(isa, u.at(i * rows * cp), std::ptr::null(), cp, 0, rows, sums.at(i * cp)) };
        }
    });
    for (p, s) in se.pooled[..n * cp].iter_mut().zip(&se.sums[..n * cp]) {
        *p = (s / rows as f64) as f32;
    }
    se.fc1.forward(isa, se.pooled.as_ptr(), cp, n, se.hidden_pre.as_mut_ptr(), sp);
    for (pre, hidden) in se.hidden_pre[..n * sp].chunks_exact_mut(sp).zip(se.hidden.chunks_exact_mut(sp)) {
        for ((p, h), b) in pre.iter_mut().zip(hidden.iter_mut()).zip(&se.fc1.bias_p) {
            *p += b;
            *h = act_scalar(*p, ACT_RELU);
        }
    }
    se.fc2.forward(isa, se.hidden.as_ptr(), sp, n, se.gate_pre.as_mut_ptr(), cp);
    for (pre, gate) in se.gate_pre[..n * cp].chunks_exact_mut(cp).zip(se.gate.chunks_exact_mut(cp)) {
        for ((p, g), b) in pre.iter_mut().zip(gate.iter_mut()).zip(&se.fc2.bias_p) {
            *p += b;
            *g = act_scalar(*p, ACT_HARDSIGMOID);
        }
    }
    let gate = Ptr::new(se.gate.as_mut_ptr());
    par_ranges(n, 1, |n0, n1| {
        for i in n0..n1 {
            unsafe { scale_rows(isa, u.at(i * rows * cp), gate.at(i * cp), 1.0, cp, 0, rows, v.at(i * rows * cp)) };
        }
    });
}

/// Global average pool of `[n · rows][c]` into `[n][c]`.
pub fn pool_forward(isa: Isa, map: Ptr, n: usize, rows: usize, c: usize, sums: &mut [f64], out: &mut [f32]) {
    let s = Ptr::new(sums.as_mut_ptr());
    par_ranges(n, 1, |n0, n1| {
        for i in n0..n1 {
            unsafe { col_dot(isa, map.at(i * rows * c), std::ptr::null(), c, 0, rows, s.at(i * c)) };
        }
    });
    for (o, s) in out[..n * c].iter_mut().zip(&sums[..n * c]) {
        *o = (s / rows as f64) as f32;
    }
}

/// The classifier: `xs[0]` the pooled features, `xs[i + 1]` layer i's output (`[n][widths]`).
#[allow(clippy::too_many_arguments)]
pub fn head_forward(
    isa: Isa,
    head: &[HeadNode],
    widths: &[usize],
    xs: &mut [Vec<f32>],
    masks: &mut [Vec<f32>],
    n: usize,
    dropout: f32,
    rng: Option<&mut Rng>,
) {
    let mut rng = rng;
    for (i, layer) in head.iter().enumerate() {
        let (before, after) = xs.split_at_mut(i + 1);
        let (x, y) = (&before[i], &mut after[0]);
        let (wi, wo) = (widths[i], widths[i + 1]);
        match layer {
            HeadNode::Linear(d) => {
                d.forward(isa, x.as_ptr(), wi, n, y.as_mut_ptr(), wo);
                for r in 0..n {
                    for (v, b) in y[r * wo..(r + 1) * wo].iter_mut().zip(&d.bias_p) {
                        *v += b;
                    }
                }
            }
            HeadNode::Act(code) => {
                for j in 0..n * wo {
                    y[j] = act_scalar(x[j], *code);
                }
            }
            HeadNode::Dropout => {
                let mask = &mut masks[i];
                match rng.as_deref_mut() {
                    Some(rng) if dropout > 0.0 => {
                        let keep = 1.0 / (1.0 - dropout);
                        for m in mask[..n * wo].iter_mut() {
                            *m = if rng.uniform() >= dropout { keep } else { 0.0 };
                        }
                    }
                    _ => mask[..n * wo].fill(1.0),
                }
                for j in 0..n * wo {
                    y[j] = x[j] * mask[j];
                }
            }
        }
    }
}

/// Softmax cross-entropy with label smoothing `eps` (torch's
/// `CrossEntropyLoss(label_smoothing=eps)`, mean over the batch) of `logits [n][ld]` (the first
/// `classes` columns); writes `d loss / d logits` (zero in the padding columns).
pub fn cross_entropy(
    logits: &[f32],
    n: usize,
    classes: usize,
    ld: usize,
    labels: &[usize],
    eps: f64,
    grad: &mut [f32],
) -> f64 {
    let mut total = 0.0f64;
    for r in 0..n {
        let row = &logits[r * ld..r * ld + classes];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        let lse = max + sum.ln();
        let label = labels[r];
        let nll = lse - row[label] as f64;
        let smooth = lse - row.iter().map(|&v| v as f64).sum::<f64>() / classes as f64;
        total += (1.0 - eps) * nll + eps * smooth;
        let g = &mut grad[r * ld..(r + 1) * ld];
        for k in 0..ld {
            g[k] = if k < classes {
                let p = (row[k] as f64 - lse).exp();
                let target = eps / classes as f64 + if k == label { 1.0 - eps } else { 0.0 };
                ((p - target) / n as f64) as f32
            } else {
                0.0
            };
        }
    }
    total / n as f64
}
