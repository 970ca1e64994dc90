//! BatchNorm2d in train mode, fused with the activation that follows it (and the residual add
//! of a block's last layer), on `[rows][c]` maps (rows = images · pixels, `c` padded):
//!
//! - forward, pass 1 [`bn_sums`]: per-channel `Σ(z - s)` and `Σ(z - s)²` over a range of rows
//!   (`s` a per-channel shift, the batch's first row, against cancellation), accumulated in
//!   f32 vectors over blocks of rows and in f64 across blocks; the caller reduces chunk
//!   partials in chunk order.
//! - forward, pass 2 [`bn_apply`]: `y = act(z · scale + shift) (+ residual)`, with
//!   `scale = γ / √(var + eps)`, `shift = β - mean · scale` (eval mode: the running statistics).
//! - backward, pass 1 [`bn_backward_sums`]: with `g = dy · act'(z · scale + shift)` (the
//!   pre-activation recomputed, not stored), `Σ g` (= dβ) and `Σ g · (z - mean)` (dγ / rstd).
//! - backward, pass 2 [`bn_backward_apply`]: `dz = A · g + B + C · (z - mean)`, the BatchNorm
//!   input gradient `γ·rstd·(g - mean(g) - x̂ · mean(g · x̂))` with per-channel `A, B, C`.
//!
//! So a conv output `z` is the only thing BatchNorm keeps for backward; the activation's input
//! and output are recomputed.

use super::activation::{act_backward, act_forward, with_train_act};
use super::lanes::TrainSimd;
use crate::simd::multiversion;

/// Rows per f32 block before the partial sums move to f64.
const ROW_BLOCK: usize = 64;
/// Channel vectors per register block.
const NV: usize = 4;

#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn sums_block<S: TrainSimd, const V: usize>(
    z: *const f32,
    c: usize,
    r0: usize,
    r1: usize,
    ch: usize,
    shift: *const f32,
    out: *mut f64,
) {
    let mut s = [S::zero(); V];
    for v in 0..V {
        s[v] = S::load(shift.add(ch + v * S::LANES));
    }
    let mut r = r0;
    while r < r1 {
        let re = (r + ROW_BLOCK).min(r1);
        let mut a1 = [S::zero(); V];
        let mut a2 = [S::zero(); V];
        for row in r..re {
            let p = z.add(row * c + ch);
            for v in 0..V {
                let d = S::sub(S::load(p.add(v * S::LANES)), s[v]);
                a1[v] = S::add(a1[v], d);
                a2[v] = S::fma(d, d, a2[v]);
            }
        }
        let mut t1 = [0.0f32; 64];
        let mut t2 = [0.0f32; 64];
        for v in 0..V {
            S::store(t1.as_mut_ptr().add(v * S::LANES), a1[v]);
            S::store(t2.as_mut_ptr().add(v * S::LANES), a2[v]);
        }
        for l in 0..V * S::LANES {
            *out.add(ch + l) += t1[l] as f64;
            *out.add(c + ch + l) += t2[l] as f64;
        }
        r = re;
    }
}

#[inline(always)]
unsafe fn sums_generic<S: TrainSimd>(z: *const f32, c: usize, r0: usize, r1: usize, shift: *const f32, out: *mut f64) {
    for i in 0..2 * c {
        *out.add(i) = 0.0;
    }
    let mut ch = 0;
    while ch + NV * S::LANES <= c {
        sums_block::<S, NV>(z, c, r0, r1, ch, shift, out);
        ch += NV * S::LANES;
    }
    while ch < c {
        sums_block::<S, 1>(z, c, r0, r1, ch, shift, out);
        ch += S::LANES;
    }
}

// `out[0..c] = Σ (z - shift)`, `out[c..2c] = Σ (z - shift)²` over rows `r0..r1`.
multiversion!(pub fn bn_sums(z: *const f32, c: usize, r0: usize, r1: usize, shift: *const f32, out: *mut f64) => sums_generic);

