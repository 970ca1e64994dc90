//! The int8 depthwise conv: u8 NHWC map in, s8 weights per channel, exact i32 accumulation,
//! the requantising store of [`crate::quant::scheme::requantize_full`] (bias, clamp, hard-swish)
//! out.
//!
//! The input's border must hold the input's zero point (the real value 0), and the requantiser's
//! bias must carry the zero point's correction (`-zp_in · Σ_taps q_w`, as [`Requant::new`]
//! computes it): the accumulator is the plain `Σ_taps x_u8 · w_s8`, border included.
//!
//! **The vector kernels.** A channel's taps sit one pixel (`c_pad` bytes) apart, so the
//! multiply-adds that sum several products per i32 lane (`vpdpbusd`: four u8·s8; `vpmaddwd`:
//! two i16·i16) need the taps of one channel side by side: the kernels interleave input rows
//! column by column (`vpunpck*bw`, then `vpunpck*wd` on AVX-512 or an unpack with zero on
//! AVX2), AVX-512 four rows into each channel's dword, AVX2 two rows zero-extended to an i16
//! pair. Each interleaved column then meets, per kx, weights packed by [`PackedDepthwise::new`]
//! in the same layout (the slots an output row does not read hold 0). `vpmaddwd` cannot
//! overflow (two products of at most 255·128) and `vpdpbusd` does not saturate, so both are
//! exact for any s8 weight, -128 included.
//! - AVX-512, 3x3 (every depthwise layer of V2): a pixel's three input rows (and a zero byte)
//!   in one dword per channel, so a pixel is three `vpdpbusd` per 16 channels; the columns are interleaved in registers as the
//!   pixels go (stride 1 carries two columns to the next pixel, stride 2 one), 64 channels at a
//!   time with the block's weights held in registers; no scratch.
//! - AVX2 with 7-bit weights (every weight in `[-64, 63]`, what an AVX2-only CPU's network
//!   quantises to), 3x3 and 5x5: the four-row dwords of AVX-512 (5x5: two groups of rows, as
//!   [`groups`] lists them) on 32-channel blocks, each summed by `vpmaddubsw`
//!   (two u8 · s8 products per i16: at most 2·255·64 = 32640, so it never saturates) and
//!   `vpmaddwd` with ones; each 8-channel sub-vector rolls along the row on its own (sixteen
//!   registers hold one sub-vector's weights and columns, not a block's), its accumulators
//!   kept for the store, which packs the block's four. No input scratch.
//! - AVX-512 5x5 and AVX2 with 8-bit weights: a row step (two output rows at stride 1, sharing their input rows,
//!   one at stride 2) interleaves a chunk of columns, every block of 64 / 32 channels, into an
//!   L1 scratch, then computes tiles of pixels from there.
//!
//! The unpacks leave sub-vector `s` of a block holding channels `16·l + 4·s + d` (lane `l`,
//! dword `d`); the weights, bias and multipliers are laid out the same way, and the store's
//! `vpackssdw`/`vpackuswb` (which work per 128-bit lane) put the bytes back in channel order. A
//! last block cut short by `c_pad` (144 = 2·64 + 16) transposes its rows first (`vpermd`) so
//! that its channels stay in order and only its live sub-vectors are computed.
//!
//! **The store** equals [`Requant::apply`] bit for bit: the accumulator starts at the bias
//! (the i32 sum wraps as `acc.wrapping_add(bias)`), `vcvtdq2ps`, `vmulps`, hard-swish in the
//! same order with no FMA, `vcvtps2dq` (round half to even under the default MXCSR), a
//! saturating pack to i16, `+ zp` (saturating), a saturating pack to u8, `max(·, lo)` and
//! `min(·, hi)`. That equals `clamp(round(t) + zp, lo, hi)`: every value the saturations move
//! lies beyond `lo` or `hi`. Where a layer's bias and multipliers could take `|t|` past 2^30
//! (`vcvtps2dq` would overflow to `i32::MIN`), `t` is first clamped to `hi - zp` in f32 instead:
//! rounding is monotone and fixes integers, so that is the same as clamping after it.
//!
//! Speed: `cargo run --release -p mobilenet-engine --example int8_depthwise` ([`speed_probe`]).

use std::ops::Range;

use super::isa::Int8Isa;
use super::scheme::{QuantizedWeights, Requant};
use crate::kernels::MapGeom;

/// Depthwise weights laid out for the kernels: `[tap][c_pad]` (padding channels 0) for the
/// portable kernel, and interleaved copies for the vector kernels this CPU can run.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedDepthwise {
    /// `[kernel·kernel][c_pad]`.
    weights: Vec<i8>,
    kernel: usize,
    channels: usize,
    c_pad: usize,
    /// AVX-512 (`vpdpbusd` quads), indexed by output rows per step - 1: see [`pack_groups`].
    quads: [Vec<i8>; 2],
    /// AVX2 (`vpmaddwd` i16 pairs), the same way.
    pairs: [Vec<i16>; 2],
    /// AVX2 with 7-bit weights (every weight in `[-64, 63]`): `vpmaddubsw` quads in 32-channel
    /// blocks, the same way; empty for other weights.
    quads7: [Vec<i8>; 2],
}

impl PackedDepthwise {
    /// From per-channel weights `[channels][kernel·kernel]` (torch's `[c, 1, k, k]`), for maps
    /// whose channel stride is `c_pad`.
    pub fn new(q: &QuantizedWeights, kernel: usize, c_pad: usize) -> PackedDepthwise {
        let taps = kernel * kernel;
        assert_eq!(q.per_channel, taps, "depthwise weights are not {kernel}x{kernel}");
        assert!(c_pad >= q.out_channels, "channel stride {c_pad} < {} channels", q.out_channels);
        let mut weights = vec![0i8; taps * c_pad];
        for c in 0..q.out_channels {
            for t in 0..taps {
                weights[t * c_pad + c] = q.values[c * taps + t];
            }
        }
        let mut packed = PackedDepthwise {
            weights,
            kernel,
            channels: q.out_channels,
            c_pad,
            quads: [Vec::new(), Vec::new()],
            pairs: [Vec::new(), Vec::new()],
            quads7: [Vec::new(), Vec::new()],
        };
        // Only the layouts this CPU's kernels read (kernels 3 and 5 only: others run the
        // portable kernel).
        if (kernel == 3 || kernel == 5) && c_pad.is_multiple_of(16) {
            let isas = Int8Isa::all_available();
            // `vpmaddubsw` sums two u8 · s8 products in i16: exact when |w| ≤ 64 (2·255·64 =
            // 32640).
            let seven_bit = q.values.iter().all(|&v| (-64..=63).contains(&v));
            for rows in 1..=2 {
                if isas.contains(&Int8Isa::Vnni512) {
                    packed.quads[rows - 1] = pack_groups(&packed, 4, 64, rows, |v| v);
                }
                if isas.contains(&Int8Isa::Avx2) {
                    packed.pairs[rows - 1] = pack_groups(&packed, 2, 32, rows, |v| v as i16);
                    if seven_bit {
                        packed.quads7[rows - 1] = pack_groups(&packed, 4, 32, rows, |v| v);
                    }
                }
            }
        }
        packed
    }

    pub fn kernel(&self) -> usize {
        self.kernel
    }
    pub fn channels(&self) -> usize {
        self.channels
    }
}

/// The input rows each group of a row step interleaves (`None`: a zero row), for groups of
/// `g` rows (4: `vpdpbusd`, 2: `vpmaddwd`), kernel `k` and `rows` output rows per step (2 only
/// at stride 1). Output row `r` of the step reads step rows `r·stride + ky`.
fn groups(g: usize, k: usize, rows: usize) -> &'static [[Option<usize>; 4]] {
    const Z: Option<usize> = None;
    match (g, k, rows) {
        (4, 3, 1) => &[[Some(0), Some(1), Some(2), Z]],
        (4, 3, 2) => &[[Some(0), Some(1), Some(2), Some(3)]],
        (4, 5, 1) => &[[Some(0), Some(1), Some(2), Some(3)], [Some(4), Z, Z, Z]],
        (4, 5, 2) => &[[Some(1), Some(2), Some(3), Some(4)], [Some(0), Some(5), Z, Z]],
        (2, 3, 1) => &[[Some(0), Some(1), Z, Z], [Some(2), Z, Z, Z]],
        (2, 3, 2) => &[[Some(0), Some(1), Z, Z], [Some(2), Some(3), Z, Z]],
        (2, 5, 1) => &[[Some(0), Some(1), Z, Z], [Some(2), Some(3), Z, Z], [Some(4), Z, Z, Z]],
        (2, 5, 2) => &[[Some(0), Some(1), Z, Z], [Some(2), Some(3), Z, Z], [Some(4), Some(5), Z, Z]],
        _ => unreachable!("no groups for {g} rows, kernel {k}, {rows} output rows"),
    }
}

/// Where channel `c` of a map with channel stride `c_pad` sits in the vector kernels' block
/// layout, in dwords: blocks of `bw` channels (64 for zmm, 32 for ymm), each four sub-vectors of
/// `bw / 4` dwords. In a whole block, channel `16·l + 4·s + d` sits at dword `4·l + d` of
/// sub-vector `s` (what the unpacks produce from rows loaded as they are); a last block cut short
/// by `c_pad` keeps channel order (its rows are transposed before the unpacks, so that only the
/// sub-vectors holding channels need computing).
fn permuted(c: usize, bw: usize, c_pad: usize) -> usize {
    let (block, cc) = (c / bw, c % bw);
    if (block + 1) * bw > c_pad {
        return c;
    }
    block * bw + (cc % 16 / 4) * (bw / 4) + (cc / 16) * 4 + cc % 4
}

