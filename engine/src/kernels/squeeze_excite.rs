//! Squeeze-excite (V3), in place on a map: pool it to one vector ([`mean_pool_generic`]), pass
//! that through two small fully connected layers (`vec_mat`: ReLU, then hard sigmoid) to get one
//! gate per channel, and scale every pixel by the gate. The fully connected layers are one
//! vector times a matrix, too small for the GEMM's tiles: their weights are streamed row by row
//! into several independent column accumulators instead.

use super::activation::{activate, ACT_HARDSIGMOID, ACT_RELU};
use super::pooling::mean_pool_generic;
use super::MapGeom;
use crate::simd::{multiversion, Simd};

/// Squeeze-excite in place: gate = hsigmoid(fc2 · relu(fc1 · mean(x) + b1) + b2); x *= gate.
/// `fc1` is `[c][cs_pad]` (input-major), `fc2` is `[cs][c_pad]`, each packed by
/// [`pack_vec_mat`] for the ISA's lanes; `scratch` holds `c_pad + cs_pad`.
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

/// Vectors per pass of [`vec_mat`] over the columns from `first_col` (of `cols`, a lane
/// multiple): up to 8 independent accumulators.
fn pass_vectors(cols: usize, first_col: usize, lanes: usize) -> usize {
    match (cols - first_col) / lanes {
        v if v >= 8 => 8,
        v if v >= 4 => 4,
        v if v >= 2 => 2,
        _ => 1,
    }
}

/// `w` `[rows][cols]` (cols a lane multiple) in the order [`vec_mat`] reads it: the columns of
/// each pass together, `[rows][pass width]`, one pass after another. Each pass then streams one
/// contiguous run of memory instead of a slice of every row (a stride of a whole row, which the
/// hardware prefetchers follow poorly; the SE weights come from L3 or memory once per pass).
pub fn pack_vec_mat(w: &[f32], rows: usize, cols: usize, lanes: usize) -> Vec<f32> {
    let mut packed = Vec::with_capacity(rows * cols);
    let mut first_col = 0;
    while first_col < cols {
        let width = pass_vectors(cols, first_col, lanes) * lanes;
        for r in 0..rows {
            packed.extend_from_slice(&w[r * cols + first_col..r * cols + first_col + width]);
        }
        first_col += width;
    }
    packed
}

/// `out = act(bias + Σ_r x[r] · w[r, :])` for `w` `[rows][cols]` (cols a lane multiple) packed
/// by [`pack_vec_mat`]: the matrix is streamed pass by pass, with up to 8 independent
/// accumulators per pass.
#[inline(always)]
unsafe fn vec_mat<S: Simd, const ACT: u8>(
    x: *const f32,
    rows: usize,
    w: *const f32,
    cols: usize,
    bias: *const f32,
    out: *mut f32,
) {
    let mut first_col = 0;
    while first_col < cols {
        first_col += S::LANES
            * match pass_vectors(cols, first_col, S::LANES) {
                8 => vec_mat_columns::<S, 8, ACT>(x, rows, w, bias, out, first_col),
                4 => vec_mat_columns::<S, 4, ACT>(x, rows, w, bias, out, first_col),
                2 => vec_mat_columns::<S, 2, ACT>(x, rows, w, bias, out, first_col),
                _ => vec_mat_columns::<S, 1, ACT>(x, rows, w, bias, out, first_col),
            };
    }
}

/// One pass of [`vec_mat`]: columns `first_col..first_col + VECTORS · LANES`, over every row;
/// returns `VECTORS`.
#[inline(always)]
unsafe fn vec_mat_columns<S: Simd, const VECTORS: usize, const ACT: u8>(
    x: *const f32,
    rows: usize,
    w: *const f32,
    bias: *const f32,
    out: *mut f32,
    first_col: usize,
) -> usize {
    // This pass's columns, `[rows][VECTORS · LANES]`, follow the passes before it.
    let w = w.add(rows * first_col);
    let width = VECTORS * S::LANES;
    let mut acc = [S::zero(); VECTORS];
    for (v, acc) in acc.iter_mut().enumerate() {
        *acc = S::load(bias.add(first_col + v * S::LANES));
    }
    for r in 0..rows {
        let x_value = S::splat(*x.add(r));
        let row = w.add(r * width);
        for (v, acc) in acc.iter_mut().enumerate() {
            *acc = S::fma(x_value, S::load(row.add(v * S::LANES)), *acc);
        }
    }
    for (v, acc) in acc.iter().enumerate() {
        S::store(out.add(first_col + v * S::LANES), activate::<S, ACT>(*acc));
    }
    VECTORS
}

#[inline(always)]
unsafe fn squeeze_excite_generic<S: Simd>(se: &SqueezeExcite) {
    let geom = se.geom;
    let mean = se.scratch;
    let hidden = se.scratch.add(geom.c);
    mean_pool_generic::<S>(se.x, geom, mean);
    // hidden = relu(b1 + Σ_c mean[c] · fc1[c, :]);
    // gate = hsigmoid(b2 + Σ_j hidden[j] · fc2[j, :]), written over `mean`.
    vec_mat::<S, ACT_RELU>(mean, se.channels, se.fc1, se.squeeze_pad, se.b1, hidden);
    vec_mat::<S, ACT_HARDSIGMOID>(hidden, se.squeeze, se.fc2, geom.c, se.b2, mean);
    for y in 0..geom.h {
        let row = se.x.add(geom.offset(y, 0));
        for x in 0..geom.w {
            let pixel = row.add(x * geom.c);
            let mut channel = 0;
            while channel < geom.c {
                S::store(pixel.add(channel), S::mul(S::load(pixel.add(channel)), S::load(mean.add(channel))));
                channel += S::LANES;
            }
        }
    }
}

multiversion!(pub fn squeeze_excite(se: &SqueezeExcite) => squeeze_excite_generic);
