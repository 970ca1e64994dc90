//! Pointwise (1x1) convolutions and Linear layers: one GEMM, `C = act(A · B + bias) (+ residual)`,
//! with the epilogue fused into the store. In GEMM terms M is pixels (the rows of the A and C
//! maps, addressed through their [`MapGeom`]s), K is input channels and N output channels. B is
//! packed once at load ([`pack_gemm_weights`]) into panels two vectors wide; a register tile is
//! `TILE_ROWS` pixels by one panel over the whole K, with the tile height per ISA
//! (`Simd::GEMM_ROWS`) and half- and quarter-height tiles for the remainder. Whether row tiles
//! or weight panels go outer depends on the sizes of A and B ([`panel_outer_pays`]).

use super::activation::{activate, with_act};
use super::MapGeom;
use crate::simd::{multiversion, Simd};

/// Weights packed for [`gemm`]: panels of `2 · lanes` output channels, each `[k][panel]`,
/// zero-filled past the real output channels.
pub fn pack_gemm_weights(weights: &[f32], n: usize, k: usize, lanes: usize) -> (Vec<f32>, usize) {
    // `weights` is torch's [n, k] (out, in).
    let panel_width = 2 * lanes;
    let n_pad = crate::simd::pad_channels(n);
    let panels = n_pad.div_ceil(panel_width);
    let mut packed = vec![0.0; panels * k * panel_width];
    for panel in 0..panels {
        for input in 0..k {
            for j in 0..panel_width {
                let output = panel * panel_width + j;
                if output < n {
                    packed[(panel * k + input) * panel_width + j] = weights[output * k + input];
                }
            }
        }
    }
    (packed, n_pad)
}

/// One register tile: `TILE_ROWS` pixels × `TILE_VECTORS` vectors of output channels, over the
/// whole `k`.
// Indexed loops over const bounds: they unroll, and the accumulators stay in registers.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn gemm_tile<S: Simd, const TILE_ROWS: usize, const TILE_VECTORS: usize, const ACT: u8>(
    k: usize,
    a: &[*const f32; TILE_ROWS],
    b: *const f32,
    panel_width: usize,
    bias: *const f32,
    c: &[*mut f32; TILE_ROWS],
    res: Option<&[*const f32; TILE_ROWS]>,
) {
    // No closures here: a closure is a separate function without the caller's target features,
    // and the intrinsics in it would not be inlined.
    let mut bias_vectors = [S::zero(); TILE_VECTORS];
    for (j, v) in bias_vectors.iter_mut().enumerate() {
        *v = S::load(bias.add(j * S::LANES));
    }
    let mut acc = [bias_vectors; TILE_ROWS];
    for input in 0..k {
        let b_row = b.add(input * panel_width);
        let mut b_vectors = [S::zero(); TILE_VECTORS];
        for (j, v) in b_vectors.iter_mut().enumerate() {
            *v = S::load(b_row.add(j * S::LANES));
        }
        for r in 0..TILE_ROWS {
            let a_value = S::splat(*a[r].add(input));
            for j in 0..TILE_VECTORS {
                acc[r][j] = S::fma(a_value, b_vectors[j], acc[r][j]);
            }
        }
    }
    for r in 0..TILE_ROWS {
        for j in 0..TILE_VECTORS {
            let mut y = activate::<S, ACT>(acc[r][j]);
            if let Some(res) = res {
                y = S::add(y, S::load(res[r].add(j * S::LANES)));
            }
            S::store(c[r].add(j * S::LANES), y);
        }
    }
}

