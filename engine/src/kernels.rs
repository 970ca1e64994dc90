//! The compute kernels, each generic over [`Simd`] and compiled per ISA by `multiversion!`.
//!
//! Activations are NHWC maps of one image ([`MapGeom`]): channels innermost and padded to
//! [`crate::simd::CHANNEL_ALIGN`], with a zero border as wide as the next depthwise conv needs,
//! so depthwise and stem kernels never test bounds. Every kernel fuses its bias (folded
//! BatchNorm) and activation into the store.

use crate::simd::{multiversion, Simd};

/// Where one image's activation map lives in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapGeom {
    pub h: usize,
    pub w: usize,
    /// Channel stride: the channel count padded to the lane multiple.
    pub c: usize,
    /// Zero border, in pixels, on every side.
    pub pad: usize,
}

impl MapGeom {
    /// Floats from one row to the next. A row that is a multiple of 2 KB gets one spare cache
    /// line: rows a multiple of 4 KB apart fall in the same L1 sets, and the rows a depthwise
    /// window (or a GEMM tile spanning rows) reads at once would then evict each other.
    pub fn row_stride(&self) -> usize {
        let dense = (self.w + 2 * self.pad) * self.c;
        if dense.is_multiple_of(512) {
            dense + 16
        } else {
            dense
        }
    }
    pub fn len(&self) -> usize {
        (self.h + 2 * self.pad) * self.row_stride()
    }
    /// Offset of interior pixel (y, x).
    #[inline(always)]
    pub fn offset(&self, y: usize, x: usize) -> usize {
        (y + self.pad) * self.row_stride() + (x + self.pad) * self.c
    }
}

// The kernel descriptors hold raw pointers; threads given disjoint row ranges of one
// descriptor write disjoint memory.
unsafe impl Sync for Gemm {}
unsafe impl Sync for Conv {}

/// Activation codes, a const generic so each epilogue is compiled without a branch.
pub const ACT_NONE: u8 = 0;
pub const ACT_RELU: u8 = 1;
pub const ACT_RELU6: u8 = 2;
pub const ACT_HARDSWISH: u8 = 3;
pub const ACT_HARDSIGMOID: u8 = 4;

#[inline(always)]
unsafe fn activate<S: Simd, const ACT: u8>(x: S::V) -> S::V {
    match ACT {
        ACT_RELU => S::max(x, S::zero()),
        ACT_RELU6 => S::min(S::max(x, S::zero()), S::splat(6.0)),
        ACT_HARDSWISH => {
            let gate = S::min(S::max(S::add(x, S::splat(3.0)), S::zero()), S::splat(6.0));
            S::mul(x, S::mul(gate, S::splat(1.0 / 6.0)))
        }
        ACT_HARDSIGMOID => {
            let gate = S::min(S::max(S::add(x, S::splat(3.0)), S::zero()), S::splat(6.0));
            S::mul(gate, S::splat(1.0 / 6.0))
        }
        _ => x,
    }
}