#[inline(always)]
unsafe fn apply_act<S: TrainSimd, const ACT: u8>(
    z: *const f32,
    c: usize,
    r0: usize,
    r1: usize,
    scale: *const f32,
    shift: *const f32,
    res: *const f32,
    y: *mut f32,
) {
    for row in r0..r1 {
        let mut ch = 0;
        while ch < c {
            let i = row * c + ch;
            let a = S::fma(S::load(z.add(i)), S::load(scale.add(ch)), S::load(shift.add(ch)));
            let mut out = act_forward::<S, ACT>(a);
            if !res.is_null() {
                out = S::add(out, S::load(res.add(i)));
            }
            S::store(y.add(i), out);
            ch += S::LANES;
        }
    }
}

#[inline(always)]
unsafe fn apply_generic<S: TrainSimd>(
    z: *const f32,
    c: usize,
    r0: usize,
    r1: usize,
    scale: *const f32,
    shift: *const f32,
    act: u8,
    res: *const f32,
    y: *mut f32,
) {
    with_train_act!(act, apply_act::<S>(z, c, r0, r1, scale, shift, res, y))
}

// `y = act(z · scale + shift) (+ res)` over rows `r0..r1` (`res` may be null; `y` may be `z`).
multiversion!(pub fn bn_apply(z: *const f32, c: usize, r0: usize, r1: usize, scale: *const f32, shift: *const f32, act: u8, res: *const f32, y: *mut f32) => apply_generic);

/// Per-channel constants of the backward kernels, `[c]` each.
#[derive(Clone, Copy)]
pub struct BnBackward {
    pub scale: *const f32,
    pub shift: *const f32,
    pub mean: *const f32,
    /// `dz = a · g + b + cc · (z - mean)`.
    pub a: *const f32,
    pub b: *const f32,
    pub cc: *const f32,
}
unsafe impl Send for BnBackward {}
unsafe impl Sync for BnBackward {}

#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn bwd_sums_block<S: TrainSimd, const ACT: u8, const V: usize>(
    z: *const f32,
    dy: *const f32,
    c: usize,
    r0: usize,
    r1: usize,
    ch: usize,
    k: &BnBackward,
    out: *mut f64,
) {
    let mut scale = [S::zero(); V];
    let mut shift = [S::zero(); V];
    let mut mean = [S::zero(); V];
    for v in 0..V {
        scale[v] = S::load(k.scale.add(ch + v * S::LANES));
        shift[v] = S::load(k.shift.add(ch + v * S::LANES));
        mean[v] = S::load(k.mean.add(ch + v * S::LANES));
    }
    let mut r = r0;
    while r < r1 {
        let re = (r + ROW_BLOCK).min(r1);
        let mut a1 = [S::zero(); V];
        let mut a2 = [S::zero(); V];
        for row in r..re {
            let i = row * c + ch;
            for v in 0..V {
                let zv = S::load(z.add(i + v * S::LANES));
                let g = act_backward::<S, ACT>(S::fma(zv, scale[v], shift[v]), S::load(dy.add(i + v * S::LANES)));
                a1[v] = S::add(a1[v], g);
                a2[v] = S::fma(g, S::sub(zv, mean[v]), a2[v]);
            }
        }
        let mut t1 = [0.0f32; 64];
        let mut t2 = [0.0f32; 64];
        for v in 0..V {
            S::store(t1.as_mut_ptr().add(v * S::LANES), a1[v]);
            S::store(t2.as_mut_ptr().add(v * S::LANES), a2[v]);
        }
        for l in 0..V * S::LANES {
            *out.add(ch + l) += t1[l] as f64;
            *out.add(c + ch + l) += t2[l] as f64;
        }
        r = re;
    }
}

#[inline(always)]
unsafe fn bwd_sums_act<S: TrainSimd, const ACT: u8>(
    z: *const f32,
    dy: *const f32,
    c: usize,
    r0: usize,
    r1: usize,
    k: &BnBackward,
    out: *mut f64,
) {
    for i in 0..2 * c {
        *out.add(i) = 0.0;
    }
    let mut ch = 0;
    while ch + NV * S::LANES <= c {
        bwd_sums_block::<S, ACT, NV>(z, dy, c, r0, r1, ch, k, out);
        ch += NV * S::LANES;
    }
    while ch < c {
        bwd_sums_block::<S, ACT, 1>(z, dy, c, r0, r1, ch, k, out);
        ch += S::LANES;
    }
}