#[inline(always)]
unsafe fn gemm_rows<S: Simd, const TILE_ROWS: usize, const ACT: u8>(
    g: &Gemm,
    m: usize,
    rows: usize,
    panels: (usize, usize),
) {
    // Rows past the end repeat the last real row: they compute and store the same values.
    // Pixel m is (m / w, m % w) in every operand (they share the spatial shape); one division
    // per tile, then a running (y, x), since a division per row costs as much as a small
    // tile's FMAs.
    let w = g.c_geom.w;
    let (mut y, mut x) = (m / w, m % w);
    let mut a = [g.a; TILE_ROWS];
    let mut c = [g.c; TILE_ROWS];
    let mut res = [g.res; TILE_ROWS];
    for r in 0..rows.min(TILE_ROWS) {
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
    for r in rows.min(TILE_ROWS)..TILE_ROWS {
        (a[r], c[r], res[r]) = (a[r - 1], c[r - 1], res[r - 1]);
    }
    let res: Option<[*const f32; TILE_ROWS]> = (!g.res.is_null()).then_some(res);
    let panel_width = 2 * S::LANES;
    for panel in panels.0..panels.1 {
        let b = g.b.add(panel * g.k * panel_width);
        let bias = g.bias.add(panel * panel_width);
        let c_panel: [*mut f32; TILE_ROWS] = std::array::from_fn(|r| c[r].add(panel * panel_width));
        let res_panel: Option<[*const f32; TILE_ROWS]> =
            res.map(|res| std::array::from_fn(|r| res[r].add(panel * panel_width)));
        if g.n_pad - panel * panel_width >= panel_width {
            gemm_tile::<S, TILE_ROWS, 2, ACT>(g.k, &a, b, panel_width, bias, &c_panel, res_panel.as_ref());
        } else {
            gemm_tile::<S, TILE_ROWS, 1, ACT>(g.k, &a, b, panel_width, bias, &c_panel, res_panel.as_ref());
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

// The kernel descriptors hold raw pointers; threads given disjoint row ranges of one
// descriptor write disjoint memory.
unsafe impl Sync for Gemm {}

/// Above this much A (pixels × input channels), row tiles go outer (see `run` below).
pub const GEMM_PANEL_OUTER_MAX_A_BYTES: usize = 640 * 1024;

/// Weights this large do not stay in L2 between row tiles: stream them once, panel by panel.
pub fn panel_outer_pays(k: usize, n_pad: usize) -> bool {
    k * n_pad * 4 > 512 * 1024
}

#[inline(always)]
unsafe fn gemm_generic<S: Simd>(g: &Gemm, m0: usize, m1: usize) {
    #[inline(always)]
    unsafe fn run<S: Simd, const TILE_ROWS: usize, const ACT: u8>(g: &Gemm, m0: usize, m1: usize) {
        let panels = g.n_pad.div_ceil(2 * S::LANES);
        // Late layers (few pixels, wide weights): one weight panel at a time over all pixels,
        // so each panel comes from L3 once rather than once per row tile. Early layers (many
        // pixels, small weights): all panels per row tile, so the A rows stay in L1.
        let a_bytes = (m1 - m0) * g.k * 4;
        if a_bytes <= GEMM_PANEL_OUTER_MAX_A_BYTES && panel_outer_pays(g.k, g.n_pad) {
            for panel in 0..panels {
                rows_over::<S, TILE_ROWS, ACT>(g, m0, m1, (panel, panel + 1));
            }
        } else {
            rows_over::<S, TILE_ROWS, ACT>(g, m0, m1, (0, panels));
        }
    }
    // A function, not a closure: a closure would be compiled without the ISA's target features.
    #[inline(always)]
    unsafe fn rows_over<S: Simd, const TILE_ROWS: usize, const ACT: u8>(
        g: &Gemm,
        m0: usize,
        m1: usize,
        panels: (usize, usize),
    ) {
        let mut m = m0;
        while m < m1 {
            let rows = TILE_ROWS.min(m1 - m);
            if rows == TILE_ROWS || rows > TILE_ROWS / 2 {
                gemm_rows::<S, TILE_ROWS, ACT>(g, m, rows, panels);
            } else if rows > TILE_ROWS / 4 {
                gemm_rows_small::<S, TILE_ROWS, ACT>(g, m, rows, panels);
            } else {
                gemm_rows_tiny::<S, TILE_ROWS, ACT>(g, m, rows, panels);
            }
            m += rows;
        }
    }
    // Remainders use a half- or quarter-height tile rather than computing up to TILE_ROWS-1
    // dead rows.
    #[inline(always)]
    unsafe fn gemm_rows_small<S: Simd, const TILE_ROWS: usize, const ACT: u8>(
        g: &Gemm,
        m: usize,
        rows: usize,
        panels: (usize, usize),
    ) {
        match TILE_ROWS {
            12 => gemm_rows::<S, 6, ACT>(g, m, rows, panels),
            6 => gemm_rows::<S, 3, ACT>(g, m, rows, panels),
            _ => gemm_rows::<S, 2, ACT>(g, m, rows, panels),
        }
    }
    #[inline(always)]
    unsafe fn gemm_rows_tiny<S: Simd, const TILE_ROWS: usize, const ACT: u8>(
        g: &Gemm,
        m: usize,
        rows: usize,
        panels: (usize, usize),
    ) {
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