/// Expands a runtime activation code into the const-generic call.
macro_rules! with_act {
    ($act:expr, $f:ident::<$($g:tt),*>($($arg:expr),*)) => {
        match $act {
            ACT_RELU => $f::<$($g,)* ACT_RELU>($($arg),*),
            ACT_RELU6 => $f::<$($g,)* ACT_RELU6>($($arg),*),
            ACT_HARDSWISH => $f::<$($g,)* ACT_HARDSWISH>($($arg),*),
            ACT_HARDSIGMOID => $f::<$($g,)* ACT_HARDSIGMOID>($($arg),*),
            _ => $f::<$($g,)* ACT_NONE>($($arg),*),
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Pointwise (1x1) convolution and Linear layers: a GEMM with a fused epilogue.

/// Weights packed for [`pointwise`]: panels of `2 · lanes` output channels, each `[k][panel]`,
/// zero-filled past the real output channels.
pub fn pack_gemm_weights(weights: &[f32], n: usize, k: usize, lanes: usize) -> (Vec<f32>, usize) {
    // `weights` is torch's [n, k] (out, in).
    let nr = 2 * lanes;
    let n_pad = crate::simd::pad_channels(n);
    let panels = n_pad.div_ceil(nr);
    let mut packed = vec![0.0; panels * k * nr];
    for p in 0..panels {
        for kk in 0..k {
            for j in 0..nr {
                let o = p * nr + j;
                if o < n {
                    packed[(p * k + kk) * nr + j] = weights[o * k + kk];
                }
            }
        }
    }
    (packed, n_pad)
}

/// One register tile: `MR` pixels × `NV` vectors of output channels, over the whole `k`.
// Indexed loops over const bounds: they unroll, and the accumulators stay in registers.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn gemm_tile<S: Simd, const MR: usize, const NV: usize, const ACT: u8>(
    k: usize,
    a: &[*const f32; MR],
    b: *const f32,
    nr: usize,
    bias: *const f32,
    c: &[*mut f32; MR],
    res: Option<&[*const f32; MR]>,
) {
    // No closures here: a closure is a separate function without the caller's target features,
    // and the intrinsics in it would not be inlined.
    let mut bias_v = [S::zero(); NV];
    for (j, v) in bias_v.iter_mut().enumerate() {
        *v = S::load(bias.add(j * S::LANES));
    }
    let mut acc = [bias_v; MR];
    for kk in 0..k {
        let bp = b.add(kk * nr);
        let mut bv = [S::zero(); NV];
        for (j, v) in bv.iter_mut().enumerate() {
            *v = S::load(bp.add(j * S::LANES));
        }
        for r in 0..MR {
            let av = S::splat(*a[r].add(kk));
            for j in 0..NV {
                acc[r][j] = S::fma(av, bv[j], acc[r][j]);
            }
        }
    }
    for r in 0..MR {
        for j in 0..NV {
            let mut y = activate::<S, ACT>(acc[r][j]);
            if let Some(res) = res {
                y = S::add(y, S::load(res[r].add(j * S::LANES)));
            }
            S::store(c[r].add(j * S::LANES), y);
        }
    }
}

#[inline(always)]
unsafe fn gemm_rows<S: Simd, const MR: usize, const ACT: u8>(g: &Gemm, m: usize, rows: usize, panels: (usize, usize)) {
    // Rows past the end repeat the last real row: they compute and store the same values.
    // Pixel m is (m / w, m % w) in every operand (they share the spatial shape); one division
    // per tile, then a running (y, x), since a division per row costs as much as a small
    // tile's FMAs.
    let w = g.c_geom.w;
    let (mut y, mut x) = (m / w, m % w);
    let mut a = [g.a; MR];
    let mut c = [g.c; MR];
    let mut res = [g.res; MR];
    for r in 0..rows.min(MR) {
        a[r] = g.a.add(g.a_geom.offset(y, x));
        c[r] = g.c.add(g.c_geom.offset(y, x));
        if !g.res.is_null() {
            res[r] = g.res.add(g.res_geom.offset(y, x));
        }
        x += 1;
        if x == w {
            x = 0;
            y += 1;
        }
    }
    for r in rows.min(MR)..MR {
        (a[r], c[r], res[r]) = (a[r - 1], c[r - 1], res[r - 1]);
    }
    let res: Option<[*const f32; MR]> = (!g.res.is_null()).then_some(res);
    let nr = 2 * S::LANES;
    for p in panels.0..panels.1 {
        let b = g.b.add(p * g.k * nr);
        let bias = g.bias.add(p * nr);
        let cp: [*mut f32; MR] = std::array::from_fn(|r| c[r].add(p * nr));
        let rp: Option<[*const f32; MR]> = res.map(|res| std::array::from_fn(|r| res[r].add(p * nr)));
        if g.n_pad - p * nr >= nr {
            gemm_tile::<S, MR, 2, ACT>(g.k, &a, b, nr, bias, &cp, rp.as_ref());
        } else {
            gemm_tile::<S, MR, 1, ACT>(g.k, &a, b, nr, bias, &cp, rp.as_ref());
        }
    }
}

/// C = act(A · B + bias) (+ residual), over pixels `m0..m1` of the A/C maps.
pub struct Gemm {
    pub a: *const f32,
    pub a_geom: MapGeom,
    /// Real input channels (≤ `a_geom.c`; padding channels are skipped).
    pub k: usize,
    pub b: *const f32,
    pub n_pad: usize,
    pub bias: *const f32,
    pub act: u8,
    pub c: *mut f32,
    pub c_geom: MapGeom,
    /// Null when there is no residual.
    pub res: *const f32,
    pub res_geom: MapGeom,
}

/// Above this much A (pixels × input channels), row tiles go outer (see `run` below).
pub const GEMM_PANEL_OUTER_MAX_A_BYTES: usize = 640 * 1024;

/// Weights this large do not stay in L2 between row tiles: stream them once, panel by panel.
pub fn panel_outer_pays(k: usize, n_pad: usize) -> bool {
    k * n_pad * 4 > 512 * 1024
}

#[inline(always)]
unsafe fn gemm_generic<S: Simd>(g: &Gemm, m0: usize, m1: usize) {
    #[inline(always)]
    unsafe fn run<S: Simd, const MR: usize, const ACT: u8>(g: &Gemm, m0: usize, m1: usize) {
        let panels = g.n_pad.div_ceil(2 * S::LANES);
        // Late layers (few pixels, wide weights): one weight panel at a time over all pixels,
        // so each panel comes from L3 once rather than once per row tile. Early layers (many
        // pixels, small weights): all panels per row tile, so the A rows stay in L1.
        let a_bytes = (m1 - m0) * g.k * 4;
        if a_bytes <= GEMM_PANEL_OUTER_MAX_A_BYTES && panel_outer_pays(g.k, g.n_pad) {
            for p in 0..panels {
                rows_over::<S, MR, ACT>(g, m0, m1, (p, p + 1));
            }
        } else {
            rows_over::<S, MR, ACT>(g, m0, m1, (0, panels));
        }
    }
    // A function, not a closure: a closure would be compiled without the ISA's target features.
    #[inline(always)]
    unsafe fn rows_over<S: Simd, const MR: usize, const ACT: u8>(g: &Gemm, m0: usize, m1: usize, panels: (usize, usize)) {
        let mut m = m0;
        while m < m1 {
            let rows = MR.min(m1 - m);
            if rows == MR || rows > MR / 2 {
                gemm_rows::<S, MR, ACT>(g, m, rows, panels);
            } else if rows > MR / 4 {
                gemm_rows_small::<S, MR, ACT>(g, m, rows, panels);
            } else {
                gemm_rows_tiny::<S, MR, ACT>(g, m, rows, panels);
            }
            m += rows;
        }
    }
    // Remainders use a half- or quarter-height tile rather than computing up to MR-1 dead rows.
    #[inline(always)]
    unsafe fn gemm_rows_small<S: Simd, const MR: usize, const ACT: u8>(g: &Gemm, m: usize, rows: usize, panels: (usize, usize)) {
        match MR {
            12 => gemm_rows::<S, 6, ACT>(g, m, rows, panels),
            6 => gemm_rows::<S, 3, ACT>(g, m, rows, panels),
            _ => gemm_rows::<S, 2, ACT>(g, m, rows, panels),
        }
    }
    #[inline(always)]
    unsafe fn gemm_rows_tiny<S: Simd, const MR: usize, const ACT: u8>(g: &Gemm, m: usize, rows: usize, panels: (usize, usize)) {
        // One row (a batch-1 classifier) must not pay for three.
        match rows {
            1 => gemm_rows::<S, 1, ACT>(g, m, rows, panels),
            2 => gemm_rows::<S, 2, ACT>(g, m, rows, panels),
            _ => gemm_rows::<S, 3, ACT>(g, m, rows, panels),
        }
    }
    match S::GEMM_ROWS {
        12 => with_act!(g.act, run::<S, 12>(g, m0, m1)),
        6 => with_act!(g.act, run::<S, 6>(g, m0, m1)),
        _ => with_act!(g.act, run::<S, 4>(g, m0, m1)),
    }
}

multiversion!(pub fn gemm(g: &Gemm, m0: usize, m1: usize) => gemm_generic);

// ---------------------------------------------------------------------------------------------
// Depthwise k x k convolution, stride 1 or 2.

/// A k x k convolution over output rows `y0..y1`, depthwise ([`depthwise`]: weights
/// `[k·k][c]`) or full with few input channels ([`direct_conv`], the stem: weights
/// `[k][k][cin][cout]`). Bias `[c]`; the input border must be at least `(k - 1) / 2`.
#[derive(Clone, Copy)]
pub struct Conv {
    pub input: *const f32,
    pub in_geom: MapGeom,
    /// The bordered input row stored first at `input` (0 for a whole map; a band's first row
    /// when `input` holds only a band of rows).
    pub in_row0: usize,
    /// Input channels read by the full conv (the depthwise conv reads all of `in_geom.c`).
    pub cin: usize,
    pub kernel: usize,
    pub stride: usize,
    pub weights: *const f32,
    pub bias: *const f32,
    pub act: u8,
    pub output: *mut f32,
    pub out_geom: MapGeom,
    /// The output row stored first in `output` (0 for a whole map; a band's first row when
    /// `output` holds only a band of rows).
    pub out_row0: usize,
}

impl Conv {
    /// The same conv writing a band of rows starting at output row `row0` to `output`. (A
    /// method, so that closures capture the whole job, which is `Sync`, not its raw fields.)
    pub fn into_band(self, output: *mut f32, out_geom: MapGeom, row0: usize) -> Conv {
        Conv { output, out_geom, out_row0: row0, ..self }
    }

    /// The same conv reading its input from a band of bordered rows starting at row `row0`.
    pub fn reading_band(self, input: *const f32, row0: usize) -> Conv {
        Conv { input, in_row0: row0, ..self }
    }
}

/// Output pixels computed together: independent accumulator chains hide FMA latency.
const DW_PIXELS: usize = 4;

#[inline(always)]
unsafe fn depthwise_rows<S: Simd, const K: usize, const ACT: u8>(d: &Conv, y0: usize, y1: usize) {
    let ig = d.in_geom;
    let og = d.out_geom;
    let c = ig.c;
    let s = d.stride;
    let off = ig.pad - (K - 1) / 2;
    let in_row = ig.row_stride();
    // Pixels outer, channels inner: each pixel's channels are one contiguous run, read in
    // order. (Channels outer strides through memory by a whole pixel, 2-4 KB on the late
    // layers, and those addresses collide in the same L1 sets.)
    for oy in y0..y1 {
        // Top-left tap of output pixel (oy, 0), in the bordered input.
        let base = d.input.add((oy * s + off - d.in_row0) * in_row + off * c);
        let out_row = d.output.add(og.offset(oy - d.out_row0, 0));
        let mut ox = 0;
        while ox < og.w && og.w >= DW_PIXELS {
            // The last group overlaps the one before rather than leaving single pixels,
            // whose one accumulator chain would wait on FMA latency.
            ox = ox.min(og.w - DW_PIXELS);
            let mut cv = 0;
            while cv < c {
                let mut acc = [S::load(d.bias.add(cv)); DW_PIXELS];
                for ky in 0..K {
                    let row = base.add(ky * in_row + cv);
                    let taps = d.weights.add(ky * K * c + cv);
                    for kx in 0..K {
                        let wv = S::load(taps.add(kx * c));
                        for (j, acc) in acc.iter_mut().enumerate() {
                            *acc = S::fma(S::load(row.add(((ox + j) * s + kx) * c)), wv, *acc);
                        }
                    }
                }
                for (j, acc) in acc.iter().enumerate() {
                    S::store(out_row.add((ox + j) * og.c + cv), activate::<S, ACT>(*acc));
                }
                cv += S::LANES;
            }
            ox += DW_PIXELS;
        }
        while ox < og.w {
            let mut cv = 0;
            while cv < c {
                let mut acc = S::load(d.bias.add(cv));
                for ky in 0..K {
                    let row = base.add(ky * in_row + cv);
                    let taps = d.weights.add(ky * K * c + cv);
                    for kx in 0..K {
                        acc = S::fma(S::load(row.add((ox * s + kx) * c)), S::load(taps.add(kx * c)), acc);
                    }
                }
                S::store(out_row.add(ox * og.c + cv), activate::<S, ACT>(acc));
                cv += S::LANES;
            }
            ox += 1;
        }
    }
}

/// 3x3 stride-1 depthwise, two output rows at a time: the four input rows they need are each
/// loaded once (six pixels per row into registers) and feed both rows' accumulators, a third
/// of the loads per FMA of the one-row kernel.
#[inline(always)]
unsafe fn depthwise_3x3s1_row_pairs<S: Simd, const ACT: u8>(d: &Conv, y0: usize, y1: usize) {
    const P: usize = DW_PIXELS;
    let ig = d.in_geom;
    let og = d.out_geom;
    let c = ig.c;
    let off = ig.pad - 1;
    let in_row = ig.row_stride();
    let mut oy = y0;
    while oy + 2 <= y1 && og.w >= P {
        let base = d.input.add((oy + off - d.in_row0) * in_row + off * c);
        let out0 = d.output.add(og.offset(oy - d.out_row0, 0));
        let out1 = d.output.add(og.offset(oy + 1 - d.out_row0, 0));
        let mut ox = 0;
        while ox < og.w {
            ox = ox.min(og.w - P);
            let mut cv = 0;
            while cv < c {
                let bias = S::load(d.bias.add(cv));
                let mut acc0 = [bias; P];
                let mut acc1 = [bias; P];
                for r in 0..4 {
                    let row = base.add(r * in_row + (ox * c) + cv);
                    let mut x = [S::zero(); P + 2];
                    for (i, x) in x.iter_mut().enumerate() {
                        *x = S::load(row.add(i * c));
                    }
                    if r < 3 {
                        for kx in 0..3 {
                            let wv = S::load(d.weights.add((r * 3 + kx) * c + cv));
                            for j in 0..P {
                                acc0[j] = S::fma(x[j + kx], wv, acc0[j]);
                            }
                        }
                    }
                    if r >= 1 {
                        for kx in 0..3 {
                            let wv = S::load(d.weights.add(((r - 1) * 3 + kx) * c + cv));
                            for j in 0..P {
                                acc1[j] = S::fma(x[j + kx], wv, acc1[j]);
                            }
                        }
                    }
                }
                for j in 0..P {
                    S::store(out0.add((ox + j) * og.c + cv), activate::<S, ACT>(acc0[j]));
                    S::store(out1.add((ox + j) * og.c + cv), activate::<S, ACT>(acc1[j]));
                }
                cv += S::LANES;
            }
            ox += P;
        }
        oy += 2;
    }
    if oy < y1 {
        depthwise_rows::<S, 3, ACT>(d, oy, y1);
    }
}

#[inline(always)]
unsafe fn depthwise_generic<S: Simd>(d: &Conv, y0: usize, y1: usize) {
    match d.kernel {
        3 if d.stride == 1 => with_act!(d.act, depthwise_3x3s1_row_pairs::<S>(d, y0, y1)),
        3 => with_act!(d.act, depthwise_rows::<S, 3>(d, y0, y1)),
        5 => with_act!(d.act, depthwise_rows::<S, 5>(d, y0, y1)),
        k => panic!("depthwise kernel {k} is not built (3 and 5 are)"),
    }
}

multiversion!(pub fn depthwise(d: &Conv, y0: usize, y1: usize) => depthwise_generic);

// ---------------------------------------------------------------------------------------------
// Dense k x k convolution with few input channels: the stem.

const STEM_PIXELS: usize = 4;

#[inline(always)]
unsafe fn direct_rows<S: Simd, const ACT: u8>(d: &Conv, y0: usize, y1: usize) {
    let (ig, og) = (d.in_geom, d.out_geom);
    let (k, s, cin, cout) = (d.kernel, d.stride, d.cin, og.c);
    let off = ig.pad - (k - 1) / 2;
    let in_row = ig.row_stride();
    for oy in y0..y1 {
        let base = d.input.add((oy * s + off - d.in_row0) * in_row + off * ig.c);
        let out_row = d.output.add(og.offset(oy - d.out_row0, 0));
        let mut ox = 0;
        while ox < og.w {
            let px = STEM_PIXELS.min(og.w - ox);
            let mut cv = 0;
            while cv < cout {
                let bias = S::load(d.bias.add(cv));
                let mut acc = [bias; STEM_PIXELS];
                for ky in 0..k {
                    for kx in 0..k {
                        for ci in 0..cin {
                            let wv = S::load(d.weights.add(((ky * k + kx) * cin + ci) * cout + cv));
                            for (j, acc) in acc.iter_mut().enumerate() {
                                // Pixels past the row end reread the last one.
                                let x = (ox + j.min(px - 1)) * s + kx;
                                let v = *base.add(ky * in_row + x * ig.c + ci);
                                *acc = S::fma(S::splat(v), wv, *acc);
                            }
                        }
                    }
                }
                for (j, acc) in acc.iter().enumerate().take(px) {
                    S::store(out_row.add((ox + j) * og.c + cv), activate::<S, ACT>(*acc));
                }
                cv += S::LANES;
            }
            ox += px;
        }
    }
}

#[inline(always)]
unsafe fn direct_generic<S: Simd>(d: &Conv, y0: usize, y1: usize) {
    with_act!(d.act, direct_rows::<S>(d, y0, y1))
}

multiversion!(pub fn direct_conv(d: &Conv, y0: usize, y1: usize) => direct_generic);

// ---------------------------------------------------------------------------------------------
// Global average pooling and squeeze-excite.

/// `out[c] = mean over the interior of x[.., c]` for the padded channel count.
#[inline(always)]
unsafe fn mean_pool_generic<S: Simd>(x: *const f32, g: MapGeom, out: *mut f32) {
    let mut cv = 0;
    let scale = S::splat(1.0 / (g.h * g.w) as f32);
    while cv < g.c {
        // Four partial sums per vector for latency; the order of additions is fixed.
        let mut acc = [S::zero(); 4];
        let mut i = 0;
        for y in 0..g.h {
            let row = x.add(g.offset(y, 0) + cv);
            for xx in 0..g.w {
                acc[i & 3] = S::add(acc[i & 3], S::load(row.add(xx * g.c)));
                i += 1;
            }
        }
        let sum = S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3]));
        S::store(out.add(cv), S::mul(sum, scale));
        cv += S::LANES;
    }
}

