//! The one GEMM of training: `C (+)= op(A) · B`, with `op(A)` either A or Aᵀ, B and C row-major
//! with their columns contiguous. It covers the three products of a 1x1 conv (and of every
//! Linear, the squeeze-excite's two FCs, and the stem through im2col), with activations as
//! NHWC rows `[pixels][channels]` and weights `W [out][in]`:
//!
//! - forward `Y = X · Wᵀ`: A = X, B = Wᵀ (a transposed copy `[in][out]`, kept by the layer);
//! - input grad `dX = dY · W`: A = dY, B = W `[out][in]`;
//! - weight grad `dW = dYᵀ · X`: A = dY transposed (`trans_a`), B = X; the reduction runs over
//!   the pixels, the long dimension.
//!
//! Blocking (BLIS order, without packing: B rows are contiguous vectors already): rows of C in
//! blocks of `MC`, the reduction in blocks of `KC` (so an A block stays in L2 while the column
//! panels pass over it), then column panels of two vectors, then register tiles of `MR` rows
//! (`Simd::GEMM_ROWS`: 12 for AVX-512, 6 for AVX2) by two vectors. Each element of C is
//! accumulated by exactly one tile in a fixed order (reduction blocks in order, FMAs in order
//! within a block), whatever the tiling or the thread split: results are bit-identical for any
//! thread count.

use super::lanes::TrainSimd;
use crate::simd::{multiversion, Isa};
use rayon::prelude::*;

/// Rows of C per cache block (a multiple of every tile height: 12, 8, 6, 4).
const MC: usize = 120;
/// Reduction length per cache block.
const KC: usize = 256;

/// `C[i][j] (+)= Σ_p op(A)[i][p] · B[p][j]` for `i < m`, `j < n`, `p < k`.
///
/// `n` must be a multiple of 16 (channel counts are padded to [`crate::simd::CHANNEL_ALIGN`]);
/// B rows and C rows are read and written for all `n` columns.
#[derive(Clone, Copy, Debug)]
pub struct MatMul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `op(A)[i][p]` is `a[i · lda + p]`, or with `trans_a` `a[p · lda + i]`.
    pub a: *const f32,
    pub lda: usize,
    pub trans_a: bool,
    /// `B[p][j]` is `b[p · ldb + j]`; or, with `b_panel` non-zero, B is packed in panels of
    /// two vectors of columns ([`pack_panels`]) and `ldb` is the panel width `w = 2 · lanes` of
    /// the ISA run: `B[p][j]` is `b[(j / w) · b_panel + p · w + j % w]` (each panel's rows
    /// contiguous: the weights' layout).
    pub b: *const f32,
    pub ldb: usize,
    pub b_panel: usize,
    pub c: *mut f32,
    pub ldc: usize,
    /// Add to C rather than overwrite it.
    pub accumulate: bool,
}

// Tasks given disjoint blocks of C write disjoint memory; A and B are only read.
unsafe impl Send for MatMul {}
unsafe impl Sync for MatMul {}

// Const-bound indexed loops unroll and keep the accumulators in registers.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn tile<S: TrainSimd, const R: usize, const NV: usize, const TA: bool>(
    mm: &MatMul,
    i: usize,
    j: usize,
    p0: usize,
    p1: usize,
    load_c: bool,
) {
    let mut acc = [[S::zero(); NV]; R];
    if load_c {
        for r in 0..R {
            for v in 0..NV {
                acc[r][v] = S::load(mm.c.add((i + r) * mm.ldc + j + v * S::LANES));
            }
        }
    }
    let (mut bp, ldb) = if mm.b_panel == 0 {
        (mm.b.add(p0 * mm.ldb + j), mm.ldb)
    } else {
        let w = mm.ldb;
        debug_assert_eq!(w, 2 * S::LANES, "B packed for another ISA");
        (mm.b.add((j / w) * mm.b_panel + p0 * w + j % w), w)
    };
    if TA {
        let mut ap = mm.a.add(p0 * mm.lda + i);
        for _ in p0..p1 {
            let mut bv = [S::zero(); NV];
            for v in 0..NV {
                bv[v] = S::load(bp.add(v * S::LANES));
            }
            for r in 0..R {
                let av = S::splat(*ap.add(r));
                for v in 0..NV {
                    acc[r][v] = S::fma(av, bv[v], acc[r][v]);
                }
            }
            ap = ap.add(mm.lda);
            bp = bp.add(ldb);
        }
    } else {
        let mut rows = [mm.a; R];
        for r in 0..R {
            rows[r] = mm.a.add((i + r) * mm.lda + p0);
        }
        for p in 0..p1 - p0 {
            let mut bv = [S::zero(); NV];
            for v in 0..NV {
                bv[v] = S::load(bp.add(v * S::LANES));
            }
            for r in 0..R {
                let av = S::splat(*rows[r].add(p));
                for v in 0..NV {
                    acc[r][v] = S::fma(av, bv[v], acc[r][v]);
                }
            }
            bp = bp.add(ldb);
        }
    }
    for r in 0..R {
        for v in 0..NV {
            S::store(mm.c.add((i + r) * mm.ldc + j + v * S::LANES), acc[r][v]);
        }
    }
}

