//! Depthwise k x k convolution (k = 3 or 5, stride 1 or 2, padding (k - 1) / 2) on NHWC maps
//! `[images][h][w][c]` with `c` padded to the lane multiple, weights `[k·k][c]` (tap-major,
//! channels inner): forward, input gradient and weight gradient. Every kernel is vectorised
//! over channels (one vector is consecutive channels of one pixel, so a tap is a load and an
//! FMA); the taps are unrolled for a const `K` with per-row and per-column bounds tests instead
//! of a zero border.
//!
//! - forward: each output pixel, channel blocks of four vectors (independent FMA chains).
//! - input gradient: a gather (each input pixel sums the output pixels whose window covers
//!   it), so every element is written once by one task: no atomics, no order dependence.
//! - weight gradient: per channel vector, all `k·k` taps in registers over a range of images;
//!   the caller sums the per-chunk partials in chunk order.

use super::lanes::TrainSimd;
use crate::simd::multiversion;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwGeom {
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    /// Channels, padded to a multiple of 16.
    pub c: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl DwGeom {
    pub fn new(h: usize, w: usize, c: usize, k: usize, stride: usize) -> DwGeom {
        let pad = (k - 1) / 2;
        DwGeom { h, w, oh: (h + 2 * pad - k) / stride + 1, ow: (w + 2 * pad - k) / stride + 1, c, k, stride, pad }
    }
    pub fn in_len(&self) -> usize {
        self.h * self.w * self.c
    }
    pub fn out_len(&self) -> usize {
        self.oh * self.ow * self.c
    }
    /// Output columns `lo..hi` whose whole window lies inside the input row (no bounds tests).
    pub fn interior_columns(&self) -> (usize, usize) {
        let lo = self.pad.div_ceil(self.stride);
        let hi =
            if self.w + self.pad >= self.k { ((self.w + self.pad - self.k) / self.stride + 1).min(self.ow) } else { 0 };
        (lo, hi.max(lo))
    }
}

#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn fwd_block<S: TrainSimd, const K: usize, const NV: usize, const FULL: bool>(
    g: &DwGeom,
    x: *const f32,
    wt: *const f32,
    out: *mut f32,
    iy0: isize,
    ix0: isize,
    ch: usize,
) {
    let mut acc = [S::zero(); NV];
    for ky in 0..K {
        let iy = iy0 + ky as isize;
        if !FULL && (iy < 0 || iy >= g.h as isize) {
            continue;
        }
        for kx in 0..K {
            let ix = ix0 + kx as isize;
            if !FULL && (ix < 0 || ix >= g.w as isize) {
                continue;
            }
            let xp = x.add((iy as usize * g.w + ix as usize) * g.c + ch);
            let wp = wt.add((ky * K + kx) * g.c + ch);
            for v in 0..NV {
                acc[v] = S::fma(S::load(xp.add(v * S::LANES)), S::load(wp.add(v * S::LANES)), acc[v]);
            }
        }
    }
    for v in 0..NV {
        S::store(out.add(ch + v * S::LANES), acc[v]);
    }
}