multiversion!(pub fn mean_pool(x: *const f32, g: MapGeom, out: *mut f32) => mean_pool_generic);

/// Squeeze-excite in place: gate = hsigmoid(fc2 · relu(fc1 · mean(x) + b1) + b2); x *= gate.
/// `fc1` is `[c][cs_pad]` (input-major), `fc2` is `[cs][c_pad]`; `scratch` holds `c_pad + cs_pad`.
pub struct SqueezeExcite {
    pub x: *mut f32,
    pub geom: MapGeom,
    pub channels: usize,
    pub squeeze: usize,
    pub squeeze_pad: usize,
    pub fc1: *const f32,
    pub b1: *const f32,
    pub fc2: *const f32,
    pub b2: *const f32,
    pub scratch: *mut f32,
}

/// `out = act(bias + Σ_r x[r] · w[r, :])` for `w` `[rows][cols]` (cols a lane multiple): the
/// matrix is streamed row by row, with up to 8 independent accumulators per pass.
#[inline(always)]
unsafe fn vec_mat<S: Simd, const ACT: u8>(x: *const f32, rows: usize, w: *const f32, cols: usize, bias: *const f32, out: *mut f32) {
    let mut c0 = 0;
    while c0 < cols {
        let left = (cols - c0) / S::LANES;
        c0 += S::LANES
            * if left >= 8 {
                vec_mat_columns::<S, 8, ACT>(x, rows, w, cols, bias, out, c0)
            } else if left >= 4 {
                vec_mat_columns::<S, 4, ACT>(x, rows, w, cols, bias, out, c0)
            } else if left >= 2 {
                vec_mat_columns::<S, 2, ACT>(x, rows, w, cols, bias, out, c0)
            } else {
                vec_mat_columns::<S, 1, ACT>(x, rows, w, cols, bias, out, c0)
            };
    }
}