#[inline(always)]
unsafe fn tile_nv<S: TrainSimd, const R: usize, const TA: bool>(
    mm: &MatMul,
    nv: usize,
    i: usize,
    j: usize,
    p0: usize,
    p1: usize,
    load_c: bool,
) {
    if nv == 2 {
        tile::<S, R, 2, TA>(mm, i, j, p0, p1, load_c)
    } else {
        tile::<S, R, 1, TA>(mm, i, j, p0, p1, load_c)
    }
}

#[inline(always)]
unsafe fn blocks<S: TrainSimd, const MR: usize, const TA: bool>(
    mm: &MatMul,
    i0: usize,
    i1: usize,
    j0: usize,
    j1: usize,
) {
    let panel = 2 * S::LANES;
    let mut ic = i0;
    while ic < i1 {
        let ie = (ic + MC).min(i1);
        let mut pc = 0;
        loop {
            let pe = (pc + KC).min(mm.k);
            let load_c = mm.accumulate || pc > 0;
            let mut j = j0;
            while j < j1 {
                let nv = if j1 - j >= panel { 2 } else { 1 };
                let mut i = ic;
                while i < ie {
                    let rows = ie - i;
                    if rows >= MR {
                        tile_nv::<S, MR, TA>(mm, nv, i, j, pc, pe, load_c);
                        i += MR;
                    } else if MR > 8 && rows >= 8 {
                        tile_nv::<S, 8, TA>(mm, nv, i, j, pc, pe, load_c);
                        i += 8;
                    } else if MR > 4 && rows >= 4 {
                        tile_nv::<S, 4, TA>(mm, nv, i, j, pc, pe, load_c);
                        i += 4;
                    } else if rows >= 2 {
                        tile_nv::<S, 2, TA>(mm, nv, i, j, pc, pe, load_c);
                        i += 2;
                    } else {
                        tile_nv::<S, 1, TA>(mm, nv, i, j, pc, pe, load_c);
                        i += 1;
                    }
                }
                j += nv * S::LANES;
            }
            pc = pe;
            if pc >= mm.k {
                break;
            }
        }
        ic = ie;
    }
}

#[inline(always)]
unsafe fn matmul_generic<S: TrainSimd>(mm: &MatMul, i0: usize, i1: usize, j0: usize, j1: usize) {
    match (S::GEMM_ROWS, mm.trans_a) {
        (12, false) => blocks::<S, 12, false>(mm, i0, i1, j0, j1),
        (12, true) => blocks::<S, 12, true>(mm, i0, i1, j0, j1),
        (6, false) => blocks::<S, 6, false>(mm, i0, i1, j0, j1),
        (6, true) => blocks::<S, 6, true>(mm, i0, i1, j0, j1),
        (_, false) => blocks::<S, 4, false>(mm, i0, i1, j0, j1),
        (_, true) => blocks::<S, 4, true>(mm, i0, i1, j0, j1),
    }
}

multiversion!(pub fn matmul_block(mm: &MatMul, i0: usize, i1: usize, j0: usize, j1: usize) => matmul_generic);

/// The whole product, split over the current rayon pool (rows of C when C is tall, column
/// panels when it is wide). The split never changes a result (see the module documentation).
pub fn matmul(isa: Isa, mm: &MatMul) {
    debug_assert!(mm.n.is_multiple_of(16), "n = {} is not padded", mm.n);
    if mm.m == 0 || mm.n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let work = mm.m * mm.n * mm.k.max(1);
    if threads == 1 || work < 1 << 17 {
        unsafe { matmul_block(isa, mm, 0, mm.m, 0, mm.n) };
        return;
    }
    let tasks = threads * 4;
    let col_tiles = mm.n.div_ceil(32);
    if mm.m.div_ceil(12) >= col_tiles || col_tiles < 2 {
        let chunk = mm.m.div_ceil(tasks).next_multiple_of(24);
        (0..mm.m.div_ceil(chunk))
            .into_par_iter()
            .for_each(|t| unsafe { matmul_block(isa, mm, t * chunk, ((t + 1) * chunk).min(mm.m), 0, mm.n) });
    } else {
        let chunk = (mm.n.div_ceil(tasks)).next_multiple_of(32);
        (0..mm.n.div_ceil(chunk))
            .into_par_iter()
            .for_each(|t| unsafe { matmul_block(isa, mm, 0, mm.m, t * chunk, ((t + 1) * chunk).min(mm.n)) });
    }
}

/// Packs the first `cols` columns of `B`, given as `at(p, j)` for `p < rows`, into panels of
/// `2 · lanes` columns, each `[rows][2 · lanes]` and zero-padded, into `out` (resized; no
/// allocation once it has the size): returns the `b_panel` stride (see [`MatMul::b`]).
pub fn pack_panels_with(
    rows: usize,
    cols: usize,
    lanes: usize,
    out: &mut Vec<f32>,
    at: impl Fn(usize, usize) -> f32,
) -> usize {
    let w = 2 * lanes;
    let panels = cols.div_ceil(w);
    out.resize(panels * rows * w, 0.0);
    for q in 0..panels {
        for p in 0..rows {
            let row = &mut out[(q * rows + p) * w..(q * rows + p + 1) * w];
            for (c, v) in row.iter_mut().enumerate() {
                let j = q * w + c;
                *v = if j < cols { at(p, j) } else { 0.0 };
            }
        }
    }
    rows * w
}

