//! The backward pass, the forward loop reversed: classifier, pool, then each node's
//! BatchNorm + activation backward and its conv's weight and input gradients. Gradients of
//! the maps rotate through three arena buffers (the third holds a residual block's output
//! gradient until the block's first layer has produced its input gradient).

use rayon::prelude::*;

use super::activation::{act_grad_scalar, ACT_HARDSIGMOID, ACT_RELU};
use super::batch_norm::{bn_backward_apply, bn_backward_sums, BnBackward};
use super::depthwise::{depthwise_input_grad, depthwise_weight_grad};
use super::forward::{par_ranges, BnStats, Ctx};
use super::lanes::Ptr;
use super::network::{ConvKind, ConvNode, HeadNode, SeNode};
use super::params::ParamStore;
use super::rows::{add_rows, col_dot, scale_rows};
use crate::simd::Isa;

/// BatchNorm + activation backward: `dz` from `dy` (may be the same buffer); writes dγ, dβ.
pub fn bn_backward(ctx: &Ctx, node: &mut ConvNode, params: &mut ParamStore, partials: &mut [f64], dy: Ptr, dz: Ptr) {
    let isa = ctx.isa;
    let cp = node.cout_p;
    let c = node.layer.out_channels;
    let per_image = node.out_rows_per_image();
    let rows = ctx.n * per_image;
    let z = Ptr::new(ctx.base.at(node.z.offset));
    let act = node.act;
    let bn = &mut node.bn;
    {
        let k = BnBackward {
            scale: bn.scale.as_ptr(),
            shift: bn.shift.as_ptr(),
            mean: bn.mean.as_ptr(),
            a: bn.a.as_ptr(),
            b: bn.b.as_ptr(),
            cc: bn.cc.as_ptr(),
        };
        let out = Ptr::new(partials.as_mut_ptr());
        (0..ctx.chunks).into_par_iter().for_each(|ch| {
            let (n0, n1) = ctx.chunk(ch);
            unsafe {
                bn_backward_sums(
                    isa,
                    z.get(),
                    dy.get(),
                    cp,
                    n0 * per_image,
                    n1 * per_image,
                    &k,
                    act,
                    out.at(ch * 2 * cp),
                )
            };
        });
    }
    let m = rows as f64;
    for ch in 0..c {
        let (mut sg, mut sgz) = (0.0f64, 0.0f64);
        for part in 0..ctx.chunks {
            sg += partials[part * 2 * cp + ch];
            sgz += partials[part * 2 * cp + cp + ch];
        }
        let rstd = bn.rstd[ch] as f64;
        let dbeta = sg;
        let dgamma = sgz * rstd;
        params.grad_mut(bn.beta)[ch] = dbeta as f32;
        params.grad_mut(bn.gamma)[ch] = dgamma as f32;
        let a = params.value(bn.gamma)[ch] as f64 * rstd;
        bn.a[ch] = a as f32;
        // With running statistics the mean and variance are constants: dz = γ·rstd·g.
        let batch = matches!(ctx.bn, BnStats::Batch { .. });
        bn.b[ch] = if batch { (-a * dbeta / m) as f32 } else { 0.0 };
        bn.cc[ch] = if batch { (-a * rstd * dgamma / m) as f32 } else { 0.0 };
    }
    let k = BnBackward {
        scale: bn.scale.as_ptr(),
        shift: bn.shift.as_ptr(),
        mean: bn.mean.as_ptr(),
        a: bn.a.as_ptr(),
        b: bn.b.as_ptr(),
        cc: bn.cc.as_ptr(),
    };
    par_ranges(rows, 64, |r0, r1| unsafe { bn_backward_apply(isa, z.get(), dy.get(), cp, r0, r1, &k, act, dz.get()) });
}

/// The conv's weight gradient (into the store, torch's layout) and, unless `dx` is None (the
/// stem), its input gradient.
pub fn conv_backward(
    ctx: &Ctx,
    node: &mut ConvNode,
    params: &mut ParamStore,
    dw_partials: &mut [f32],
    dz: Ptr,
    dx: Option<Ptr>,
) {
    let isa = ctx.isa;
    let n = ctx.n;
    let rows = n * node.out_rows_per_image();
    let x = Ptr::new(ctx.base.at(node.input.offset));
    let cp = node.cout_p;
    match node.kind {
        ConvKind::Stem | ConvKind::Pointwise => {
            let d = node.dense.as_mut().expect("dense weights");
            let ldx = if node.kind == ConvKind::Stem { d.in_p } else { node.cin_p };
            d.backward_weight(isa, dz.get(), cp, x.get(), ldx, rows);
            if let Some(dx) = dx {
                d.backward_input(isa, dz.get(), cp, rows, dx.get(), node.cin_p);
            }
            d.export_grad(params.grad_mut(node.weight));
        }
        ConvKind::Depthwise => {
            let g = node.dw_geom();
            let kk = g.k * g.k;
            let parts = Ptr::new(dw_partials.as_mut_ptr());
            (0..ctx.chunks).into_par_iter().for_each(|ch| {
                let (n0, n1) = ctx.chunk(ch);
                unsafe { depthwise_weight_grad(isa, &g, x.get(), dz.get(), parts.at(ch * kk * cp), n0, n1) };
            });
            let tg = &mut node.taps_grad;
            tg.copy_from_slice(&dw_partials[..kk * cp]);
            for part in 1..ctx.chunks {
                for (t, p) in tg.iter_mut().zip(&dw_partials[part * kk * cp..(part + 1) * kk * cp]) {
                    *t += p;
                }
            }
            let c = node.layer.out_channels;
            let out = params.grad_mut(node.weight);
            for ch in 0..c {
                for t in 0..kk {
                    out[ch * kk + t] = tg[t * cp + ch];
                }
            }
            if let Some(dx) = dx {
                let taps = Ptr::new(node.taps.as_ptr() as *mut f32);
                par_ranges(n, 1, |n0, n1| unsafe {
                    depthwise_input_grad(isa, &g, dz.get(), taps.get(), dx.get(), n0, n1)
                });
            }
        }
    }
}