#[inline(always)]
unsafe fn vec_mat_columns<S: Simd, const NV: usize, const ACT: u8>(
    x: *const f32,
    rows: usize,
    w: *const f32,
    cols: usize,
    bias: *const f32,
    out: *mut f32,
    c0: usize,
) -> usize {
    let mut acc = [S::zero(); NV];
    for (v, acc) in acc.iter_mut().enumerate() {
        *acc = S::load(bias.add(c0 + v * S::LANES));
    }
    for r in 0..rows {
        let xv = S::splat(*x.add(r));
        let row = w.add(r * cols + c0);
        for (v, acc) in acc.iter_mut().enumerate() {
            *acc = S::fma(xv, S::load(row.add(v * S::LANES)), *acc);
        }
    }
    for (v, acc) in acc.iter().enumerate() {
        S::store(out.add(c0 + v * S::LANES), activate::<S, ACT>(*acc));
    }
    NV
}

#[inline(always)]
unsafe fn squeeze_excite_generic<S: Simd>(se: &SqueezeExcite) {
    let g = se.geom;
    let mean = se.scratch;
    let hidden = se.scratch.add(g.c);
    mean_pool_generic::<S>(se.x, g, mean);
    // hidden = relu(b1 + Σ_c mean[c] · fc1[c, :]);
    // gate = hsigmoid(b2 + Σ_j hidden[j] · fc2[j, :]), written over `mean`.
    vec_mat::<S, ACT_RELU>(mean, se.channels, se.fc1, se.squeeze_pad, se.b1, hidden);
    vec_mat::<S, ACT_HARDSIGMOID>(hidden, se.squeeze, se.fc2, g.c, se.b2, mean);
    for y in 0..g.h {
        let row = se.x.add(g.offset(y, 0));
        for xx in 0..g.w {
            let px = row.add(xx * g.c);
            let mut cv = 0;
            while cv < g.c {
                S::store(px.add(cv), S::mul(S::load(px.add(cv)), S::load(mean.add(cv))));
                cv += S::LANES;
            }
        }
    }
}

multiversion!(pub fn squeeze_excite(se: &SqueezeExcite) => squeeze_excite_generic);