/// [`pack_panels_with`] for a row-major `[rows][ld]` matrix.
pub fn pack_panels(b: &[f32], rows: usize, cols: usize, ld: usize, lanes: usize) -> (Vec<f32>, usize) {
    let mut out = Vec::new();
    let stride = pack_panels_with(rows, cols, lanes, &mut out, |p, j| b[p * ld + j]);
    (out, stride)
}

/// The plain f64 product the tests compare against (same addressing as [`MatMul`]).
#[cfg(test)]
pub fn matmul_reference(mm: &MatMul, c: &mut [f64]) {
    unsafe {
        for i in 0..mm.m {
            for j in 0..mm.n {
                let mut acc = if mm.accumulate { *mm.c.add(i * mm.ldc + j) as f64 } else { 0.0 };
                for p in 0..mm.k {
                    let a = if mm.trans_a { *mm.a.add(p * mm.lda + i) } else { *mm.a.add(i * mm.lda + p) };
                    let b = if mm.b_panel == 0 {
                        *mm.b.add(p * mm.ldb + j)
                    } else {
                        *mm.b.add((j / mm.ldb) * mm.b_panel + p * mm.ldb + j % mm.ldb)
                    };
                    acc += a as f64 * b as f64;
                }
                c[i * mm.ldc + j] = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rng::Rng;

    #[test]
    fn gemm_matches_f64_for_all_layouts_and_isas() {
        let mut rng = Rng::new(7);
        let shapes =
            [(1, 16, 1), (5, 16, 3), (13, 48, 27), (37, 32, 300), (250, 80, 40), (7, 144, 600), (130, 16, 1000)];
        for isa in Isa::all_available() {
            for &(m, n, k) in &shapes {
                for trans_a in [false, true] {
                    for accumulate in [false, true] {
                        let lda = if trans_a { m + 3 } else { k + 5 };
                        let a_rows = if trans_a { k } else { m };
                        let a: Vec<f32> = (0..a_rows * lda).map(|_| rng.normal()).collect();
                        let ldb = n + 16;
                        let b: Vec<f32> = (0..k * ldb).map(|_| rng.normal()).collect();
                        let ldc = n + 32;
                        let c0: Vec<f32> = (0..m * ldc).map(|_| rng.normal()).collect();
                        let mut c = c0.clone();
                        let mm = MatMul {
                            m,
                            n,
                            k,
                            a: a.as_ptr(),
                            lda,
                            trans_a,
                            b: b.as_ptr(),
                            ldb,
                            b_panel: 0,
                            c: c.as_mut_ptr(),
                            ldc,
                            accumulate,
                        };
                        let mut want = vec![0.0f64; m * ldc];
                        matmul_reference(&mm, &mut want);
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
                        pool.install(|| matmul(isa, &mm));
                        // The same product with B packed in panels: the same bits.
                        let (packed, b_panel) = pack_panels(&b, k, n, ldb, isa.lanes());
                        let mut c2 = c0.clone();
                        let mm2 =
                            MatMul { b: packed.as_ptr(), ldb: 2 * isa.lanes(), b_panel, c: c2.as_mut_ptr(), ..mm };
                        pool.install(|| matmul(isa, &mm2));
                        assert!(c2 == c, "{isa}: packed B differs");
                        for i in 0..m {
                            for j in 0..ldc {
                                let got = c[i * ldc + j] as f64;
                                if j >= n {
                                    assert_eq!(c[i * ldc + j], c0[i * ldc + j], "wrote past n");
                                    continue;
                                }
                                let tol = 1e-5 * (k as f64).sqrt().max(1.0) * 4.0;
                                assert!(
                                    (got - want[i * ldc + j]).abs() <= tol,
                                    "{isa} m{m} n{n} k{k} ta{trans_a} acc{accumulate} ({i},{j}): {got} vs {}",
                                    want[i * ldc + j]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_split_does_not_change_bits() {
        let mut rng = Rng::new(8);
        let (m, n, k) = (301, 96, 700);
        let a: Vec<f32> = (0..m * k).map(|_| rng.normal()).collect();
        let b: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
        let isa = Isa::detect();
        let run = |threads: usize| {
            // dW-shaped: C [n][k]... here C [n][n_k] = Aᵀ B with A [m][n], B [m][k'] (k' = 96).
            let mut c = vec![0.0f32; n * 96];
            let mm = MatMul {
                m: n,
                n: 96,
                k: m,
                a: b.as_ptr(),
                lda: n,
                trans_a: true,
                b: a.as_ptr(),
                ldb: k,
                b_panel: 0,
                c: c.as_mut_ptr(),
                ldc: 96,
                accumulate: false,
            };
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| matmul(isa, &mm));
            c
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }
}