/// Squeeze-excite backward: `dx` (the SE input's gradient) from `dy`; fc1/fc2 gradients.
pub fn se_backward(ctx: &Ctx, se: &mut SeNode, params: &mut ParamStore, dy: Ptr, dx: Ptr) {
    let isa = ctx.isa;
    let n = ctx.n;
    let rows = se.h * se.w;
    let cp = se.cp;
    let sp = se.fc1.out_p;
    let u = Ptr::new(ctx.base.at(se.input.offset));
    let sums = Ptr::new(se.sums.as_mut_ptr());
    let gate = Ptr::new(se.gate.as_mut_ptr());
    par_ranges(n, 1, |n0, n1| {
        for i in n0..n1 {
            let off = i * rows * cp;
            unsafe {
                col_dot(isa, dy.at(off), u.at(off), cp, 0, rows, sums.at(i * cp));
                scale_rows(isa, dy.at(off), gate.at(i * cp), 1.0, cp, 0, rows, dx.at(off));
            }
        }
    });
    // Gate: hard-sigmoid backward.
    for i in 0..n * cp {
        se.d_gate[i] = act_grad_scalar(se.gate_pre[i], se.sums[i] as f32, ACT_HARDSIGMOID);
    }
    sum_rows(&se.d_gate, n, cp, &mut se.fc2.bias_grad);
    se.fc2.backward_weight(isa, se.d_gate.as_ptr(), cp, se.hidden.as_ptr(), sp, n);
    se.fc2.backward_input(isa, se.d_gate.as_ptr(), cp, n, se.d_hidden.as_mut_ptr(), sp);
    for i in 0..n * sp {
        se.d_hidden[i] = act_grad_scalar(se.hidden_pre[i], se.d_hidden[i], ACT_RELU);
    }
    sum_rows(&se.d_hidden, n, sp, &mut se.fc1.bias_grad);
    se.fc1.backward_weight(isa, se.d_hidden.as_ptr(), sp, se.pooled.as_ptr(), cp, n);
    se.fc1.backward_input(isa, se.d_hidden.as_ptr(), sp, n, se.d_pooled.as_mut_ptr(), cp);
    let dp = Ptr::new(se.d_pooled.as_mut_ptr());
    let inv = 1.0 / rows as f32;
    par_ranges(n, 1, |n0, n1| {
        for i in n0..n1 {
            unsafe { add_rows(isa, dp.at(i * cp), inv, cp, 0, rows, dx.at(i * rows * cp)) };
        }
    });
    for fc in [&se.fc1, &se.fc2] {
        fc.export_grad(params.grad_mut(fc.weight));
        params.grad_mut(fc.bias.expect("SE convs have biases")).copy_from_slice(&fc.bias_grad);
    }
}

/// The classifier backward: `gs[i + 1]` holds the gradient of layer i's output; fills `gs[i]`
/// down to `gs[0]` (the pooled features'), and the Linears' gradients.
pub fn head_backward(
    isa: Isa,
    head: &mut [HeadNode],
    widths: &[usize],
    xs: &[Vec<f32>],
    gs: &mut [Vec<f32>],
    masks: &[Vec<f32>],
    n: usize,
    params: &mut ParamStore,
) {
    for (i, layer) in head.iter_mut().enumerate().rev() {
        let (before, after) = gs.split_at_mut(i + 1);
        let (gin, gout) = (&mut before[i], &after[0]);
        let (wi, wo) = (widths[i], widths[i + 1]);
        match layer {
            HeadNode::Linear(d) => {
                sum_rows(gout, n, wo, &mut d.bias_grad);
                d.backward_weight(isa, gout.as_ptr(), wo, xs[i].as_ptr(), wi, n);
                d.backward_input(isa, gout.as_ptr(), wo, n, gin.as_mut_ptr(), wi);
                d.export_grad(params.grad_mut(d.weight));
                params.grad_mut(d.bias.expect("Linears have biases")).copy_from_slice(&d.bias_grad);
            }
            HeadNode::Act(code) => {
                for j in 0..n * wo {
                    gin[j] = act_grad_scalar(xs[i][j], gout[j], *code);
                }
            }
            HeadNode::Dropout => {
                for j in 0..n * wo {
                    gin[j] = gout[j] * masks[i][j];
                }
            }
        }
    }
}

/// `out[j] = Σ_r x[r][j]` for the first `out.len()` columns of `x [rows][ld]`, rows in order.
fn sum_rows(x: &[f32], rows: usize, ld: usize, out: &mut [f32]) {
    out.fill(0.0);
    for r in 0..rows {
        for (o, v) in out.iter_mut().zip(&x[r * ld..]) {
            *o += v;
        }
    }
}

/// Pool backward: every pixel of image i gets `dp[i] / rows`.
pub fn pool_backward(isa: Isa, dp: &[f32], n: usize, rows: usize, c: usize, out: Ptr) {
    let dp = Ptr::new(dp.as_ptr() as *mut f32);
    let inv = 1.0 / rows as f32;
    par_ranges(n, 1, |n0, n1| {
        for i in n0..n1 {
            unsafe { scale_rows(isa, std::ptr::null(), dp.at(i * c), inv, c, 0, rows, out.at(i * rows * c)) };
        }
    });
}