#[inline(always)]
unsafe fn bwd_sums_generic<S: TrainSimd>(
    z: *const f32,
    dy: *const f32,
    c: usize,
    r0: usize,
    r1: usize,
    k: &BnBackward,
    act: u8,
    out: *mut f64,
) {
    with_train_act!(act, bwd_sums_act::<S>(z, dy, c, r0, r1, k, out))
}

// `out[0..c] = Σ g`, `out[c..2c] = Σ g · (z - mean)` with `g = dy · act'(z · scale + shift)`.
multiversion!(pub fn bn_backward_sums(z: *const f32, dy: *const f32, c: usize, r0: usize, r1: usize, k: &BnBackward, act: u8, out: *mut f64) => bwd_sums_generic);

#[inline(always)]
unsafe fn bwd_apply_act<S: TrainSimd, const ACT: u8>(
    z: *const f32,
    dy: *const f32,
    c: usize,
    r0: usize,
    r1: usize,
    k: &BnBackward,
    dz: *mut f32,
) {
    for row in r0..r1 {
        let mut ch = 0;
        while ch < c {
            let i = row * c + ch;
            let zv = S::load(z.add(i));
            let g = act_backward::<S, ACT>(
                S::fma(zv, S::load(k.scale.add(ch)), S::load(k.shift.add(ch))),
                S::load(dy.add(i)),
            );
            let centred = S::sub(zv, S::load(k.mean.add(ch)));
            let out = S::fma(S::load(k.a.add(ch)), g, S::fma(S::load(k.cc.add(ch)), centred, S::load(k.b.add(ch))));
            S::store(dz.add(i), out);
            ch += S::LANES;
        }
    }
}

#[inline(always)]
unsafe fn bwd_apply_generic<S: TrainSimd>(
    z: *const f32,
    dy: *const f32,
    c: usize,
    r0: usize,
    r1: usize,
    k: &BnBackward,
    act: u8,
    dz: *mut f32,
) {
    with_train_act!(act, bwd_apply_act::<S>(z, dy, c, r0, r1, k, dz))
}