/// The weights for groups of `g` rows: `[block][group][output row][kx][sub-vector][bw / 4]`
/// dwords, each dword the `g` weights (as `T`, `4 / g` bytes each) the group's rows meet in
/// that channel (0 where the output row does not read the group's row).
fn pack_groups<T: Copy + Default>(
    w: &PackedDepthwise,
    g: usize,
    bw: usize,
    rows: usize,
    cast: impl Fn(i8) -> T,
) -> Vec<T> {
    let (k, c_pad) = (w.kernel, w.c_pad);
    let groups = groups(g, k, rows);
    let blocks = c_pad.div_ceil(bw);
    let chunk = bw * g; // one (group, row, kx): bw dwords of g values
    let mut out = vec![T::default(); blocks * groups.len() * rows * k * chunk];
    for c in 0..w.channels {
        let (block, at) = (c / bw, permuted(c, bw, c_pad) % bw);
        for (gi, slots) in groups.iter().enumerate() {
            for r in 0..rows {
                for kx in 0..k {
                    let base = (((block * groups.len() + gi) * rows + r) * k + kx) * chunk + at * g;
                    for (j, slot) in slots.iter().take(g).enumerate() {
                        // Step row `slot` is tap row `slot - r` of output row r (stride 1
                        // when rows = 2; r = 0 otherwise).
                        if let Some(ky) = slot.and_then(|y| y.checked_sub(r)).filter(|&ky| ky < k) {
                            out[base + j] = cast(w.weights[(ky * k + kx) * c_pad + c]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Output rows `rows` of the depthwise conv of `input` (geometry `in_geom`, border ≥
/// `(kernel - 1) / 2` holding the input zero point) into `output` (geometry `out_geom`, which
/// must be the conv's output size for `stride`). Only the interior of each output row is
/// written, and of each pixel its first `channels` values (no reader looks at the padding
/// channels of a u8 map).
///
/// Panics if the buffers are too small, the geometries disagree or `isa` is not available.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_u8(
    isa: Int8Isa,
    input: &[u8],
    in_geom: MapGeom,
    w: &PackedDepthwise,
    stride: usize,
    req: &Requant,
    output: &mut [u8],
    out_geom: MapGeom,
    rows: Range<usize>,
) {
    let (k, pad) = (w.kernel, (w.kernel - 1) / 2);
    assert!(in_geom.pad >= pad, "input border {} < {pad}", in_geom.pad);
    assert!(in_geom.c == w.c_pad && out_geom.c == w.c_pad, "channel strides differ from the weights'");
    assert_eq!(out_geom.h, (in_geom.h + 2 * pad - k) / stride + 1, "output height");
    assert_eq!(out_geom.w, (in_geom.w + 2 * pad - k) / stride + 1, "output width");
    assert!(input.len() >= in_geom.len() && output.len() >= out_geom.len(), "buffers shorter than their maps");
    assert!(rows.end <= out_geom.h, "rows beyond the map");
    assert!(req.bias.len() >= w.channels && req.multiplier.len() >= w.channels, "requantisation too short");
    assert!(req.residual.is_none(), "a depthwise conv has no residual");
    assert!(req.lo <= req.hi, "clamp [{}, {}] is empty", req.lo, req.hi);
    assert!(isa.is_available(), "this CPU cannot run the {isa} int8 kernels");
    if rows.is_empty() || w.channels == 0 {
        return;
    }
    #[cfg(engine_x86)]
    {
        let shape = (k == 3 || k == 5) && (stride == 1 || stride == 2) && w.c_pad.is_multiple_of(16);
        let zmm = isa == Int8Isa::Vnni512 && !w.quads[0].is_empty() && std::arch::is_x86_feature_detected!("avx512bw");
        let ymm = matches!(isa, Int8Isa::Vnni512 | Int8Isa::Avx2) && !w.pairs[0].is_empty();
        let call =
            x86::Call { input, in_geom, w, stride, req, output: output.as_mut_ptr(), out_geom, rows: rows.clone() };
        if shape && zmm {
            // SAFETY: Vnni512 was detected (avx512f, avx512vnni) and avx512bw just now; the
            // asserts above bound every read and write (see `x86::drive`).
            return unsafe { x86::run_zmm(&call) };
        }
        if shape && ymm {
            // SAFETY: Vnni512 and Avx2 both imply AVX2; bounds as above.
            return unsafe { x86::run_ymm(&call) };
        }
    }
    depthwise_portable(input, in_geom, w, stride, req, output, out_geom, rows)
}

/// The plain definition (also the portable kernel).
#[allow(clippy::too_many_arguments)]
fn depthwise_portable(
    input: &[u8],
    in_geom: MapGeom,
    w: &PackedDepthwise,
    stride: usize,
    req: &Requant,
    output: &mut [u8],
    out_geom: MapGeom,
    rows: Range<usize>,
) {
    let (k, pad, c_pad) = (w.kernel, (w.kernel - 1) / 2, w.c_pad);
    let mut acc = vec![0i32; c_pad];
    for oy in rows {
        for ox in 0..out_geom.w {
            acc.fill(0);
            for ky in 0..k {
                // Input row oy·stride + ky - pad, in bordered coordinates: + in_geom.pad.
                let iy = oy * stride + ky + in_geom.pad - pad;
                for kx in 0..k {
                    let ix = ox * stride + kx + in_geom.pad - pad;
                    let src = &input[iy * in_geom.row_stride() + ix * c_pad..][..c_pad];
                    let wt = &w.weights[(ky * k + kx) * c_pad..][..c_pad];
                    for ((a, &x), &q) in acc.iter_mut().zip(src).zip(wt) {
                        *a += x as i32 * q as i32;
                    }
                }
            }
            let dst = &mut output[out_geom.offset(oy, ox)..][..c_pad];
            for (c, (d, &a)) in dst.iter_mut().zip(&acc).enumerate().take(w.channels) {
                *d = req.apply(a, c);
            }
        }
    }
}

#[cfg(engine_x86)]
mod x86 {
    use super::{groups, permuted, PackedDepthwise};
    use crate::kernels::MapGeom;
    use crate::quant::scheme::{Requant, HARDSWISH_SIXTH};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// One call's operands (checked by `depthwise_u8`).
    pub(super) struct Call<'a> {
        pub input: &'a [u8],
        pub in_geom: MapGeom,
        pub w: &'a PackedDepthwise,
        pub stride: usize,
        pub req: &'a Requant,
        pub output: *mut u8,
        pub out_geom: MapGeom,
        pub rows: Range<usize>,
    }

    /// What the kernels read: raw pointers into the call's buffers and per-call scratch.
    struct Job {
        input: *const u8,
        in_rs: usize,
        /// Bordered row and column of output pixel (0, 0)'s top-left tap.
        in_y0: usize,
        in_x0: usize,
        c_pad: usize,
        channels: usize,
        /// Blocks holding real channels, and how many a chunk interleaves together.
        blocks: usize,
        group: usize,
        output: *mut u8,
        out_geom: MapGeom,
        /// Output pixels per chunk, and the interleaved columns the scratch holds per block
        /// and group (`(chunk - 1)·stride + k`).
        chunk: usize,
        cols: usize,
        /// Bias and multipliers in the block layout ([`permuted`]).
        bias: *const i32,
        mult: *const f32,
        /// `[block][group][column][sub-vector]` vectors.
        scratch: *mut u8,
    }

    /// The vector operations of one ISA's kernel.
    pub(super) trait Vx {
        /// Channels per block.
        const BW: usize;
        /// Input rows interleaved per group (per i32 lane of the multiply-add).
        const G: usize;
        /// Bytes per vector (= `BW`: a sub-vector is `BW / 4` dwords).
        const VB: usize;
        type I: Copy;
        type F: Copy;
        unsafe fn zero() -> Self::I;
        /// `live` (a multiple of 16) bytes of a block's input channels, zeros after.
        unsafe fn load_in(p: *const u8, live: usize) -> Self::I;
        /// Interleaves `G` rows into four sub-vectors.
        unsafe fn build(r: &[Self::I; 4]) -> [Self::I; 4];
        /// The dword transpose that makes [`Vx::build`] keep channel order (a short block's
        /// rows), and its inverse on the packed bytes.
        unsafe fn to_natural_rows(v: Self::I) -> Self::I;
        unsafe fn to_natural_bytes(v: Self::I) -> Self::I;
        unsafe fn load(p: *const u8) -> Self::I;
        unsafe fn store(p: *mut u8, v: Self::I);
        /// `acc + Σ_lane q · w`.
        unsafe fn mac(acc: Self::I, q: Self::I, w: Self::I) -> Self::I;
        unsafe fn loadf(p: *const f32) -> Self::F;
        unsafe fn splat(x: f32) -> Self::F;
        unsafe fn splat16(x: i16) -> Self::I;
        unsafe fn splat8(x: u8) -> Self::I;
        unsafe fn to_f(v: Self::I) -> Self::F;
        /// Round half to even (the default MXCSR).
        unsafe fn round(v: Self::F) -> Self::I;
        unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
        unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
        unsafe fn max(a: Self::F, b: Self::F) -> Self::F;
        unsafe fn min(a: Self::F, b: Self::F) -> Self::F;
        /// Packs four sub-vectors of i32 (each `≤ hi - zp`) to bytes, adds the zero point and
        /// raises to `lo`: in channel order for a whole block's layout, in the transposed order
        /// of a short block's (undone by [`Vx::to_natural_bytes`]).
        unsafe fn pack(v: &[Self::I; 4], zp: Self::I, lo: Self::I) -> Self::I;
        unsafe fn min_u8(a: Self::I, b: Self::I) -> Self::I;
        /// Stores the first `live` bytes.
        unsafe fn store_bytes(dst: *mut u8, bytes: Self::I, live: usize);
    }

    /// AVX-512 (BW, VNNI): 64 channels per block, four rows per `vpdpbusd` lane.
    pub(super) struct Zmm;

    impl Vx for Zmm {
        const BW: usize = 64;
        const G: usize = 4;
        const VB: usize = 64;
        type I = __m512i;
        type F = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512i {
            _mm512_setzero_si512()
        }
        #[inline(always)]
        unsafe fn load_in(p: *const u8, live: usize) -> __m512i {
            if live >= 64 {
                _mm512_loadu_si512(p as *const _)
            } else {
                _mm512_maskz_loadu_epi8((1u64 << live) - 1, p as *const i8)
            }
        }
        #[inline(always)]
        unsafe fn build(r: &[__m512i; 4]) -> [__m512i; 4] {
            let (ab_lo, ab_hi) = (_mm512_unpacklo_epi8(r[0], r[1]), _mm512_unpackhi_epi8(r[0], r[1]));
            let (cd_lo, cd_hi) = (_mm512_unpacklo_epi8(r[2], r[3]), _mm512_unpackhi_epi8(r[2], r[3]));
            [
                _mm512_unpacklo_epi16(ab_lo, cd_lo),
                _mm512_unpackhi_epi16(ab_lo, cd_lo),
                _mm512_unpacklo_epi16(ab_hi, cd_hi),
                _mm512_unpackhi_epi16(ab_hi, cd_hi),
            ]
        }
        #[inline(always)]
        unsafe fn load(p: *const u8) -> __m512i {
            _mm512_loadu_si512(p as *const _)
        }
        #[inline(always)]
        unsafe fn store(p: *mut u8, v: __m512i) {
            _mm512_storeu_si512(p as *mut _, v)
        }
        #[inline(always)]
        unsafe fn mac(acc: __m512i, q: __m512i, w: __m512i) -> __m512i {
            _mm512_dpbusd_epi32(acc, q, w)
        }
        #[inline(always)]
        unsafe fn loadf(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn splat16(x: i16) -> __m512i {
            _mm512_set1_epi16(x)
        }
        #[inline(always)]
        unsafe fn splat8(x: u8) -> __m512i {
            _mm512_set1_epi8(x as i8)
        }
        #[inline(always)]
        unsafe fn to_f(v: __m512i) -> __m512 {
            _mm512_cvtepi32_ps(v)
        }
        #[inline(always)]
        unsafe fn round(v: __m512) -> __m512i {
            _mm512_cvtps_epi32(v)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            _mm512_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn to_natural_rows(v: __m512i) -> __m512i {
            // Dword 4·l + s from dword 4·s + l (a 4x4 transpose, its own inverse).
            _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), v)
        }
        #[inline(always)]
        unsafe fn to_natural_bytes(v: __m512i) -> __m512i {
            Self::to_natural_rows(v)
        }
        #[inline(always)]
        unsafe fn pack(v: &[__m512i; 4], zp: __m512i, lo: __m512i) -> __m512i {
            let p01 = _mm512_adds_epi16(_mm512_packs_epi32(v[0], v[1]), zp);
            let p23 = _mm512_adds_epi16(_mm512_packs_epi32(v[2], v[3]), zp);
            _mm512_max_epu8(_mm512_packus_epi16(p01, p23), lo)
        }
        #[inline(always)]
        unsafe fn min_u8(a: __m512i, b: __m512i) -> __m512i {
            _mm512_min_epu8(a, b)
        }
        #[inline(always)]
        unsafe fn store_bytes(dst: *mut u8, bytes: __m512i, live: usize) {
            if live >= 64 {
                _mm512_storeu_si512(dst as *mut _, bytes)
            } else {
                _mm512_mask_storeu_epi8(dst as *mut i8, (1u64 << live) - 1, bytes)
            }
        }
    }

    /// AVX2: 32 channels per block, two rows zero-extended to an i16 pair per `vpmaddwd` lane.
    pub(super) struct Ymm;

    impl Vx for Ymm {
        const BW: usize = 32;
        const G: usize = 2;
        const VB: usize = 32;
        type I = __m256i;
        type F = __m256;
        #[inline(always)]
        unsafe fn zero() -> __m256i {
            _mm256_setzero_si256()
        }
        #[inline(always)]
        unsafe fn load_in(p: *const u8, live: usize) -> __m256i {
            if live >= 32 {
                _mm256_loadu_si256(p as *const __m256i)
            } else {
                _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128(p as *const __m128i))
            }
        }
        #[inline(always)]
        unsafe fn build(r: &[__m256i; 4]) -> [__m256i; 4] {
            let z = _mm256_setzero_si256();
            let (ab_lo, ab_hi) = (_mm256_unpacklo_epi8(r[0], r[1]), _mm256_unpackhi_epi8(r[0], r[1]));
            [
                _mm256_unpacklo_epi8(ab_lo, z),
                _mm256_unpackhi_epi8(ab_lo, z),
                _mm256_unpacklo_epi8(ab_hi, z),
                _mm256_unpackhi_epi8(ab_hi, z),
            ]
        }
        #[inline(always)]
        unsafe fn load(p: *const u8) -> __m256i {
            _mm256_loadu_si256(p as *const __m256i)
        }
        #[inline(always)]
        unsafe fn store(p: *mut u8, v: __m256i) {
            _mm256_storeu_si256(p as *mut __m256i, v)
        }
        #[inline(always)]
        unsafe fn mac(acc: __m256i, q: __m256i, w: __m256i) -> __m256i {
            _mm256_add_epi32(acc, _mm256_madd_epi16(q, w))
        }
        #[inline(always)]
        unsafe fn loadf(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn splat16(x: i16) -> __m256i {
            _mm256_set1_epi16(x)
        }
        #[inline(always)]
        unsafe fn splat8(x: u8) -> __m256i {
            _mm256_set1_epi8(x as i8)
        }
        #[inline(always)]
        unsafe fn to_f(v: __m256i) -> __m256 {
            _mm256_cvtepi32_ps(v)
        }
        #[inline(always)]
        unsafe fn round(v: __m256) -> __m256i {
            _mm256_cvtps_epi32(v)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            _mm256_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn to_natural_rows(v: __m256i) -> __m256i {
            // Dword 4·l + s (lane l, sub-vector s) from channel dword 2·s + l.
            _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7))
        }
        #[inline(always)]
        unsafe fn to_natural_bytes(v: __m256i) -> __m256i {
            // Channel dword 2·s + l from dword 4·l + s.
            _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
        }
        #[inline(always)]
        unsafe fn pack(v: &[__m256i; 4], zp: __m256i, lo: __m256i) -> __m256i {
            let p01 = _mm256_adds_epi16(_mm256_packs_epi32(v[0], v[1]), zp);
            let p23 = _mm256_adds_epi16(_mm256_packs_epi32(v[2], v[3]), zp);
            _mm256_max_epu8(_mm256_packus_epi16(p01, p23), lo)
        }
        #[inline(always)]
        unsafe fn min_u8(a: __m256i, b: __m256i) -> __m256i {
            _mm256_min_epu8(a, b)
        }
        #[inline(always)]
        unsafe fn store_bytes(dst: *mut u8, bytes: __m256i, live: usize) {
            if live >= 32 {
                return _mm256_storeu_si256(dst as *mut __m256i, bytes);
            }
            // Pieces of 16, 8, 4, 2 and 1 bytes (no bytes past `live` are written).
            let (mut v, mut at) = (_mm256_castsi256_si128(bytes), 0);
            if live >= 16 {
                _mm_storeu_si128(dst as *mut __m128i, v);
                (v, at) = (_mm256_extracti128_si256(bytes, 1), 16);
            }
            if live & 8 != 0 {
                _mm_storel_epi64(dst.add(at) as *mut __m128i, v);
                (v, at) = (_mm_srli_si128(v, 8), at + 8);
            }
            let mut rest = _mm_cvtsi128_si32(v) as u32;
            if live & 4 != 0 {
                (dst.add(at) as *mut u32).write_unaligned(rest);
                (rest, at) = (_mm_extract_epi32(v, 1) as u32, at + 4);
            }
            if live & 2 != 0 {
                (dst.add(at) as *mut u16).write_unaligned(rest as u16);
                (rest, at) = (rest >> 16, at + 2);
            }
            if live & 1 != 0 {
                *dst.add(at) = rest as u8;
            }
        }
    }

    /// The store's constants.
    struct Consts<V: Vx> {
        out_scale: V::F,
        three: V::F,
        six: V::F,
        zero: V::F,
        sixth: V::F,
        hi_zp: V::F,
        /// Whether the store must clamp to `hi - zp` in f32 (see [`tile`]).
        clamp_hi: bool,
        hi: V::I,
        zp: V::I,
        lo: V::I,
    }

    /// Whether every accumulator this layer can produce (`taps` products of a u8 and an s8, plus
    /// the bias, without wrapping) times its multiplier stays below 2^30 in magnitude, so that
    /// `vcvtps2dq` cannot overflow (to `i32::MIN`, which would read as a low value) and the
    /// store may clamp at `hi` after packing instead of in f32. False for non-finite
    /// multipliers.
    pub(super) fn conversion_is_safe(req: &Requant, channels: usize, taps: usize) -> bool {
        let acc_max = (taps * 255 * 128) as f64;
        (0..channels).all(|c| {
            let reach = (req.bias[c] as f64).abs() + acc_max;
            reach < i32::MAX as f64 && reach * (req.multiplier[c] as f64).abs() < (1u64 << 30) as f64
        })
    }

    /// # Safety
    /// Only where `Int8Isa::Vnni512` and avx512bw were detected, on a call `depthwise_u8`
    /// checked (kernel 3 or 5, stride 1 or 2, channel stride a multiple of 16).
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn run_zmm(call: &Call) {
        drive::<Zmm>(call, call.w.quads[0].as_ptr() as *const u8, call.w.quads[1].as_ptr() as *const u8)
    }

    /// # Safety
    /// Only where AVX2 was detected; as [`run_zmm`] otherwise.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn run_ymm(call: &Call) {
        if !call.w.quads7[0].is_empty() {
            return drive7(call);
        }
        drive::<Ymm>(call, call.w.pairs[0].as_ptr() as *const u8, call.w.pairs[1].as_ptr() as *const u8)
    }

    /// Bytes of interleaved columns one chunk may hold (all blocks of its columns): about half
    /// of L1, so the chunk's input rows and outputs stay there too.
    const SCRATCH_BYTES: usize = 16 * 1024;

    /// Sets up the call's scratch and runs the row steps: pairs of output rows at stride 1
    /// (weights `w2`), single rows otherwise (`w1`).
    #[inline(always)]
    unsafe fn drive<V: Vx>(call: &Call, w1: *const u8, w2: *const u8) {
        let w = call.w;
        let (k, stride, c_pad) = (w.kernel, call.stride, w.c_pad);
        let pad = (k - 1) / 2;
        let blocks = c_pad.div_ceil(V::BW);
        let mut bias = vec![0i32; blocks * V::BW];
        let mut mult = vec![0f32; blocks * V::BW];
        for c in 0..w.channels {
            bias[permuted(c, V::BW, c_pad)] = call.req.bias[c];
            mult[permuted(c, V::BW, c_pad)] = call.req.multiplier[c];
        }
        // Blocks holding real channels (the others are never stored).
        let live_blocks = w.channels.div_ceil(V::BW);
        let max_groups = groups(V::G, k, 1).len().max(groups(V::G, k, 2).len());
        let per_col = max_groups * 4 * V::VB; // one block's interleaved column
        let ncols = (call.out_geom.w - 1) * stride + k;
        // Blocks per group: as many as SCRATCH_BYTES holds at 24 columns (or the whole row);
        // then columns per chunk: what it holds for them, at least enough for 4 pixels.
        let group = (SCRATCH_BYTES / (ncols.min(24) * per_col)).clamp(1, live_blocks);
        let cols = (SCRATCH_BYTES / (group * per_col)).max(3 * stride + k).min(ncols);
        let mut scratch = vec![0u8; group * cols * per_col];
        let job = Job {
            input: call.input.as_ptr(),
            in_rs: call.in_geom.row_stride(),
            in_y0: call.in_geom.pad - pad,
            in_x0: call.in_geom.pad - pad,
            c_pad,
            channels: w.channels,
            blocks: live_blocks,
            group,
            output: call.output,
            out_geom: call.out_geom,
            chunk: (cols - k) / stride + 1,
            cols,
            bias: bias.as_ptr(),
            mult: mult.as_ptr(),
            scratch: scratch.as_mut_ptr(),
        };
        let req = call.req;
        let c = Consts::<V> {
            out_scale: V::splat(req.hardswish.unwrap_or(0.0)),
            three: V::splat(3.0),
            six: V::splat(6.0),
            zero: V::splat(0.0),
            sixth: V::splat(HARDSWISH_SIXTH),
            hi_zp: V::splat(req.hi as f32 - req.out_zero_point as f32),
            clamp_hi: !conversion_is_safe(req, w.channels, k * k),
            hi: V::splat8(req.hi),
            zp: V::splat16(req.out_zero_point as i16),
            lo: V::splat8(req.lo),
        };
        let (y0, y1) = (call.rows.start, call.rows.end);
        let hs = req.hardswish.is_some();
        // `ng` groups per step for (G, k) (see `groups`); `nx1`, `nx2` output pixels per
        // register tile for one and two output rows per step.
        macro_rules! steps {
            ($k:literal, $ng:literal, $nx1:literal, $nx2:literal) => {{
                if V::G == 4 && $k == 3 {
                    // AVX-512 3x3: no scratch, at both strides.
                    match (stride, hs) {
                        (1, true) => rows_k3::<V, 1, true>(&job, w1, &c, y0, y1),
                        (1, false) => rows_k3::<V, 1, false>(&job, w1, &c, y0, y1),
                        (_, true) => rows_k3::<V, 2, true>(&job, w1, &c, y0, y1),
                        (_, false) => rows_k3::<V, 2, false>(&job, w1, &c, y0, y1),
                    }
                } else if stride == 1 {
                    let pairs_end = y0 + (y1 - y0) / 2 * 2;
                    if hs {
                        rows::<V, $k, 1, 2, $ng, $nx2, true>(&job, w2, &c, y0, pairs_end);
                        rows::<V, $k, 1, 1, $ng, $nx1, true>(&job, w1, &c, pairs_end, y1);
                    } else {
                        rows::<V, $k, 1, 2, $ng, $nx2, false>(&job, w2, &c, y0, pairs_end);
                        rows::<V, $k, 1, 1, $ng, $nx1, false>(&job, w1, &c, pairs_end, y1);
                    }
                } else if hs {
                    rows::<V, $k, 2, 1, $ng, $nx1, true>(&job, w1, &c, y0, y1);
                } else {
                    rows::<V, $k, 2, 1, $ng, $nx1, false>(&job, w1, &c, y0, y1);
                }
            }};
        }
        match (V::G, k) {
            (4, 3) => steps!(3, 1, 4, 2),
            (4, 5) => steps!(5, 2, 2, 1),
            (2, 3) => steps!(3, 2, 2, 1),
            (2, 5) => steps!(5, 3, 2, 1),
            _ => unreachable!("kernel {k}"),
        }
        drop((scratch, bias, mult));
    }

    /// Row steps of `R` output rows from `y0` to `y1` (a multiple of `R` rows), in groups of
    /// blocks and chunks of output pixels: the chunk's input columns are interleaved (every
    /// block of the group) into the scratch, then each block's pixels computed from there in
    /// register tiles of `NX`.
    #[inline(always)]
    unsafe fn rows<
        V: Vx,
        const K: usize,
        const S: usize,
        const R: usize,
        const NG: usize,
        const NX: usize,
        const HS: bool,
    >(
        job: &Job,
        weights: *const u8,
        c: &Consts<V>,
        y0: usize,
        y1: usize,
    ) {
        let slots = groups(V::G, K, R);
        debug_assert_eq!(slots.len(), NG);
        let out_w = job.out_geom.w;
        let block_bytes = NG * job.cols * 4 * V::VB;
        let mut oy = y0;
        while oy < y1 {
            // Each group's rows (null: a zero row), at column 0 of block 0.
            let mut src = [[std::ptr::null::<u8>(); 4]; NG];
            for (src, slot) in src.iter_mut().zip(slots) {
                for (p, y) in src.iter_mut().zip(slot) {
                    if let Some(y) = y {
                        *p = job.input.add((job.in_y0 + oy * S + y) * job.in_rs + job.in_x0 * job.c_pad);
                    }
                }
            }
            let mut b0 = 0;
            while b0 < job.blocks {
                let b1 = (b0 + job.group).min(job.blocks);
                let mut x0 = 0;
                while x0 < out_w {
                    let mut n = job.chunk.min(out_w - x0);
                    if n < NX && out_w >= NX {
                        // A short last chunk overlaps the one before (recomputing a few pixels).
                        x0 = out_w - NX;
                        n = NX;
                    }
                    // Interleave the chunk's columns, every block of the group.
                    for (g, (src, slot)) in src.iter().zip(slots).enumerate() {
                        let dst = job.scratch.add(g * job.cols * 4 * V::VB);
                        let at = x0 * S * job.c_pad;
                        let ncols = (n - 1) * S + K;
                        // The group's real rows come first (see `groups`).
                        match slot.iter().take(V::G).filter(|y| y.is_some()).count() {
                            4 => interleave::<V, 4>(job, src, at, ncols, b0, b1, dst, block_bytes),
                            3 => interleave::<V, 3>(job, src, at, ncols, b0, b1, dst, block_bytes),
                            2 => interleave::<V, 2>(job, src, at, ncols, b0, b1, dst, block_bytes),
                            _ => interleave::<V, 1>(job, src, at, ncols, b0, b1, dst, block_bytes),
                        }
                    }
                    for b in b0..b1 {
                        let c0 = b * V::BW;
                        let live_out = (job.channels - c0).min(V::BW);
                        let wb = weights.add(b * NG * R * K * 4 * V::VB);
                        let scr = job.scratch.add((b - b0) * block_bytes) as *const u8;
                        // Sub-vectors holding channels: all 4, or those of a short block.
                        let ns = (job.c_pad - c0).min(V::BW) / (V::BW / 4);
                        macro_rules! tiles {
                            ($ns:literal, $nat:literal) => {{
                                if n >= NX {
                                    let mut xi = 0;
                                    while xi < n {
                                        let at = xi.min(n - NX);
                                        tile::<V, K, S, R, NG, NX, HS, $ns, $nat>(
                                            job,
                                            wb,
                                            scr,
                                            at,
                                            x0 + at,
                                            c,
                                            oy,
                                            c0,
                                            live_out,
                                        );
                                        xi += NX;
                                    }
                                } else {
                                    for at in 0..n {
                                        tile::<V, K, S, R, NG, 1, HS, $ns, $nat>(
                                            job,
                                            wb,
                                            scr,
                                            at,
                                            x0 + at,
                                            c,
                                            oy,
                                            c0,
                                            live_out,
                                        );
                                    }
                                }
                            }};
                        }
                        match ns {
                            4 => tiles!(4, false),
                            3 => tiles!(3, true),
                            2 => tiles!(2, true),
                            _ => tiles!(1, true),
                        }
                    }
                    x0 += n;
                }
                b0 = b1;
            }
            oy += R;
        }
    }

    /// Interleaves `ncols` columns from byte `at` of one group's rows (`src`: its first `N`
    /// real, the rest zero rows), blocks `b0..b1`, into the scratch at `dst` (`[block][column]
    /// [sub-vector]` with blocks `block_bytes` apart). Pixel by pixel, all blocks of one before
    /// the next: a pixel's channels are contiguous.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn interleave<V: Vx, const N: usize>(
        job: &Job,
        src: &[*const u8; 4],
        at: usize,
        ncols: usize,
        b0: usize,
        b1: usize,
        dst: *mut u8,
        block_bytes: usize,
    ) {
        // A short last block (masked loads, transposed rows) apart from the whole ones.
        let whole = b1.min(job.c_pad / V::BW);
        for col in 0..ncols {
            let at = at + col * job.c_pad;
            let dst = dst.add(col * 4 * V::VB);
            for b in b0..whole {
                let mut r = [V::zero(); 4];
                for j in 0..N {
                    r[j] = V::load(src[j].add(at + b * V::BW));
                }
                let q = V::build(&r);
                let dst = dst.add((b - b0) * block_bytes);
                for (s, q) in q.iter().enumerate() {
                    V::store(dst.add(s * V::VB), *q);
                }
            }
            if whole < b1 {
                let c0 = whole * V::BW;
                let mut r = [V::zero(); 4];
                for j in 0..N {
                    r[j] = V::to_natural_rows(V::load_in(src[j].add(at + c0), job.c_pad - c0));
                }
                let q = V::build(&r);
                let dst = dst.add((whole - b0) * block_bytes);
                for (s, q) in q.iter().enumerate() {
                    V::store(dst.add(s * V::VB), *q);
                }
            }
        }
    }

    /// `NX` output pixels (`xs` in the chunk's scratch `scr`, `x` in the map) of the step's `R`
    /// rows, the `NS` sub-vectors of block `c0` in registers (`NATURAL`: a short block's
    /// layout, see [`permuted`]): the accumulators start at the bias,
    /// each interleaved column is loaded once per sub-vector and meets the weights (`wb`: the
    /// block's) of every (pixel, kx, row) that reads it; then requantised and stored as bytes.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn tile<
        V: Vx,
        const K: usize,
        const S: usize,
        const R: usize,
        const NG: usize,
        const NX: usize,
        const HS: bool,
        const NS: usize,
        const NATURAL: bool,
    >(
        job: &Job,
        wb: *const u8,
        scr: *const u8,
        xs: usize,
        x: usize,
        c: &Consts<V>,
        oy: usize,
        c0: usize,
        live_out: usize,
    ) {
        let mut acc = [[[V::zero(); NS]; NX]; R];
        for s in 0..NS {
            let bias = V::load(job.bias.add(c0 + s * V::BW / 4) as *const u8);
            for acc in acc.iter_mut() {
                for acc in acc.iter_mut() {
                    acc[s] = bias;
                }
            }
        }
        for g in 0..NG {
            let cols = scr.add((g * job.cols + xs * S) * 4 * V::VB);
            for col in 0..(NX - 1) * S + K {
                for s in 0..NS {
                    let q = V::load(cols.add((col * 4 + s) * V::VB));
                    for j in 0..NX {
                        if col >= j * S && col - j * S < K {
                            let kx = col - j * S;
                            for r in 0..R {
                                let w = V::load(wb.add((((g * R + r) * K + kx) * 4 + s) * V::VB));
                                acc[r][j][s] = V::mac(acc[r][j][s], q, w);
                            }
                        }
                    }
                }
            }
        }
        for r in 0..R {
            for j in 0..NX {
                let dst = job.output.add(job.out_geom.offset(oy + r, x + j) + c0);
                finish::<V, HS, NS, NATURAL>(&acc[r][j], job.mult.add(c0), c, dst, live_out);
            }
        }
    }

    /// The store of one pixel's block: requantises the `NS` sub-vectors of accumulators (bias
    /// included; `mult`: the block's multipliers), packs them to bytes and stores `live` of them
    /// at `dst`. With `c.clamp_hi`, `min(t, hi - zp)` before the conversion (which cannot
    /// overflow then); without, the call's bounds showed |t| < 2^30 and `hi` clamps the bytes.
    #[inline(always)]
    unsafe fn finish<V: Vx, const HS: bool, const NS: usize, const NATURAL: bool>(
        acc: &[V::I; NS],
        mult: *const f32,
        c: &Consts<V>,
        dst: *mut u8,
        live: usize,
    ) {
        let mut v = [V::zero(); 4];
        for s in 0..NS {
            let mut t = V::mul(V::to_f(acc[s]), V::loadf(mult.add(s * V::BW / 4)));
            if HS {
                let g = V::min(V::max(V::add(V::mul(t, c.out_scale), c.three), c.zero), c.six);
                t = V::mul(V::mul(t, g), c.sixth);
            }
            v[s] = V::round(if c.clamp_hi { V::min(t, c.hi_zp) } else { t });
        }
        let mut bytes = V::pack(&v, c.zp, c.lo);
        if !c.clamp_hi {
            bytes = V::min_u8(bytes, c.hi);
        }
        if NATURAL {
            bytes = V::to_natural_bytes(bytes);
        }
        V::store_bytes(dst, bytes, live);
    }

    /// Output pixels per chunk of the 3x3 stride-2 kernel: their input columns of all blocks
    /// stay in L1 while each block is computed.
    const ROLL_CHUNK: usize = 16;

    /// 3x3 stride 2 with four-row groups (AVX-512): no scratch. Each output pixel reads input
    /// columns `2x, 2x + 1, 2x + 2`; they are interleaved in registers as the pixels go
    /// (column `2x + 2` carried to the next pixel), with the block's 12 weight vectors held in
    /// registers, so each column is built once and nothing goes through memory.
    #[inline(always)]
    unsafe fn rows_k3<V: Vx, const S: usize, const HS: bool>(
        job: &Job,
        weights: *const u8,
        c: &Consts<V>,
        y0: usize,
        y1: usize,
    ) {
        debug_assert!(V::G == 4 && groups(V::G, 3, 1).len() == 1);
        let out_w = job.out_geom.w;
        for oy in y0..y1 {
            let row = |y: usize| job.input.add((job.in_y0 + oy * S + y) * job.in_rs + job.in_x0 * job.c_pad);
            let src = [row(0), row(1), row(2)];
            let mut x0 = 0;
            while x0 < out_w {
                let n = ROLL_CHUNK.min(out_w - x0);
                for b in 0..job.blocks {
                    let c0 = b * V::BW;
                    let live_out = (job.channels - c0).min(V::BW);
                    let wb = weights.add(b * 3 * 4 * V::VB);
                    match (job.c_pad - c0).min(V::BW) / (V::BW / 4) {
                        4 => roll::<V, S, HS, 4, false>(job, &src, wb, c, oy, x0, n, c0, live_out),
                        3 => roll::<V, S, HS, 3, true>(job, &src, wb, c, oy, x0, n, c0, live_out),
                        2 => roll::<V, S, HS, 2, true>(job, &src, wb, c, oy, x0, n, c0, live_out),
                        _ => roll::<V, S, HS, 1, true>(job, &src, wb, c, oy, x0, n, c0, live_out),
                    }
                }
                x0 += n;
            }
        }
    }

    /// Three rows' bytes at offset `at`, interleaved (a short block's: `live` bytes, in channel
    /// order).
    #[inline(always)]
    unsafe fn column3<V: Vx, const NATURAL: bool>(src: &[*const u8; 3], at: usize, live: usize) -> [V::I; 4] {
        let mut r = [V::zero(); 4];
        for (r, src) in r.iter_mut().zip(src) {
            *r = if NATURAL { V::to_natural_rows(V::load_in(src.add(at), live)) } else { V::load(src.add(at)) };
        }
        V::build(&r)
    }

    /// Pixels `x0..x0 + n` of output row `oy`, block `c0` (see [`rows_k3`]).
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn roll<V: Vx, const S: usize, const HS: bool, const NS: usize, const NATURAL: bool>(
        job: &Job,
        src: &[*const u8; 3],
        wb: *const u8,
        c: &Consts<V>,
        oy: usize,
        x0: usize,
        n: usize,
        c0: usize,
        live_out: usize,
    ) {
        let live_in = (job.c_pad - c0).min(V::BW);
        let mut w = [[V::zero(); NS]; 3];
        for (kx, w) in w.iter_mut().enumerate() {
            for (s, w) in w.iter_mut().enumerate() {
                *w = V::load(wb.add((kx * 4 + s) * V::VB));
            }
        }
        let column = |col: usize| col * job.c_pad + c0;
        // Columns x·S and x·S + 1 of the next pixel, carried over.
        let mut left = column3::<V, NATURAL>(src, column(S * x0), live_in);
        let mut mid = column3::<V, NATURAL>(src, column(S * x0 + 1), live_in);
        for x in x0..x0 + n {
            if S == 2 && x > x0 {
                mid = column3::<V, NATURAL>(src, column(2 * x + 1), live_in);
            }
            let right = column3::<V, NATURAL>(src, column(S * x + 2), live_in);
            let mut acc = [V::zero(); NS];
            for s in 0..NS {
                acc[s] = V::load(job.bias.add(c0 + s * V::BW / 4) as *const u8);
                acc[s] = V::mac(acc[s], left[s], w[0][s]);
                acc[s] = V::mac(acc[s], mid[s], w[1][s]);
                acc[s] = V::mac(acc[s], right[s], w[2][s]);
            }
            let dst = job.output.add(job.out_geom.offset(oy, x) + c0);
            finish::<V, HS, NS, NATURAL>(&acc, job.mult.add(c0), c, dst, live_out);
            if S == 1 {
                (left, mid) = (mid, right);
            } else {
                left = right;
            }
        }
    }

    /// Output pixels per chunk of the 7-bit AVX2 kernel: its accumulators wait in `acc7` (R·4
    /// vectors a pixel) while the sub-vectors are computed one after another.
    const CHUNK7: usize = 16;

    /// Input rows per group of the 7-bit kernel (the rest of [`groups`]'s slots are zero rows).
    const fn live_rows7(k: usize, rows: usize, g: usize) -> usize {
        match (k, rows, g) {
            (3, 1, _) => 3,
            (5, 1, 1) => 1,
            (5, 2, 1) => 2,
            _ => 4,
        }
    }

    /// AVX2 with 7-bit weights: the `vpdpbusd` layout of [`rows_k3`] (four input rows per
    /// channel dword) on 32-channel blocks, each quad summed by `vpmaddubsw` (two u8 · s8
    /// products per i16, exact for |w| ≤ 64) and `vpmaddwd` with ones. Sixteen registers do not
    /// hold a block's columns, weights and accumulators, so each sub-vector (8 channels) rolls
    /// along the row on its own, its weights in registers, its columns interleaved in registers
    /// as the pixels go; the accumulators go to `acc7` and the store packs all four from there.
    ///
    /// # Safety
    /// As [`run_ymm`], with 7-bit weights packed (`quads7`).
    #[target_feature(enable = "avx2")]
    unsafe fn drive7(call: &Call) {
        let w = call.w;
        let (k, stride, c_pad) = (w.kernel, call.stride, w.c_pad);
        let pad = (k - 1) / 2;
        let blocks = c_pad.div_ceil(32);
        let mut bias = vec![0i32; blocks * 32];
        let mut mult = vec![0f32; blocks * 32];
        // Whole blocks of real channels by runs of four ([`permuted`]: channels 16·l + 4·s..
        // to dwords 8·s + 4·l..), the rest one by one.
        let runs = w.channels / 32 * 8;
        for run in 0..runs {
            let (c0, at) = (run / 8 * 32, run % 8);
            let (from, to) = (c0 + 4 * at, c0 + 8 * (at % 4) + 4 * (at / 4));
            bias[to..to + 4].copy_from_slice(&call.req.bias[from..from + 4]);
            mult[to..to + 4].copy_from_slice(&call.req.multiplier[from..from + 4]);
        }
        for c in runs * 4..w.channels {
            bias[permuted(c, 32, c_pad)] = call.req.bias[c];
            mult[permuted(c, 32, c_pad)] = call.req.multiplier[c];
        }
        let mut acc7 = vec![_mm256_setzero_si256(); CHUNK7 * 2 * 4];
        let job = Job {
            input: call.input.as_ptr(),
            in_rs: call.in_geom.row_stride(),
            in_y0: call.in_geom.pad - pad,
            in_x0: call.in_geom.pad - pad,
            c_pad,
            channels: w.channels,
            blocks: w.channels.div_ceil(32),
            group: 1,
            output: call.output,
            out_geom: call.out_geom,
            chunk: CHUNK7,
            cols: 0,
            bias: bias.as_ptr(),
            mult: mult.as_ptr(),
            scratch: acc7.as_mut_ptr() as *mut u8,
        };
        let req = call.req;
        let c = Consts::<Ymm> {
            out_scale: Ymm::splat(req.hardswish.unwrap_or(0.0)),
            three: Ymm::splat(3.0),
            six: Ymm::splat(6.0),
            zero: Ymm::splat(0.0),
            sixth: Ymm::splat(HARDSWISH_SIXTH),
            hi_zp: Ymm::splat(req.hi as f32 - req.out_zero_point as f32),
            clamp_hi: !conversion_is_safe(req, w.channels, k * k),
            hi: Ymm::splat8(req.hi),
            zp: Ymm::splat16(req.out_zero_point as i16),
            lo: Ymm::splat8(req.lo),
        };
        let (y0, y1) = (call.rows.start, call.rows.end);
        let (w1, w2) = (w.quads7[0].as_ptr(), w.quads7[1].as_ptr());
        let hs = req.hardswish.is_some();
        macro_rules! steps {
            ($k:literal, $ng1:literal, $ng2:literal) => {{
                if stride == 1 {
                    let pairs_end = y0 + (y1 - y0) / 2 * 2;
                    if hs {
                        rows7::<$k, 1, 2, $ng2, true>(&job, w2, &c, y0, pairs_end);
                        rows7::<$k, 1, 1, $ng1, true>(&job, w1, &c, pairs_end, y1);
                    } else {
                        rows7::<$k, 1, 2, $ng2, false>(&job, w2, &c, y0, pairs_end);
                        rows7::<$k, 1, 1, $ng1, false>(&job, w1, &c, pairs_end, y1);
                    }
                } else if hs {
                    rows7::<$k, 2, 1, $ng1, true>(&job, w1, &c, y0, y1);
                } else {
                    rows7::<$k, 2, 1, $ng1, false>(&job, w1, &c, y0, y1);
                }
            }};
        }
        match k {
            3 => steps!(3, 1, 1),
            5 => steps!(5, 2, 2),
            _ => unreachable!("kernel {k}"),
        }
        drop((acc7, bias, mult));
    }

    /// Row steps of `R` output rows (see [`drive7`]).
    #[inline(always)]
    unsafe fn rows7<const K: usize, const S: usize, const R: usize, const NG: usize, const HS: bool>(
        job: &Job,
        weights: *const i8,
        c: &Consts<Ymm>,
        y0: usize,
        y1: usize,
    ) {
        let slots = groups(4, K, R);
        debug_assert_eq!(slots.len(), NG);
        let out_w = job.out_geom.w;
        let acc7 = job.scratch as *mut __m256i;
        let mut oy = y0;
        while oy < y1 {
            // Each group's rows at column 0 (null: a zero row, always after the real ones).
            let mut src = [[std::ptr::null::<u8>(); 4]; NG];
            for (src, slot) in src.iter_mut().zip(slots) {
                for (p, y) in src.iter_mut().zip(slot) {
                    if let Some(y) = y {
                        *p = job.input.add((job.in_y0 + oy * S + y) * job.in_rs + job.in_x0 * job.c_pad);
                    }
                }
            }
            let mut x0 = 0;
            while x0 < out_w {
                let n = CHUNK7.min(out_w - x0);
                for b in 0..job.blocks {
                    let c0 = b * 32;
                    let live_out = (job.channels - c0).min(32);
                    let wb = weights.add(b * NG * R * K * 4 * 32);
                    let bias = job.bias.add(c0) as *const __m256i;
                    let live_in = (job.c_pad - c0).min(32);
                    macro_rules! subs {
                        ($nat:literal, $($sub:literal)*) => {{
                            $(
                                roll7::<K, S, R, NG, $sub, $nat>(
                                    job, &src, c0, live_in, wb, _mm256_loadu_si256(bias.add($sub)), x0, n, acc7,
                                );
                            )*
                            const NS: usize = [$($sub),*].len();
                            for xi in 0..n {
                                for r in 0..R {
                                    let at = acc7.add((xi * R + r) * 4);
                                    let mut acc = [_mm256_setzero_si256(); NS];
                                    for (s, acc) in acc.iter_mut().enumerate() {
                                        *acc = _mm256_loadu_si256(at.add(s));
                                    }
                                    let dst = job.output.add(job.out_geom.offset(oy + r, x0 + xi) + c0);
                                    finish::<Ymm, HS, NS, $nat>(&acc, job.mult.add(c0), c, dst, live_out);
                                }
                            }
                        }};
                    }
                    match live_in {
                        32 => subs!(false, 0 1 2 3),
                        16 => subs!(true, 0 1),
                        _ => unreachable!("channel stride {} not a multiple of 16", job.c_pad),
                    }
                }
                x0 += n;
            }
            oy += R;
        }
    }

    /// Sub-vector `SUB` of one interleaved column: its groups' rows at byte `at` (a short
    /// block's: `live` bytes, transposed to channel order).
    #[inline(always)]
    unsafe fn column7<const K: usize, const R: usize, const NG: usize, const SUB: usize, const NATURAL: bool>(
        src: &[[*const u8; 4]; NG],
        at: usize,
        live: usize,
    ) -> [__m256i; NG] {
        let z = _mm256_setzero_si256();
        let mut out = [z; NG];
        for (g, (out, src)) in out.iter_mut().zip(src).enumerate() {
            let live_rows = live_rows7(K, R, g);
            let mut r = [z; 4];
            if NATURAL {
                // A short block (16 channels) in both lanes: sub-vector SUB is its channels
                // 8·SUB.. in order, the first four from lane 0's low dword interleave, the next
                // from lane 1's high one.
                debug_assert_eq!(live, 16);
                for (j, r) in r.iter_mut().enumerate().take(live_rows) {
                    *r = _mm256_broadcastsi128_si256(_mm_loadu_si128(src[j].add(at) as *const __m128i));
                }
                let (a, b) = if SUB == 0 {
                    (_mm256_unpacklo_epi8(r[0], r[1]), _mm256_unpacklo_epi8(r[2], r[3]))
                } else {
                    (_mm256_unpackhi_epi8(r[0], r[1]), _mm256_unpackhi_epi8(r[2], r[3]))
                };
                *out = _mm256_blend_epi32::<0xF0>(_mm256_unpacklo_epi16(a, b), _mm256_unpackhi_epi16(a, b));
                continue;
            }
            for (j, r) in r.iter_mut().enumerate().take(live_rows) {
                *r = _mm256_loadu_si256(src[j].add(at) as *const __m256i);
            }
            let (a, b) = if SUB < 2 {
                (_mm256_unpacklo_epi8(r[0], r[1]), _mm256_unpacklo_epi8(r[2], r[3]))
            } else {
                (_mm256_unpackhi_epi8(r[0], r[1]), _mm256_unpackhi_epi8(r[2], r[3]))
            };
            *out = if SUB.is_multiple_of(2) { _mm256_unpacklo_epi16(a, b) } else { _mm256_unpackhi_epi16(a, b) };
        }
        out
    }

    /// Pixels `x0..x0 + n` of the row step, sub-vector `SUB` of block `c0`: the raw
    /// accumulators (bias included) into `acc7` (`[pixel][row][sub-vector]`).
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn roll7<
        const K: usize,
        const S: usize,
        const R: usize,
        const NG: usize,
        const SUB: usize,
        const NATURAL: bool,
    >(
        job: &Job,
        src: &[[*const u8; 4]; NG],
        c0: usize,
        live_in: usize,
        wb: *const i8,
        bias: __m256i,
        x0: usize,
        n: usize,
        acc7: *mut __m256i,
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut w = [[[_mm256_setzero_si256(); K]; R]; NG];
        for g in 0..NG {
            for r in 0..R {
                for kx in 0..K {
                    w[g][r][kx] = _mm256_loadu_si256(wb.add((((g * R + r) * K + kx) * 4 + SUB) * 32) as *const __m256i);
                }
            }
        }
        let column = |col: usize| column7::<K, R, NG, SUB, NATURAL>(src, col * job.c_pad + c0, live_in);
        let mac = |acc: __m256i, q: __m256i, w: __m256i| {
            _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(q, w), ones))
        };
        if K == 3 && NG == 1 {
            // Columns S·x and S·x + 1 of the next pixel, carried in registers.
            let (mut left, mut mid) = (column(S * x0)[0], column(S * x0 + 1)[0]);
            for x in x0..x0 + n {
                if S == 2 && x > x0 {
                    mid = column(2 * x + 1)[0];
                }
                let right = column(S * x + 2)[0];
                for r in 0..R {
                    let mut acc = mac(bias, left, w[0][r][0]);
                    acc = mac(acc, mid, w[0][r][1]);
                    acc = mac(acc, right, w[0][r][2]);
                    _mm256_storeu_si256(acc7.add(((x - x0) * R + r) * 4 + SUB), acc);
                }
                if S == 1 {
                    (left, mid) = (mid, right);
                } else {
                    left = right;
                }
            }
            return;
        }
        // The window: columns S·x .. S·x + K of each group (the first K - S carried over).
        let mut win = [[_mm256_setzero_si256(); K]; NG];
        for kx in 0..K - S {
            let col = column(S * x0 + kx);
            for g in 0..NG {
                win[g][kx + S] = col[g];
            }
        }
        for x in x0..x0 + n {
            for kx in 0..K - S {
                for g in 0..NG {
                    win[g][kx] = win[g][kx + S];
                }
            }
            for kx in K - S..K {
                let col = column(S * x + kx);
                for g in 0..NG {
                    win[g][kx] = col[g];
                }
            }
            for r in 0..R {
                let mut acc = bias;
                for g in 0..NG {
                    for kx in 0..K {
                        acc = mac(acc, win[g][kx], w[g][r][kx]);
                    }
                }
                _mm256_storeu_si256(acc7.add(((x - x0) * R + r) * 4 + SUB), acc);
            }
        }
    }
}

/// One kernel's time at one shape (see [`speed_probe`]).
#[derive(Debug, Clone)]
pub struct DepthwiseSpeed {
    /// `int8 <isa>` or `f32 <isa>`.
    pub kernel: String,
    /// Median time of the whole layer, one thread: the calling thread's CPU time where the OS
    /// gives it (Linux), wall time elsewhere.
    pub ms: f64,
    /// The fastest round (steadier than the median on a busy machine).
    pub min_ms: f64,
    /// The mean round.
    pub mean_ms: f64,
}

/// The speed probe: the int8 depthwise conv on every int8 ISA this CPU has, and the f32 one
/// (`crate::kernels::depthwise`, ReLU6 fused) on every vector f32 ISA, at an `h × w × c` input,
/// `k`x`k`, stride `stride`, one thread. `runs` rounds, each running every kernel once (so a
/// busy machine's noise hits all of them alike); the median per kernel. The int8 layer clamps
/// as a fused ReLU6 does. `portable`: the portable int8 kernel too. The int8 weights are 8-bit;
/// `seven_bit` adds every int8 kernel again with 7-bit weights (`int8 <isa> w7`: what an
/// AVX2-only CPU's network quantises to, see [`crate::quant::WeightBits`]).
#[allow(clippy::too_many_arguments)]
pub fn speed_probe(
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    stride: usize,
    runs: usize,
    portable: bool,
    seven_bit: bool,
) -> Vec<DepthwiseSpeed> {
    use super::scheme::ActivationQuant;
    use crate::kernels::{self, Conv};
    use crate::simd::{pad_channels, Isa};
    let c_pad = pad_channels(c);
    let pad = (k - 1) / 2;
    let in_geom = MapGeom { h, w, c: c_pad, pad };
    let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
    let out_geom = MapGeom { h: oh, w: ow, c: c_pad, pad: 1 };
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // int8 operands: a map with its border at the zero point, 8-bit weights.
    let input_q = ActivationQuant { scale: 0.05, zero_point: 17 };
    let mut x8 = vec![input_q.zero_point; in_geom.len()];
    for y in 0..h {
        for x in 0..w {
            for v in &mut x8[in_geom.offset(y, x)..][..c] {
                *v = next() as u8;
            }
        }
    }
    let q = QuantizedWeights {
        values: (0..c * k * k).map(|_| next() as i8).collect(),
        scales: vec![0.01; c],
        out_channels: c,
        per_channel: k * k,
    };
    // The same weights halved: 7 bits.
    let q7 = QuantizedWeights { values: q.values.iter().map(|&v| v >> 1).collect(), ..q.clone() };
    let packed = [PackedDepthwise::new(&q, k, c_pad), PackedDepthwise::new(&q7, k, c_pad)];
    let output_q = ActivationQuant { scale: 0.03, zero_point: 40 };
    let req = [&q, &q7].map(|q| Requant::new(input_q, q, None, output_q).with_clamp(output_q, Some(0.0), Some(6.0)));
    let mut y8 = vec![0u8; out_geom.len()];
    // f32 operands.
    let xf: Vec<f32> = (0..in_geom.len()).map(|i| (i % 29) as f32 * 0.03 - 0.4).collect();
    let wf: Vec<f32> = (0..k * k * c_pad).map(|i| (i % 17) as f32 * 0.02 - 0.15).collect();
    let bf = vec![0.1f32; c_pad];
    let mut yf = vec![0f32; out_geom.len()];
    let conv = Conv {
        input: xf.as_ptr(),
        in_geom,
        in_row0: 0,
        cin: c_pad,
        kernel: k,
        stride,
        weights: wf.as_ptr(),
        bias: bf.as_ptr(),
        act: kernels::ACT_RELU6,
        output: yf.as_mut_ptr(),
        out_geom,
        out_row0: 0,
    };
    // (ISA, 7-bit weights).
    let int8: Vec<(Int8Isa, usize)> = [0, 1]
        .into_iter()
        .filter(|&b| b == 0 || seven_bit)
        .flat_map(|b| {
            Int8Isa::all_available().into_iter().filter(|&i| portable || i != Int8Isa::Portable).map(move |i| (i, b))
        })
        .collect();
    let f32s: Vec<Isa> = Isa::all_available().into_iter().filter(|&i| i != Isa::Portable).collect();
    let mut times = vec![Vec::new(); int8.len() + f32s.len()];
    for round in 0..=runs.max(1) {
        for (i, &(isa, b)) in int8.iter().enumerate() {
            let t = now_ms();
            depthwise_u8(isa, &x8, in_geom, &packed[b], stride, &req[b], &mut y8, out_geom, 0..oh);
            if round > 0 {
                times[i].push(now_ms() - t);
            }
        }
        for (i, &isa) in f32s.iter().enumerate() {
            let t = now_ms();
            // SAFETY: the maps and weights above hold what `conv` describes (input and output
            // maps of their geometries, `k·k·c_pad` weights, `c_pad` biases); `isa` is
            // available on this CPU.
            unsafe { kernels::depthwise(isa, &conv, 0, oh) };
            if round > 0 {
                times[int8.len() + i].push(now_ms() - t);
            }
        }
    }
    std::hint::black_box((&y8, &yf));
    let names = int8
        .iter()
        .map(|(i, b)| format!("int8 {i}{}", if *b == 1 { " w7" } else { "" }))
        .chain(f32s.iter().map(|i| format!("f32 {i}")));
    names
        .zip(times)
        .map(|(kernel, mut t)| {
            t.sort_by(f64::total_cmp);
            let mean_ms = t.iter().sum::<f64>() / t.len() as f64;
            DepthwiseSpeed { kernel, ms: t[t.len() / 2], min_ms: t[0], mean_ms }
        })
        .collect()
}

/// Milliseconds of CPU time this thread has used (wall time where there is no such clock).
fn now_ms() -> f64 {
    #[cfg(target_os = "linux")]
    {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `t` is a valid timespec to write; the clock id is a constant Linux has.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0 {
            return t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6;
        }
    }
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() >> 33) as usize % n
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// A map whose interior channels are `fill(y, x, c)`, border `border` everywhere and padding
    /// channels of the interior `junk` (no kernel may read them into a real channel).
    fn map(g: MapGeom, channels: usize, border: u8, rng: &mut Rng, mut fill: impl FnMut(&mut Rng) -> u8) -> Vec<u8> {
        let mut m = vec![border; g.len()];
        for y in 0..g.h {
            for x in 0..g.w {
                let px = &mut m[g.offset(y, x)..][..g.c];
                for (c, v) in px.iter_mut().enumerate() {
                    *v = if c < channels { fill(rng) } else { rng.next() as u8 };
                }
            }
        }
        m
    }

    /// Runs every available ISA on rows `rows` and checks each output buffer equals the
    /// portable definition's byte for byte (untouched bytes included).
    #[allow(clippy::too_many_arguments)]
    fn check(
        input: &[u8],
        in_geom: MapGeom,
        w: &PackedDepthwise,
        stride: usize,
        req: &Requant,
        out_geom: MapGeom,
        rows: Range<usize>,
        what: &str,
    ) -> Vec<u8> {
        let mut want = vec![0xA5u8; out_geom.len()];
        depthwise_portable(input, in_geom, w, stride, req, &mut want, out_geom, rows.clone());
        for isa in Int8Isa::all_available() {
            let mut got = vec![0xA5u8; out_geom.len()];
            depthwise_u8(isa, input, in_geom, w, stride, req, &mut got, out_geom, rows.clone());
            if got != want {
                let i = got.iter().zip(&want).position(|(g, w)| g != w).unwrap();
                let (row, rest) = (i / out_geom.row_stride(), i % out_geom.row_stride());
                panic!(
                    "{what} ({isa}): byte {i} (bordered row {row}, pixel {}, channel {}) is {} not {}",
                    rest / out_geom.c,
                    rest % out_geom.c,
                    got[i],
                    want[i]
                );
            }
        }
        want
    }

    /// Random weights with the extremes frequent: 8-bit, or 7-bit (`[-64, 63]`, the AVX2
    /// `vpmaddubsw` path's) when `seven`.
    fn random_weights(rng: &mut Rng, channels: usize, k: usize, seven: bool) -> QuantizedWeights {
        let shift = u32::from(seven);
        let values = (0..channels * k * k)
            .map(|_| match rng.below(8) {
                0 => 127 >> shift,
                1 => -128 >> shift,
                2 => -127 >> shift,
                _ => rng.next() as i8 >> shift,
            })
            .collect();
        QuantizedWeights { values, scales: vec![1.0; channels], out_channels: channels, per_channel: k * k }
    }

    /// Random requantisation: multipliers from tiny to ones that saturate (exact powers of two
    /// among them, which make ties), biases of both signs, hard-swish or not, clamps from none to
    /// a ReLU6's.
    fn random_requant(rng: &mut Rng, channels: usize, case: usize) -> Requant {
        let zp = rng.next() as u8;
        let (lo, hi) = match case % 4 {
            0 => (0, 255),
            1 => (zp, 255),
            2 => (zp, zp.saturating_add(rng.below(120) as u8)),
            _ => {
                let (a, b) = (rng.next() as u8, rng.next() as u8);
                (a.min(b), a.max(b))
            }
        };
        // Every fifth case: multipliers and biases so large that the f32 product can exceed
        // i32 (the store's clamp before the conversion) and `acc + bias` can wrap.
        let huge = case % 5 == 4;
        Requant {
            bias: (0..channels)
                .map(|_| if huge { rng.next() as i32 } else { rng.below(400_001) as i32 - 200_000 })
                .collect(),
            multiplier: (0..channels)
                .map(|_| {
                    if huge {
                        10f32.powf(-3.0 + 9.0 * rng.unit())
                    } else if rng.below(4) == 0 {
                        1.0 / (1 << rng.below(12)) as f32
                    } else {
                        10f32.powf(-1.0 - 3.5 * rng.unit())
                    }
                })
                .collect(),
            out_zero_point: zp,
            lo,
            hi,
            hardswish: (case % 3 == 1).then(|| 0.005 + rng.unit() * 0.1),
            residual: None,
        }
    }

    #[test]
    fn kernels_equal_the_definition() {
        let mut rng = Rng(0x0DD5_EED5_1234_5678);
        let sizes = [(1, 1), (2, 3), (7, 7), (13, 11), (28, 28)];
        let (mut case, mut varied, mut clamped) = (0, 0, 0);
        for (k, seven) in [(3, false), (3, true), (5, false), (5, true)] {
            for stride in [1, 2] {
                for &(h, w) in &sizes {
                    for c_pad in [16, 32, 48, 144, 960] {
                        if h * w * c_pad > 28 * 28 * 48 {
                            continue; // the large ones at small maps only (debug builds run this too)
                        }
                        case += 1;
                        // Real channels: all, or fewer than the stride.
                        let channels = if case % 2 == 0 { c_pad } else { c_pad - 1 - rng.below(15) };
                        let pad = (k - 1) / 2 + rng.below(2);
                        let in_geom = MapGeom { h, w, c: c_pad, pad };
                        let zp = rng.next() as u8;
                        let input = map(in_geom, channels, zp, &mut rng, |r| r.next() as u8);
                        let q = random_weights(&mut rng, channels, k, seven);
                        let packed = PackedDepthwise::new(&q, k, c_pad);
                        assert_eq!(!packed.quads7[0].is_empty(), seven && Int8Isa::Avx2.is_available());
                        let req = random_requant(&mut rng, channels, case);
                        #[cfg(engine_x86)]
                        {
                            clamped += usize::from(!x86::conversion_is_safe(&req, channels, k * k));
                        }
                        let (oh, ow) =
                            ((h + 2 * ((k - 1) / 2) - k) / stride + 1, (w + 2 * ((k - 1) / 2) - k) / stride + 1);
                        let out_geom = MapGeom { h: oh, w: ow, c: c_pad, pad: rng.below(2) };
                        let what =
                            format!("k{k} s{stride} w{} {h}x{w} c{channels}/{c_pad} case {case}", 8 - shift_of(seven));
                        let all = check(&input, in_geom, &packed, stride, &req, out_geom, 0..oh, &what);
                        // Not everything clamped to one value: the case tests something.
                        let mut seen = [false; 256];
                        for y in 0..oh {
                            for x in 0..ow {
                                all[out_geom.offset(y, x)..][..channels].iter().for_each(|&v| seen[v as usize] = true);
                            }
                        }
                        varied += usize::from(seen.iter().filter(|&&s| s).count() > 8);
                        // Row subranges: odd starts and lengths (a single row, a pair and a half).
                        for _ in 0..2 {
                            let a = rng.below(oh);
                            let b = a + 1 + rng.below(oh - a);
                            check(
                                &input,
                                in_geom,
                                &packed,
                                stride,
                                &req,
                                out_geom,
                                a..b,
                                &format!("{what} rows {a}..{b}"),
                            );
                        }
                    }
                }
            }
        }
        // Most cases spread their outputs (the test is not all clamps).
        assert!(varied * 2 >= case, "only {varied} of {case} cases have varied outputs");
        // Both of the vector store's clamping paths ran.
        #[cfg(engine_x86)]
        assert!(clamped > 5 && clamped < case - 20, "{clamped} of {case} cases clamp in f32");
        #[cfg(not(engine_x86))]
        let _ = clamped;
    }

    fn shift_of(seven: bool) -> usize {
        usize::from(seven)
    }

    /// Inputs at 255 (the border too: zero point 255) against weights at 127, -128 and mixed
    /// over 25 taps: any pair or quad summed in i16 would saturate (255·127·2 = 64770), so only
    /// exact kernels give the accumulator the bias cancels here. The same at 63 and -64, the
    /// 7-bit extremes (`vpmaddubsw`'s pairs reach 2·255·64 = 32640 < 32768, any more would
    /// saturate). Both channel strides: whole 32-channel blocks and a short one.
    #[test]
    fn extremes_do_not_saturate() {
        for k in [3, 5] {
            for stride in [1, 2] {
                for (c_pad, channels) in [(80, 70), (64, 64)] {
                    let (h, w) = (9, 10);
                    let in_geom = MapGeom { h, w, c: c_pad, pad: (k - 1) / 2 };
                    let mut rng = Rng(7);
                    let input = map(in_geom, channels, 255, &mut rng, |_| 255);
                    for (fill, hi, lo) in [
                        (127i8, 127, -128),
                        (-128, 127, -128),
                        (0, 127, -128),
                        (63, 63, -64),
                        (-64, 63, -64),
                        (0, 63, -64),
                    ] {
                        // fill 0: alternate hi and lo by tap and channel.
                        let values: Vec<i8> = (0..channels * k * k)
                            .map(|i| {
                                if fill != 0 {
                                    fill
                                } else if (i + i / (k * k)) % 2 == 0 {
                                    hi
                                } else {
                                    lo
                                }
                            })
                            .collect();
                        let sums: Vec<i32> =
                            values.chunks(k * k).map(|t| t.iter().map(|&v| 255 * v as i32).sum()).collect();
                        let q = QuantizedWeights {
                            values,
                            scales: vec![1.0; channels],
                            out_channels: channels,
                            per_channel: k * k,
                        };
                        let packed = PackedDepthwise::new(&q, k, c_pad);
                        assert_eq!(!packed.quads7[0].is_empty(), hi == 63 && Int8Isa::Avx2.is_available());
                        // out = round((acc - sum) / 8192) + 100: exactly 100 when acc is exact; a
                        // saturated sum is off by at least 32768 - 32767/... ≥ 4 steps.
                        let req = Requant {
                            bias: sums.iter().map(|s| -s).collect(),
                            multiplier: vec![1.0 / 8192.0; channels],
                            out_zero_point: 100,
                            lo: 0,
                            hi: 255,
                            hardswish: None,
                            residual: None,
                        };
                        let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
                        let out_geom = MapGeom { h: oh, w: ow, c: c_pad, pad: 0 };
                        let out = check(
                            &input,
                            in_geom,
                            &packed,
                            stride,
                            &req,
                            out_geom,
                            0..oh,
                            &format!("extreme k{k} s{stride} c{channels}/{c_pad} fill {fill} ({lo}..={hi})"),
                        );
                        for y in 0..oh {
                            for x in 0..ow {
                                assert!(
                                    out[out_geom.offset(y, x)..][..channels].iter().all(|&v| v == 100),
                                    "k{k} fill {fill}: not exact"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Accumulators that land exactly on ties (multiplier 1/2, 1/4) and on the clamp's edges,
    /// with hard-swish, so the store's rounding and clamping are all exercised.
    #[test]
    fn store_ties_and_edges() {
        let (k, h, w, c_pad, channels) = (3, 6, 9, 64, 64);
        let in_geom = MapGeom { h, w, c: c_pad, pad: 1 };
        let mut rng = Rng(99);
        let input = map(in_geom, channels, 0, &mut rng, |r| (r.below(3)) as u8);
        let q = QuantizedWeights {
            values: (0..channels * 9).map(|i| (i % 5) as i8 - 2).collect(),
            scales: vec![1.0; channels],
            out_channels: channels,
            per_channel: 9,
        };
        let packed = PackedDepthwise::new(&q, k, c_pad);
        for hs in [None, Some(0.5f32), Some(1.0)] {
            for (lo, hi, zp) in [(0, 255, 0), (3, 5, 4), (4, 4, 4), (0, 1, 128), (250, 255, 252)] {
                let req = Requant {
                    bias: (0..channels).map(|c| c as i32 % 7 - 3).collect(),
                    multiplier: (0..channels).map(|c| [0.5, 0.25, 1.0, 1.5][c % 4]).collect(),
                    out_zero_point: zp,
                    lo,
                    hi,
                    hardswish: hs,
                    residual: None,
                };
                for stride in [1, 2] {
                    let out_geom = MapGeom { h: (h - 1) / stride + 1, w: (w - 1) / stride + 1, c: c_pad, pad: 1 };
                    check(
                        &input,
                        in_geom,
                        &packed,
                        stride,
                        &req,
                        out_geom,
                        0..out_geom.h,
                        &format!("ties {hs:?} [{lo}, {hi}] zp {zp}"),
                    );
                }
            }
        }
    }

    #[test]
    fn block_layout_is_a_permutation() {
        for bw in [32, 64] {
            for c_pad in [3 * bw, 3 * bw - 16, 3 * bw - 32] {
                let mut seen = vec![false; c_pad];
                for c in 0..c_pad {
                    let p = permuted(c, bw, c_pad);
                    assert!(p / bw == c / bw && !seen[p]);
                    seen[p] = true;
                }
            }
        }
        // Channel 16·l + 4·s + d at dword 4·l + d of sub-vector s (zmm: 16 dwords each).
        assert_eq!(permuted(16 + 4 * 2 + 3, 64, 128), 2 * 16 + 4 + 3);
        assert_eq!(permuted(64 + 5, 64, 128), 64 + 16 + 1);
        // A short last block keeps channel order.
        assert_eq!(permuted(64 + 5, 64, 112), 64 + 5);
    }
}