#[inline(always)]
unsafe fn forward_k<S: TrainSimd, const K: usize>(
    g: &DwGeom,
    x: *const f32,
    wt: *const f32,
    z: *mut f32,
    n0: usize,
    n1: usize,
) {
    for n in n0..n1 {
        let xi = x.add(n * g.in_len());
        let zi = z.add(n * g.out_len());
        let (ox_lo, ox_hi) = g.interior_columns();
        for oy in 0..g.oh {
            let iy0 = (oy * g.stride) as isize - g.pad as isize;
            let full_rows = iy0 >= 0 && iy0 as usize + K <= g.h;
            for ox in 0..g.ow {
                let ix0 = (ox * g.stride) as isize - g.pad as isize;
                let out = zi.add((oy * g.ow + ox) * g.c);
                let mut ch = 0;
                if full_rows && ox >= ox_lo && ox < ox_hi {
                    while ch + 4 * S::LANES <= g.c {
                        fwd_block::<S, K, 4, true>(g, xi, wt, out, iy0, ix0, ch);
                        ch += 4 * S::LANES;
                    }
                    while ch < g.c {
                        fwd_block::<S, K, 1, true>(g, xi, wt, out, iy0, ix0, ch);
                        ch += S::LANES;
                    }
                } else {
                    while ch + 4 * S::LANES <= g.c {
                        fwd_block::<S, K, 4, false>(g, xi, wt, out, iy0, ix0, ch);
                        ch += 4 * S::LANES;
                    }
                    while ch < g.c {
                        fwd_block::<S, K, 1, false>(g, xi, wt, out, iy0, ix0, ch);
                        ch += S::LANES;
                    }
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn forward_generic<S: TrainSimd>(g: &DwGeom, x: *const f32, wt: *const f32, z: *mut f32, n0: usize, n1: usize) {
    match g.k {
        3 => forward_k::<S, 3>(g, x, wt, z, n0, n1),
        5 => forward_k::<S, 5>(g, x, wt, z, n0, n1),
        k => panic!("depthwise kernel {k} is not built (3 and 5 are)"),
    }
}

multiversion!(pub fn depthwise_forward(g: &DwGeom, x: *const f32, wt: *const f32, z: *mut f32, n0: usize, n1: usize) => forward_generic);

#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn dx_block<S: TrainSimd, const K: usize, const NV: usize, const FULL: bool>(
    g: &DwGeom,
    dz: *const f32,
    wt: *const f32,
    out: *mut f32,
    iy: usize,
    ix: usize,
    ch: usize,
) {
    let mut acc = [S::zero(); NV];
    for ky in 0..K {
        // Output row oy reads input row oy·s - pad + ky. (FULL: stride 1, every tap inside.)
        let t = (iy + g.pad) as isize - ky as isize;
        if !FULL && (t < 0 || !(t as usize).is_multiple_of(g.stride)) {
            continue;
        }
        let oy = if FULL { t as usize } else { t as usize / g.stride };
        if !FULL && oy >= g.oh {
            continue;
        }
        for kx in 0..K {
            let t = (ix + g.pad) as isize - kx as isize;
            if !FULL && (t < 0 || !(t as usize).is_multiple_of(g.stride)) {
                continue;
            }
            let ox = if FULL { t as usize } else { t as usize / g.stride };
            if !FULL && ox >= g.ow {
                continue;
            }
            let dp = dz.add((oy * g.ow + ox) * g.c + ch);
            let wp = wt.add((ky * K + kx) * g.c + ch);
            for v in 0..NV {
                acc[v] = S::fma(S::load(dp.add(v * S::LANES)), S::load(wp.add(v * S::LANES)), acc[v]);
            }
        }
    }
    for v in 0..NV {
        S::store(out.add(ch + v * S::LANES), acc[v]);
    }
}

#[inline(always)]
unsafe fn input_grad_k<S: TrainSimd, const K: usize>(
    g: &DwGeom,
    dz: *const f32,
    wt: *const f32,
    dx: *mut f32,
    n0: usize,
    n1: usize,
) {
    for n in n0..n1 {
        let dzi = dz.add(n * g.out_len());
        let dxi = dx.add(n * g.in_len());
        // Stride 1: input pixel (iy, ix) gathers output pixels iy + pad - ky, all inside when
        // K - 1 - pad <= iy < oh - pad (and the same for columns).
        let inside = |i: usize, o: usize| g.stride == 1 && i + g.pad >= K - 1 && i + g.pad < o;
        for iy in 0..g.h {
            let full_row = inside(iy, g.oh);
            for ix in 0..g.w {
                let out = dxi.add((iy * g.w + ix) * g.c);
                let mut ch = 0;
                if full_row && inside(ix, g.ow) {
                    while ch + 4 * S::LANES <= g.c {
                        dx_block::<S, K, 4, true>(g, dzi, wt, out, iy, ix, ch);
                        ch += 4 * S::LANES;
                    }
                    while ch < g.c {
                        dx_block::<S, K, 1, true>(g, dzi, wt, out, iy, ix, ch);
                        ch += S::LANES;
                    }
                } else {
                    while ch + 4 * S::LANES <= g.c {
                        dx_block::<S, K, 4, false>(g, dzi, wt, out, iy, ix, ch);
                        ch += 4 * S::LANES;
                    }
                    while ch < g.c {
                        dx_block::<S, K, 1, false>(g, dzi, wt, out, iy, ix, ch);
                        ch += S::LANES;
                    }
                }
            }
        }
    }
}

#[inline(always)]
unsafe fn input_grad_generic<S: TrainSimd>(
    g: &DwGeom,
    dz: *const f32,
    wt: *const f32,
    dx: *mut f32,
    n0: usize,
    n1: usize,
) {
    match g.k {
        3 => input_grad_k::<S, 3>(g, dz, wt, dx, n0, n1),
        5 => input_grad_k::<S, 5>(g, dz, wt, dx, n0, n1),
        k => panic!("depthwise kernel {k} is not built (3 and 5 are)"),
    }
}

multiversion!(pub fn depthwise_input_grad(g: &DwGeom, dz: *const f32, wt: *const f32, dx: *mut f32, n0: usize, n1: usize) => input_grad_generic);

/// One output pixel's taps into the accumulators (FULL: no bounds tests).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn wg_pixel<S: TrainSimd, const K: usize, const FULL: bool>(
    g: &DwGeom,
    xi: *const f32,
    d: S::V,
    iy0: isize,
    ix0: isize,
    acc: &mut [[S::V; K]; K],
) {
    for ky in 0..K {
        let iy = iy0 + ky as isize;
        if !FULL && (iy < 0 || iy >= g.h as isize) {
            continue;
        }
        let row = xi.add(iy as usize * g.w * g.c);
        for kx in 0..K {
            let ix = ix0 + kx as isize;
            if !FULL && (ix < 0 || ix >= g.w as isize) {
                continue;
            }
            acc[ky][kx] = S::fma(d, S::load(row.add(ix as usize * g.c)), acc[ky][kx]);
        }
    }
}

/// Per image and band of output rows (its input rows stay in L2 while every channel vector
/// passes over them), per channel vector: the `k·k` taps in registers over the band's pixels,
/// added to `dw` (in a fixed order: images, bands, rows, pixels).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn weight_grad_k<S: TrainSimd, const K: usize>(
    g: &DwGeom,
    x: *const f32,
    dz: *const f32,
    dw: *mut f32,
    n0: usize,
    n1: usize,
) {
    for i in 0..K * K * g.c {
        *dw.add(i) = 0.0;
    }
    let (ox_lo, ox_hi) = g.interior_columns();
    // Output rows per band: about 128 KB of input rows.
    let band = ((32 * 1024 / (g.w * g.c).max(1)).saturating_sub(K) / g.stride).clamp(1, g.oh);
    for n in n0..n1 {
        let mut oy0 = 0;
        while oy0 < g.oh {
            let oy1 = (oy0 + band).min(g.oh);
            let mut ch = 0;
            while ch < g.c {
                let xi = x.add(n * g.in_len() + ch);
                let dzi = dz.add(n * g.out_len() + ch);
                let mut acc = [[S::zero(); K]; K];
                for ky in 0..K {
                    for kx in 0..K {
                        acc[ky][kx] = S::load(dw.add((ky * K + kx) * g.c + ch));
                    }
                }
                for oy in oy0..oy1 {
                    let iy0 = (oy * g.stride) as isize - g.pad as isize;
                    let full_rows = iy0 >= 0 && iy0 as usize + K <= g.h;
                    for ox in 0..g.ow {
                        let ix0 = (ox * g.stride) as isize - g.pad as isize;
                        let d = S::load(dzi.add((oy * g.ow + ox) * g.c));
                        if full_rows && ox >= ox_lo && ox < ox_hi {
                            wg_pixel::<S, K, true>(g, xi, d, iy0, ix0, &mut acc);
                        } else {
                            wg_pixel::<S, K, false>(g, xi, d, iy0, ix0, &mut acc);
                        }
                    }
                }
                for ky in 0..K {
                    for kx in 0..K {
                        S::store(dw.add((ky * K + kx) * g.c + ch), acc[ky][kx]);
                    }
                }
                ch += S::LANES;
            }
            oy0 = oy1;
        }
    }
}

#[inline(always)]
unsafe fn weight_grad_generic<S: TrainSimd>(
    g: &DwGeom,
    x: *const f32,
    dz: *const f32,
    dw: *mut f32,
    n0: usize,
    n1: usize,
) {
    match g.k {
        3 => weight_grad_k::<S, 3>(g, x, dz, dw, n0, n1),
        5 => weight_grad_k::<S, 5>(g, x, dz, dw, n0, n1),
        k => panic!("depthwise kernel {k} is not built (3 and 5 are)"),
    }
}

// `dw[k·k][c] = Σ` over images `n0..n1` (overwrites `dw`).
multiversion!(pub fn depthwise_weight_grad(g: &DwGeom, x: *const f32, dz: *const f32, dw: *mut f32, n0: usize, n1: usize) => weight_grad_generic);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::Isa;
    use crate::train::rng::Rng;

    /// f64 reference: forward, input grad and weight grad for one set of maps.
    fn reference(g: &DwGeom, n: usize, x: &[f32], wt: &[f32], dz: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut z = vec![0.0; n * g.out_len()];
        let mut dx = vec![0.0; n * g.in_len()];
        let mut dw = vec![0.0; g.k * g.k * g.c];
        for b in 0..n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for ky in 0..g.k {
                        for kx in 0..g.k {
                            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                            let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                            if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                continue;
                            }
                            for c in 0..g.c {
                                let xi = b * g.in_len() + (iy as usize * g.w + ix as usize) * g.c + c;
                                let zi = b * g.out_len() + (oy * g.ow + ox) * g.c + c;
                                let wi = (ky * g.k + kx) * g.c + c;
                                z[zi] += x[xi] as f64 * wt[wi] as f64;
                                dx[xi] += dz[zi] as f64 * wt[wi] as f64;
                                dw[wi] += dz[zi] as f64 * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
        (z, dx, dw)
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() <= 1e-5 * scale, "{what}[{i}]: {g} vs {w}");
        }
    }

    #[test]
    fn depthwise_matches_f64() {
        let mut rng = Rng::new(11);
        let cases = [
            (7, 9, 16, 3, 1),
            (8, 8, 32, 3, 2),
            (9, 6, 48, 5, 2),
            (5, 5, 80, 5, 1),
            (1, 1, 16, 3, 1),
            (2, 3, 64, 5, 2),
            (4, 4, 96, 3, 2),
        ];
        for isa in Isa::all_available() {
            for &(h, w, c, k, s) in &cases {
                let g = DwGeom::new(h, w, c, k, s);
                let n = 3;
                let x: Vec<f32> = (0..n * g.in_len()).map(|_| rng.normal()).collect();
                let wt: Vec<f32> = (0..k * k * c).map(|_| rng.normal()).collect();
                let dz: Vec<f32> = (0..n * g.out_len()).map(|_| rng.normal()).collect();
                let (z_ref, dx_ref, dw_ref) = reference(&g, n, &x, &wt, &dz);
                let mut z = vec![0.0; n * g.out_len()];
                let mut dx = vec![0.0; n * g.in_len()];
                let mut dw = vec![0.0; k * k * c];
                unsafe {
                    depthwise_forward(isa, &g, x.as_ptr(), wt.as_ptr(), z.as_mut_ptr(), 0, n);
                    depthwise_input_grad(isa, &g, dz.as_ptr(), wt.as_ptr(), dx.as_mut_ptr(), 0, n);
                    depthwise_weight_grad(isa, &g, x.as_ptr(), dz.as_ptr(), dw.as_mut_ptr(), 0, n);
                }
                let what = format!("{isa} {h}x{w}x{c} k{k} s{s}");
                close(&z, &z_ref, &format!("{what} forward"));
                close(&dx, &dx_ref, &format!("{what} input grad"));
                close(&dw, &dw_ref, &format!("{what} weight grad"));
            }
        }
    }
}