// `dz = a · g + b + cc · (z - mean)` over rows `r0..r1` (`dz` may be `dy`).
multiversion!(pub fn bn_backward_apply(z: *const f32, dy: *const f32, c: usize, r0: usize, r1: usize, k: &BnBackward, act: u8, dz: *mut f32) => bwd_apply_generic);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Isa;
    use crate::train::activation::*;
    use crate::train::rng::Rng;

    /// The whole train-mode BN + activation, forward and backward, through the kernels (one
    /// chunk) against f64.
    #[test]
    fn batch_norm_matches_f64() {
        let mut rng = Rng::new(5);
        for isa in Isa::all_available() {
            for &(rows, c, real) in &[(3usize, 16usize, 16usize), (70, 32, 27), (200, 80, 72), (9, 144, 130)] {
                for act in [ACT_NONE, ACT_RELU, ACT_RELU6, ACT_HARDSWISH] {
                    let eps = 1e-3;
                    let mut z = vec![0.0f32; rows * c];
                    let mut dy = vec![0.0f32; rows * c];
                    for r in 0..rows {
                        for ch in 0..real {
                            z[r * c + ch] = 0.7 + 1.3 * rng.normal();
                            dy[r * c + ch] = rng.normal();
                        }
                    }
                    let gamma: Vec<f32> = (0..c).map(|ch| if ch < real { 0.5 + rng.uniform() } else { 0.0 }).collect();
                    let beta: Vec<f32> = (0..c).map(|ch| if ch < real { rng.normal() } else { 0.0 }).collect();
                    // Kernels.
                    let mut sums = vec![0.0f64; 2 * c];
                    let shift_row = z[..c].to_vec();
                    unsafe { bn_sums(isa, z.as_ptr(), c, 0, rows, shift_row.as_ptr(), sums.as_mut_ptr()) };
                    let m = rows as f64;
                    let mean: Vec<f64> = (0..c).map(|ch| shift_row[ch] as f64 + sums[ch] / m).collect();
                    let var: Vec<f64> = (0..c).map(|ch| (sums[c + ch] / m - (sums[ch] / m).powi(2)).max(0.0)).collect();
                    let rstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
                    let scale: Vec<f32> = (0..c).map(|ch| (gamma[ch] as f64 * rstd[ch]) as f32).collect();
                    let shift: Vec<f32> =
                        (0..c).map(|ch| (beta[ch] as f64 - mean[ch] * gamma[ch] as f64 * rstd[ch]) as f32).collect();
                    let mut y = vec![0.0f32; rows * c];
                    unsafe {
                        bn_apply(
                            isa,
                            z.as_ptr(),
                            c,
                            0,
                            rows,
                            scale.as_ptr(),
                            shift.as_ptr(),
                            act,
                            std::ptr::null(),
                            y.as_mut_ptr(),
                        )
                    };
                    let mean32: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
                    let zero = vec![0.0f32; c];
                    let k = BnBackward {
                        scale: scale.as_ptr(),
                        shift: shift.as_ptr(),
                        mean: mean32.as_ptr(),
                        a: zero.as_ptr(),
                        b: zero.as_ptr(),
                        cc: zero.as_ptr(),
                    };
                    let mut bs = vec![0.0f64; 2 * c];
                    unsafe { bn_backward_sums(isa, z.as_ptr(), dy.as_ptr(), c, 0, rows, &k, act, bs.as_mut_ptr()) };
                    let dbeta: Vec<f64> = bs[..c].to_vec();
                    let dgamma: Vec<f64> = (0..c).map(|ch| bs[c + ch] * rstd[ch]).collect();
                    let a: Vec<f32> = (0..c).map(|ch| (gamma[ch] as f64 * rstd[ch]) as f32).collect();
                    let b: Vec<f32> =
                        (0..c).map(|ch| (-(gamma[ch] as f64) * rstd[ch] * dbeta[ch] / m) as f32).collect();
                    let cc: Vec<f32> =
                        (0..c).map(|ch| (-(gamma[ch] as f64) * rstd[ch] * rstd[ch] * dgamma[ch] / m) as f32).collect();
                    let k = BnBackward { a: a.as_ptr(), b: b.as_ptr(), cc: cc.as_ptr(), ..k };
                    let mut dz = dy.clone();
                    unsafe { bn_backward_apply(isa, z.as_ptr(), dz.as_ptr(), c, 0, rows, &k, act, dz.as_mut_ptr()) };
                    // f64 reference.
                    for ch in 0..c {
                        let col: Vec<f64> = (0..rows).map(|r| z[r * c + ch] as f64).collect();
                        let mu = col.iter().sum::<f64>() / m;
                        let v = col.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / m;
                        let rs = 1.0 / (v + eps).sqrt();
                        let xh: Vec<f64> = col.iter().map(|x| (x - mu) * rs).collect();
                        let pre: Vec<f64> = xh.iter().map(|x| gamma[ch] as f64 * x + beta[ch] as f64).collect();
                        let g: Vec<f64> =
                            (0..rows).map(|r| dy[r * c + ch] as f64 * act_grad_f64(pre[r], act)).collect();
                        let db: f64 = g.iter().sum();
                        let dg: f64 = (0..rows).map(|r| g[r] * xh[r]).sum();
                        let tol = 1e-4 * (1.0 + db.abs());
                        assert!(
                            (dbeta[ch] - db).abs() <= tol * (rows as f64).sqrt(),
                            "{isa} dbeta {ch}: {} vs {db}",
                            dbeta[ch]
                        );
                        assert!(
                            (dgamma[ch] - dg).abs() <= tol * (rows as f64).sqrt(),
                            "{isa} dgamma {ch}: {} vs {dg}",
                            dgamma[ch]
                        );
                        for r in 0..rows {
                            let want_y = act_f64(pre[r], act);
                            assert!((y[r * c + ch] as f64 - want_y).abs() <= 1e-4, "{isa} y");
                            let want_dz = gamma[ch] as f64 * rs * (g[r] - db / m - xh[r] * dg / m);
                            assert!(
                                (dz[r * c + ch] as f64 - want_dz).abs() <= 1e-4 * (1.0 + want_dz.abs()),
                                "{isa} rows {rows} c {c} act {act} dz[{r},{ch}]: {} vs {want_dz}",
                                dz[r * c + ch]
                            );
                        }
                    }
                }
            }
        }
    }
}
