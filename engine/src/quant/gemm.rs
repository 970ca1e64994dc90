//! The int8 GEMM: `C[m][n] (i32) = Σ_k A[m][k] (u8) · B[k][n] (s8)`, B packed once into panels.
//!
//! `A` is activations (u8, rows of an NHWC map: one pixel's channels per row), `B` the weights
//! (s8, one column per output channel). The accumulator is exact; bias, zero points and
//! requantisation are applied afterwards ([`crate::quant::scheme::Requant`]).
//!
//! **Packing.** `B` is cut into panels of [`PANEL`] = 16 columns; within a panel, `k` is cut into
//! groups of 4 and each group stores its 16 columns × 4 consecutive `k` as 64 bytes
//! (`[group][column][4]`). That is one zmm for `vpdpbusd`, which multiplies 4 u8 of A (one i32
//! broadcast) by 4 s8 of each column and adds the 4 products into that column's i32 lane; the
//! AVX2 kernels read the same 64 bytes as two ymm. `k` and `n` are padded with zeros.
//!
//! **The AVX2 pitfall.** `vpmaddubsw` multiplies u8 by s8 and adds adjacent pairs into i16 *with
//! saturation*: `255·127 + 255·127 = 64770` does not fit. It is exact when every weight lies in
//! `[-64, 63]` (`2·255·64 = 32640 ≤ 32767`), which is why ONNX Runtime quantises weights to 7 bits
//! (`reduce_range`) on CPUs without VNNI and oneDNN halves them. [`PackedB`] records whether its
//! weights fit 7 bits; if they do the AVX2 kernel uses `vpmaddubsw` + `vpmaddwd`, otherwise a
//! widening kernel (u8 and s8 extended to i16, then `vpmaddwd`, which cannot overflow: two
//! products of at most 255·128 sum to well inside i32). Both are exact, so the choice costs speed,
//! never correctness; quantising with [`crate::quant::scheme::WEIGHT_QMAX_7BIT`] buys the fast one.
//! The tests run the extremes (A = 255, B = ±127 and -128) through every path.

use super::isa::Int8Isa;
use super::scheme::{requantize_full, Requant, ResidualQuant, HARDSWISH_SIXTH};

/// Columns per packed panel (one zmm of i32 lanes).
pub const PANEL: usize = 16;
/// `k` per packed group (the four bytes `vpdpbusd` sums).
pub const GROUP: usize = 4;

/// `B` (`k × n`, s8) in panels, with what the kernels need to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedB {
    data: Vec<i8>,
    k: usize,
    n: usize,
    groups: usize,
    panels: usize,
    /// Every value in `[-64, 63]`: the AVX2 `vpmaddubsw` kernel is exact.
    seven_bit: bool,
    col_sums: Vec<i32>,
}

impl PackedB {
    /// Packs `B[kk][j] = at(kk, j)` for `kk < k`, `j < n`.
    pub fn pack_with(k: usize, n: usize, at: impl Fn(usize, usize) -> i8) -> PackedB {
        assert!(k > 0 && n > 0, "empty B: {k} x {n}");
        let groups = k.div_ceil(GROUP);
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0i8; panels * groups * PANEL * GROUP];
        let mut seven_bit = true;
        let mut col_sums = vec![0i32; n];
        for kk in 0..k {
            for (j, sum) in col_sums.iter_mut().enumerate() {
                let v = at(kk, j);
                seven_bit &= (-64..=63).contains(&v);
                *sum += v as i32;
                let (p, g) = (j / PANEL, kk / GROUP);
                data[((p * groups + g) * PANEL + j % PANEL) * GROUP + kk % GROUP] = v;
            }
        }
        PackedB { data, k, n, groups, panels, seven_bit, col_sums }
    }

    /// From row-major `b[k][n]`.
    pub fn pack(b: &[i8], k: usize, n: usize) -> PackedB {
        assert_eq!(b.len(), k * n, "B is not {k} x {n}");
        Self::pack_with(k, n, |kk, j| b[kk * n + j])
    }

    /// From output-channel-major weights `w[n][k]` (a 1x1 conv's `[out, in]`, as
    /// [`crate::quant::scheme::QuantizedWeights`] holds them).
    pub fn pack_out_major(w: &[i8], n: usize, k: usize) -> PackedB {
        assert_eq!(w.len(), k * n, "weights are not {n} x {k}");
        Self::pack_with(k, n, |kk, j| w[j * k + kk])
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    /// Whether every weight is in `[-64, 63]` (the fast AVX2 kernel applies).
    pub fn seven_bit(&self) -> bool {
        self.seven_bit
    }
    /// `Σ_k B[k][j]` per column: the input zero point's correction.
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }
    /// Bytes from one panel to the next.
    fn panel_stride(&self) -> usize {
        self.groups * PANEL * GROUP
    }
}

/// The plain integer definition, on row-major `b[k][n]`: what every kernel must equal.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference(a: &[u8], lda: usize, m: usize, k: usize, b: &[i8], n: usize, c: &mut [i32], ldc: usize) {
    for i in 0..m {
        for j in 0..n {
            c[i * ldc + j] = (0..k).map(|kk| a[i * lda + kk] as i32 * b[kk * n + j] as i32).sum();
        }
    }
}

/// `C = A · B` with the kernels of `isa`: `a` holds `m` rows of `b.k()` u8 at stride `lda`, `c`
/// receives `m` rows of `b.n()` i32 at stride `ldc` (columns beyond `n` are not written).
///
/// Panics if the slices are too short or `isa` is not available on this CPU.
pub fn gemm_u8s8(isa: Int8Isa, a: &[u8], lda: usize, m: usize, b: &PackedB, c: &mut [i32], ldc: usize) {
    let (k, n) = (b.k, b.n);
    assert!(lda >= k && ldc >= n, "strides lda {lda} < k {k} or ldc {ldc} < n {n}");
    if m == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * lda + k, "A is too short for {m} rows");
    assert!(c.len() >= (m - 1) * ldc + n, "C is too short for {m} rows");
    assert!(isa.is_available(), "this CPU cannot run the {isa} int8 kernels");
    let geo = Geometry {
        a: a.as_ptr(),
        lda,
        k,
        b: b.data.as_ptr(),
        panel_stride: b.panel_stride(),
        c: c.as_mut_ptr(),
        ldc,
        n,
    };
    // SAFETY: the asserts above bound every row of A and C the kernels touch (they read `k`
    // bytes of each A row, never beyond, and write only the first `n` columns of each C row);
    // the packed panels are complete by construction; `isa` was checked to be available.
    unsafe { run(isa, &geo, m, b, None) }
}

/// `out = requantise(A · B)`: [`gemm_u8s8`] with the requantising store, u8 out (`m` rows of
/// `b.n()` at stride `ldo`); each value is `req.apply(acc, column)` exactly (hard-swish
/// included). A layer with a residual needs [`gemm_u8s8_store`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8s8_requant(
    isa: Int8Isa,
    a: &[u8],
    lda: usize,
    m: usize,
    b: &PackedB,
    req: &Requant,
    out: &mut [u8],
    ldo: usize,
) {
    assert!(req.residual.is_none(), "a layer with a residual needs gemm_u8s8_store and the residual map");
    gemm_u8s8_store(isa, a, lda, m, b, req, None, out, ldo)
}

/// `out = requantise(A · B [+ residual])`: [`gemm_u8s8`] with the whole store of
/// [`crate::quant::scheme::requantize_full`] fused, u8 out (`m` rows of `b.n()` at stride
/// `ldo`). `residual` is `(r, ldr)`: `m` rows of `b.n()` u8 at stride `ldr`, added as
/// `req.residual` says; it must be given exactly when `req.residual` is set. Each value is
/// `req.apply_with_residual(acc, column, r)` (or `req.apply(acc, column)`) bit for bit: the
/// kernels take the same f32 steps in the same order, with no fused multiply-adds.
///
/// Panics if the slices are too short, `req` covers fewer than `b.n()` channels, `req.lo >
/// req.hi`, the residual does not match `req.residual`, or `isa` is not available on this CPU.
#[allow(clippy::too_many_arguments)]
pub fn gemm_u8s8_store(
    isa: Int8Isa,
    a: &[u8],
    lda: usize,
    m: usize,
    b: &PackedB,
    req: &Requant,
    residual: Option<(&[u8], usize)>,
    out: &mut [u8],
    ldo: usize,
) {
    let (k, n) = (b.k, b.n);
    assert!(lda >= k && ldo >= n, "strides lda {lda} < k {k} or ldo {ldo} < n {n}");
    assert!(req.bias.len() >= n && req.multiplier.len() >= n, "requantisation for fewer than {n} channels");
    assert!(req.lo <= req.hi, "empty output clamp [{}, {}]", req.lo, req.hi);
    assert_eq!(
        req.residual.is_some(),
        residual.is_some(),
        "the residual map must be given exactly when the requantisation has a residual"
    );
    if let Some((_, ldr)) = residual {
        assert!(ldr >= n, "residual stride {ldr} < n {n}");
    }
    if m == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * lda + k, "A is too short for {m} rows");
    assert!(out.len() >= (m - 1) * ldo + n, "the output is too short for {m} rows");
    if let Some((r, ldr)) = residual {
        assert!(r.len() >= (m - 1) * ldr + n, "the residual is too short for {m} rows");
    }
    assert!(isa.is_available(), "this CPU cannot run the {isa} int8 kernels");
    let fused: Option<FusedTile> = match isa {
        #[cfg(engine_x86)]
        Int8Isa::Vnni512 => Some(x86::vnni_tile_requant),
        #[cfg(engine_x86)]
        Int8Isa::Avx2 if b.seven_bit => Some(x86::avx2_maddubs_requant),
        #[cfg(engine_x86)]
        Int8Isa::Avx2 => Some(x86::avx2_wide_requant),
        _ => None,
    };
    let (res, ldr) = residual.map_or((std::ptr::null(), 0), |(r, ldr)| (r.as_ptr(), ldr));
    // The last panel's bias and multipliers zero-padded to a whole panel (when `n` is not a
    // multiple of it), for the AVX2 tile that loads them as two full ymm.
    let (mut tail_bias, mut tail_mult) = ([0i32; PANEL], [0f32; PANEL]);
    let tail = n % PANEL;
    tail_bias[..tail].copy_from_slice(&req.bias[n - tail..n]);
    tail_mult[..tail].copy_from_slice(&req.multiplier[n - tail..n]);
    let q = RequantOut {
        req,
        out: out.as_mut_ptr(),
        ldo,
        res,
        ldr,
        emit: emit_portable,
        fused,
        int_round: int_round_is_exact(req, n),
        tail_bias,
        tail_mult,
    };
    let geo = Geometry {
        a: a.as_ptr(),
        lda,
        k,
        b: b.data.as_ptr(),
        panel_stride: b.panel_stride(),
        c: std::ptr::null_mut(),
        ldc: 0,
        n,
    };
    // SAFETY: as in `gemm_u8s8`, with the output and the residual bounded by the asserts above
    // (only the first `n` bytes of each row are written or read) and the requantisation
    // covering every column.
    unsafe { run(isa, &geo, m, b, Some(&q)) }
}

/// The kernel for `isa` and `b`, over every tile.
unsafe fn run(isa: Int8Isa, geo: &Geometry, m: usize, b: &PackedB, requant: Option<&RequantOut>) {
    match isa {
        #[cfg(engine_x86)]
        Int8Isa::Vnni512 => drive(geo, m, b.panels, x86::VNNI_ROWS, x86::VNNI_PANELS, x86::vnni_tile, requant),
        #[cfg(engine_x86)]
        Int8Isa::Avx2 if b.seven_bit => drive(geo, m, b.panels, x86::AVX2_ROWS, 1, x86::avx2_maddubs_tile, requant),
        #[cfg(engine_x86)]
        Int8Isa::Avx2 => drive(geo, m, b.panels, x86::WIDE_ROWS, 1, x86::avx2_wide_tile, requant),
        _ => drive(geo, m, b.panels, PORTABLE_ROWS, 1, portable_tile, requant),
    }
}

/// Which kernel [`gemm_u8s8`] runs for `isa` and `b` (for benchmarks and reports).
pub fn kernel_name(isa: Int8Isa, b: &PackedB) -> &'static str {
    match isa {
        Int8Isa::Vnni512 => "avx512-vnni vpdpbusd",
        Int8Isa::Avx2 if b.seven_bit => "avx2 vpmaddubsw (7-bit weights)",
        Int8Isa::Avx2 => "avx2 widening vpmaddwd",
        Int8Isa::Portable => "portable",
    }
}

/// Raw operands shared by the driver and the tiles.
#[derive(Clone, Copy)]
struct Geometry {
    a: *const u8,
    lda: usize,
    k: usize,
    b: *const i8,
    panel_stride: usize,
    c: *mut i32,
    ldc: usize,
    n: usize,
}

/// One tile: `rows` rows of A from `a`, `panels` panels of B from `b`, into `c`, of which `cols`
/// columns are real (the rest of the last panel is padding and is not stored).
type Tile = unsafe fn(g: &Geometry, a: *const u8, rows: usize, b: *const i8, panels: usize, c: *mut i32, cols: usize);

/// The most rows any tile has (the requantising store's scratch is sized for it).
const MAX_TILE_ROWS: usize = 8;

/// The requantising store: fused into the tile on x86 (from the accumulator registers), else
/// each tile's i32 results go to a scratch block in L1 and `emit` turns them into u8 in `out`
/// (`emit_portable`).
struct RequantOut<'a> {
    req: &'a Requant,
    out: *mut u8,
    ldo: usize,
    /// The residual map's rows at stride `ldr` (null without a residual).
    res: *const u8,
    ldr: usize,
    emit: Emit,
    /// A tile that requantises from its accumulator registers, where the ISA has one (then
    /// `emit` and the scratch block are not used).
    fused: Option<FusedTile>,
    /// Whether the x86 stores may round and convert in one step ([`int_round_is_exact`]).
    int_round: bool,
    /// The last panel's bias and multipliers, zero-padded to [`PANEL`] columns.
    tail_bias: [i32; PANEL],
    tail_mult: [f32; PANEL],
}

/// Whether `t` (the value before rounding, see [`requantize_full`]) is finite and below 2^31 in
/// magnitude for every accumulator, so that `vcvtps2dq` (round half to even, as
/// `f32::round_ties_even`) gives `round(t)` exactly and `round(t) + zero_point` cannot overflow
/// i32: then zero point and clamp may follow in integers (saturating packs and byte min/max),
/// which is monotone and so clamps to the same bytes as the definition's f32 steps. True for
/// every real layer: `|acc + bias| ≤ 2^31` and `|multiplier| ≤ 0.75` bound `|t|` by 1.61e9;
/// hard-swish never grows it (`g/6 ≤ 1`; a finite scale keeps `t` finite) and the residual
/// adds at most `255 · 1e6 = 2.55e8`, below `2^31 - 256` in all. Otherwise (huge or non-finite
/// multipliers, where `t` may be infinite or NaN) the stores take the f32 steps of the
/// definition one by one.
fn int_round_is_exact(req: &Requant, n: usize) -> bool {
    req.multiplier[..n].iter().all(|m| m.abs() <= 0.75)
        && req.hardswish.is_none_or(|s| s.is_finite())
        && req.residual.is_none_or(|r| r.multiplier.abs() <= 1e6)
}

/// A tile with the requantising store fused: as [`Tile`], writing u8 to `out` (row stride
/// `q.ldo`) for output columns `col0..col0 + cols`, adding the residual at `res` (row stride
/// `q.ldr`; null without a residual).
type FusedTile = unsafe fn(
    g: &Geometry,
    a: *const u8,
    rows: usize,
    b: *const i8,
    panels: usize,
    q: &RequantOut,
    out: *mut u8,
    res: *const u8,
    col0: usize,
    cols: usize,
);

/// Requantises `rows × cols` i32 at `scratch` (row stride `lds`) for output columns
/// `col0..col0 + cols` into `out` (row stride `q.ldo`), adding the residual at `res` (row stride
/// `q.ldr`; null without a residual).
type Emit = unsafe fn(
    scratch: *const i32,
    lds: usize,
    rows: usize,
    cols: usize,
    q: &RequantOut,
    col0: usize,
    out: *mut u8,
    res: *const u8,
);

/// The loop nest: rows in chunks whose A fits L1 alongside a panel, panels (in steps of
/// `max_panels`) inside, tiles of `max_rows` rows inside that. Results go to `g.c` as i32, or
/// through `requant` as u8.
unsafe fn drive(
    g: &Geometry,
    m: usize,
    panels: usize,
    max_rows: usize,
    max_panels: usize,
    tile: Tile,
    requant: Option<&RequantOut>,
) {
    const A_CHUNK_BYTES: usize = 16 * 1024;
    debug_assert!(max_rows <= MAX_TILE_ROWS && max_panels <= 2);
    let chunk = (A_CHUNK_BYTES / g.k.max(1)).max(1).div_ceil(max_rows) * max_rows;
    let mut scratch = [0i32; MAX_TILE_ROWS * 2 * PANEL];
    let scratch_geo = Geometry { c: scratch.as_mut_ptr(), ldc: 2 * PANEL, ..*g };
    let mut m0 = 0;
    while m0 < m {
        let m1 = (m0 + chunk).min(m);
        let mut p = 0;
        while p < panels {
            let np = max_panels.min(panels - p);
            let cols = (g.n - p * PANEL).min(np * PANEL);
            let mut r = m0;
            while r < m1 {
                let rows = max_rows.min(m1 - r);
                let (a, b) = (g.a.add(r * g.lda), g.b.add(p * g.panel_stride));
                match requant {
                    None => tile(g, a, rows, b, np, g.c.add(r * g.ldc + p * PANEL), cols),
                    Some(q) => {
                        let out = q.out.add(r * q.ldo + p * PANEL);
                        let res = if q.res.is_null() { q.res } else { q.res.add(r * q.ldr + p * PANEL) };
                        if let Some(fused) = q.fused {
                            fused(g, a, rows, b, np, q, out, res, p * PANEL, cols);
                        } else {
                            tile(&scratch_geo, a, rows, b, np, scratch_geo.c, cols);
                            (q.emit)(scratch_geo.c, scratch_geo.ldc, rows, cols, q, p * PANEL, out, res);
                        }
                    }
                }
                r += rows;
            }
            p += np;
        }
        m0 = m1;
    }
}

/// The requantisation of a block, [`requantize_full`] per value (the portable store; the x86
/// ones take the same f32 steps on vectors).
#[allow(clippy::too_many_arguments)]
unsafe fn emit_portable(
    scratch: *const i32,
    lds: usize,
    rows: usize,
    cols: usize,
    q: &RequantOut,
    col0: usize,
    out: *mut u8,
    res: *const u8,
) {
    let req = q.req;
    let bias = &req.bias[col0..col0 + cols];
    let mult = &req.multiplier[col0..col0 + cols];
    for r in 0..rows {
        let acc = std::slice::from_raw_parts(scratch.add(r * lds), cols);
        let dst = std::slice::from_raw_parts_mut(out.add(r * q.ldo), cols);
        let rrow = (!res.is_null()).then(|| std::slice::from_raw_parts(res.add(r * q.ldr), cols));
        for j in 0..cols {
            let residual = req.residual.map(|rq| (rrow.map_or(0, |rr| rr[j]), rq));
            dst[j] =
                requantize_full(acc[j], bias[j], mult[j], req.out_zero_point, req.lo, req.hi, req.hardswish, residual);
        }
    }
}

/// The four bytes of A at `k` offsets `4·group ..`, as one little-endian word; the last group of
/// a `k` that is not a multiple of 4 is zero-filled (never read past the row).
#[inline(always)]
unsafe fn a_word(row: *const u8, group: usize, k: usize) -> u32 {
    let at = group * GROUP;
    if at + GROUP <= k {
        (row.add(at) as *const u32).read_unaligned()
    } else {
        let mut bytes = [0u8; 4];
        std::ptr::copy_nonoverlapping(row.add(at), bytes.as_mut_ptr(), k - at);
        u32::from_le_bytes(bytes)
    }
}

const PORTABLE_ROWS: usize = 4;

/// Plain Rust over the packed layout: per group, the 64 weights are widened once into four
/// contiguous rows of 16 i16 (`[k][column]`) shared by the tile's rows, so the inner loop is a
/// contiguous multiply-add over 16 columns that LLVM vectorises for any target. The product
/// of a u8 and an s8 fits i16 exactly (|255 · -128| = 32640), so it is taken in i16 (a plain
/// SSE2 `pmullw`; x86-64's baseline has no 32-bit vector multiply) and widened to add.
unsafe fn portable_tile(
    g: &Geometry,
    a: *const u8,
    rows: usize,
    b: *const i8,
    _panels: usize,
    c: *mut i32,
    cols: usize,
) {
    let groups = g.k.div_ceil(GROUP);
    let mut acc = [[0i32; PANEL]; PORTABLE_ROWS];
    let mut wide = [[0i16; PANEL]; GROUP];
    for grp in 0..groups {
        let bg = std::slice::from_raw_parts(b.add(grp * PANEL * GROUP), PANEL * GROUP);
        for (t, wide) in wide.iter_mut().enumerate() {
            for (j, w) in wide.iter_mut().enumerate() {
                *w = bg[j * GROUP + t] as i16;
            }
        }
        // Always PORTABLE_ROWS rows (constant trip counts unroll and stay in registers); a
        // short tile repeats its last row, whose extra results are not stored.
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = a_word(a.add(r.min(rows - 1) * g.lda), grp, g.k).to_le_bytes();
            for (t, wide) in wide.iter().enumerate() {
                let x = av[t] as i16;
                for (acc, &w) in acc.iter_mut().zip(wide) {
                    *acc += (x * w) as i32;
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate().take(rows) {
        std::ptr::copy_nonoverlapping(acc.as_ptr(), c.add(r * g.ldc), cols);
    }
}

#[cfg(engine_x86)]
mod x86 {
    use super::{a_word, Geometry, Requant, RequantOut, GROUP, HARDSWISH_SIXTH, PANEL};
    use std::arch::x86_64::*;

    pub const VNNI_ROWS: usize = 8;
    pub const VNNI_PANELS: usize = 2;
    pub const AVX2_ROWS: usize = 4;
    pub const WIDE_ROWS: usize = 2;

    /// Calls `$f::<R>` for a row count known only at run time (`1..=$max`).
    macro_rules! rows {
        ($rows:expr, $f:ident, $($arg:expr),*) => {
            match $rows {
                1 => $f::<1>($($arg),*),
                2 => $f::<2>($($arg),*),
                3 => $f::<3>($($arg),*),
                4 => $f::<4>($($arg),*),
                5 => $f::<5>($($arg),*),
                6 => $f::<6>($($arg),*),
                7 => $f::<7>($($arg),*),
                8 => $f::<8>($($arg),*),
                r => unreachable!("{r} rows"),
            }
        };
    }

    // ---------------------------------------------------------------- requantising store

    /// The store's per-layer constants as zmm (see [`requant16`]).
    struct Store16 {
        zp: __m512,
        lo: __m512,
        hi: __m512,
        hardswish: bool,
        hs_scale: __m512,
        three: __m512,
        six: __m512,
        zero: __m512,
        sixth: __m512,
        residual: bool,
        res_zp: __m512i,
        res_mult: __m512,
        /// See [`super::int_round_is_exact`]; then the zero point and clamp are these i32.
        int_round: bool,
        zp_i: __m512i,
        lo_i: __m512i,
        hi_i: __m512i,
    }

    impl Store16 {
        #[inline(always)]
        unsafe fn new(req: &Requant, int_round: bool) -> Store16 {
            let rq = req.residual.unwrap_or(super::ResidualQuant { zero_point: 0, multiplier: 0.0 });
            Store16 {
                zp: _mm512_set1_ps(req.out_zero_point as f32),
                lo: _mm512_set1_ps(req.lo as f32),
                hi: _mm512_set1_ps(req.hi as f32),
                hardswish: req.hardswish.is_some(),
                hs_scale: _mm512_set1_ps(req.hardswish.unwrap_or(0.0)),
                three: _mm512_set1_ps(3.0),
                six: _mm512_set1_ps(6.0),
                zero: _mm512_setzero_ps(),
                sixth: _mm512_set1_ps(HARDSWISH_SIXTH),
                residual: req.residual.is_some(),
                res_zp: _mm512_set1_epi32(rq.zero_point as i32),
                res_mult: _mm512_set1_ps(rq.multiplier),
                int_round,
                zp_i: _mm512_set1_epi32(req.out_zero_point as i32),
                lo_i: _mm512_set1_epi32(req.lo as i32),
                hi_i: _mm512_set1_epi32(req.hi as i32),
            }
        }
    }

    /// [`super::requantize_full`] on 16 lanes, the same f32 operations in the same order, so the
    /// same results: `vcvtdq2ps` of `acc + bias` (round to nearest, as Rust's `as f32`), `vmulps`
    /// by the multipliers; hard-swish (`t · (clamp(t · s + 3, 0, 6)) · 1/6`); the residual
    /// (`(r - zp_r)`, exact in i32, converted, `· multiplier_r`, added); `vrndscaleps` to
    /// nearest-even, `+ zero point`, clamp to [lo, hi] and `vcvttps2dq` (exact: an integer in
    /// [0, 255]). The clamps take the constant first: `vmaxps`/`vminps` return their second
    /// operand when either is NaN or both are zeros, which is what `f32::clamp` does (it keeps
    /// NaN and -0), and a NaN ends as `vcvttps2dq`'s 0x80000000, whose low byte 0 is what
    /// `NaN as u8` gives. `res` is ignored without a residual.
    ///
    /// Where [`super::int_round_is_exact`] holds, `vcvtps2dq` rounds and converts at once and
    /// the zero point and clamp are taken in i32, which gives the same results.
    #[inline(always)]
    unsafe fn requant16(acc_bias: __m512i, mult: __m512, res: __m512i, c: &Store16) -> __m512i {
        let mut t = _mm512_mul_ps(_mm512_cvtepi32_ps(acc_bias), mult);
        if c.hardswish {
            let x = _mm512_add_ps(_mm512_mul_ps(t, c.hs_scale), c.three);
            let g = _mm512_min_ps(c.six, _mm512_max_ps(c.zero, x));
            t = _mm512_mul_ps(_mm512_mul_ps(t, g), c.sixth);
        }
        if c.residual {
            let r = _mm512_cvtepi32_ps(_mm512_sub_epi32(res, c.res_zp));
            t = _mm512_add_ps(t, _mm512_mul_ps(r, c.res_mult));
        }
        if c.int_round {
            let v = _mm512_add_epi32(_mm512_cvtps_epi32(t), c.zp_i);
            return _mm512_min_epi32(c.hi_i, _mm512_max_epi32(c.lo_i, v));
        }
        let v = _mm512_add_ps(_mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t), c.zp);
        _mm512_cvttps_epi32(_mm512_min_ps(c.hi, _mm512_max_ps(c.lo, v)))
    }

    /// `live` (1..=16) residual bytes at `p`, zero-extended to i32.
    #[inline(always)]
    unsafe fn residual16(p: *const u8, live: usize) -> __m512i {
        if live == PANEL {
            _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))
        } else {
            _mm512_cvtepu8_epi32(load_partial(p, live))
        }
    }

    /// The `n` (< 16) bytes at `p` in the low bytes of an xmm, the rest zero, reading only
    /// those bytes (in 8-, 4-, 2- and 1-byte pieces: no copy loop for a layer's last panel).
    #[inline(always)]
    unsafe fn load_partial(p: *const u8, n: usize) -> __m128i {
        let base = n & 8;
        let lo = if base != 0 { (p as *const u64).read_unaligned() } else { 0 };
        let (mut w, mut at, mut shift) = (0u64, base, 0);
        if n & 4 != 0 {
            w = (p.add(at) as *const u32).read_unaligned() as u64;
            at += 4;
            shift = 32;
        }
        if n & 2 != 0 {
            w |= ((p.add(at) as *const u16).read_unaligned() as u64) << shift;
            at += 2;
            shift += 16;
        }
        if n & 1 != 0 {
            w |= (*p.add(at) as u64) << shift;
        }
        if base != 0 {
            _mm_set_epi64x(w as i64, lo as i64)
        } else {
            _mm_set_epi64x(0, w as i64)
        }
    }

    /// Writes the low `n` (< 16) bytes of `v` to `dst`, nothing beyond (as [`load_partial`]).
    #[inline(always)]
    unsafe fn store_partial(dst: *mut u8, v: __m128i, n: usize) {
        let lo = _mm_cvtsi128_si64(v) as u64;
        let (mut w, mut at) = if n & 8 != 0 {
            (dst as *mut u64).write_unaligned(lo);
            (_mm_cvtsi128_si64(_mm_unpackhi_epi64(v, v)) as u64, 8)
        } else {
            (lo, 0)
        };
        if n & 4 != 0 {
            (dst.add(at) as *mut u32).write_unaligned(w as u32);
            w >>= 32;
            at += 4;
        }
        if n & 2 != 0 {
            (dst.add(at) as *mut u16).write_unaligned(w as u16);
            w >>= 16;
            at += 2;
        }
        if n & 1 != 0 {
            *dst.add(at) = w as u8;
        }
    }

    /// The store's per-layer constants as ymm (see [`scaled8`], [`Store8::bytes16`]).
    struct Store8 {
        zp: __m256,
        lo: __m256,
        hi: __m256,
        hardswish: bool,
        hs_scale: __m256,
        three: __m256,
        six: __m256,
        zero: __m256,
        sixth: __m256,
        residual: bool,
        res_zp: __m256i,
        res_mult: __m256,
        /// See [`super::int_round_is_exact`]; then the zero point is added in i16 and the clamp
        /// taken on the bytes.
        int_round: bool,
        zp16: __m256i,
        lo8: __m256i,
        hi8: __m256i,
    }

    impl Store8 {
        #[inline(always)]
        unsafe fn new(req: &Requant, int_round: bool) -> Store8 {
            let rq = req.residual.unwrap_or(super::ResidualQuant { zero_point: 0, multiplier: 0.0 });
            Store8 {
                zp: _mm256_set1_ps(req.out_zero_point as f32),
                lo: _mm256_set1_ps(req.lo as f32),
                hi: _mm256_set1_ps(req.hi as f32),
                hardswish: req.hardswish.is_some(),
                hs_scale: _mm256_set1_ps(req.hardswish.unwrap_or(0.0)),
                three: _mm256_set1_ps(3.0),
                six: _mm256_set1_ps(6.0),
                zero: _mm256_setzero_ps(),
                sixth: _mm256_set1_ps(HARDSWISH_SIXTH),
                residual: req.residual.is_some(),
                res_zp: _mm256_set1_epi32(rq.zero_point as i32),
                res_mult: _mm256_set1_ps(rq.multiplier),
                int_round,
                zp16: _mm256_set1_epi16(req.out_zero_point as i16),
                lo8: _mm256_set1_epi8(req.lo as i8),
                hi8: _mm256_set1_epi8(req.hi as i8),
            }
        }

        /// The 16 output bytes of `t0` then `t1` (the values before rounding, [`scaled8`]).
        /// The f32 path is [`finish8`] and [`bytes16`]; the integer one (where
        /// [`super::int_round_is_exact`] holds) converts with rounding (`vcvtps2dq`), packs to
        /// i16 with saturation, adds the zero point with saturation, packs to u8 with
        /// saturation and clamps the bytes: each step monotone and exact on [0, 255], so the
        /// same bytes as clamping `round(t) + zero point` in f32.
        #[inline(always)]
        unsafe fn bytes16(&self, t0: __m256, t1: __m256) -> __m128i {
            if self.int_round {
                let w = _mm256_packs_epi32(_mm256_cvtps_epi32(t0), _mm256_cvtps_epi32(t1));
                let w = _mm256_adds_epi16(w, self.zp16);
                let b = _mm256_packus_epi16(w, w);
                let b = _mm256_min_epu8(self.hi8, _mm256_max_epu8(self.lo8, b));
                _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5)))
            } else {
                bytes16(finish8(t0, self), finish8(t1, self))
            }
        }
    }

    /// [`requant16`] on 8 lanes (ymm, AVX2), up to the rounding: `t`.
    #[inline(always)]
    unsafe fn scaled8(acc_bias: __m256i, mult: __m256, res: __m256i, c: &Store8) -> __m256 {
        let mut t = _mm256_mul_ps(_mm256_cvtepi32_ps(acc_bias), mult);
        if c.hardswish {
            let x = _mm256_add_ps(_mm256_mul_ps(t, c.hs_scale), c.three);
            let g = _mm256_min_ps(c.six, _mm256_max_ps(c.zero, x));
            t = _mm256_mul_ps(_mm256_mul_ps(t, g), c.sixth);
        }
        if c.residual {
            let r = _mm256_cvtepi32_ps(_mm256_sub_epi32(res, c.res_zp));
            t = _mm256_add_ps(t, _mm256_mul_ps(r, c.res_mult));
        }
        t
    }

    /// The rest of [`requant16`]'s f32 steps on 8 lanes: the i32 results in [lo, hi]
    /// (0x80000000 for NaN).
    #[inline(always)]
    unsafe fn finish8(t: __m256, c: &Store8) -> __m256i {
        let v = _mm256_add_ps(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t), c.zp);
        _mm256_cvttps_epi32(_mm256_min_ps(c.hi, _mm256_max_ps(c.lo, v)))
    }

    /// The low bytes of 16 i32 (`lo` then `hi`, each in [0, 255] or 0x80000000), in order:
    /// `vpackssdw` (to i16, lane-interleaved), `vpackuswb` (to u8; 0x80000000 becomes 0, as its
    /// low byte is), `vpermd` to undo the interleave.
    #[inline(always)]
    unsafe fn bytes16(lo: __m256i, hi: __m256i) -> __m128i {
        let w = _mm256_packs_epi32(lo, hi);
        let b = _mm256_packus_epi16(w, w);
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5)))
    }

    // ---------------------------------------------------------------- AVX512-VNNI

    /// # Safety
    /// Only after `Int8Isa::Vnni512` was detected (avx512f + avx512vnni); pointers as [`super::Tile`].
    pub unsafe fn vnni_tile(
        g: &Geometry,
        a: *const u8,
        rows: usize,
        b: *const i8,
        panels: usize,
        c: *mut i32,
        cols: usize,
    ) {
        if panels == 2 {
            rows!(rows, vnni_tile_2, g, a, b, c, cols)
        } else {
            rows!(rows, vnni_tile_1, g, a, b, c, cols)
        }
    }

    // Two thin wrappers so the row dispatch macro sees a single const parameter.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn vnni_tile_2<const R: usize>(g: &Geometry, a: *const u8, b: *const i8, c: *mut i32, cols: usize) {
        let zero = [_mm512_setzero_si512(); 2];
        vnni_kernel::<R, 2>(g, a, b, cols, zero, |r, p, v, live| store_i32(c.add(r * g.ldc + p * PANEL), v, live))
    }
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn vnni_tile_1<const R: usize>(g: &Geometry, a: *const u8, b: *const i8, c: *mut i32, cols: usize) {
        let zero = [_mm512_setzero_si512(); 1];
        vnni_kernel::<R, 1>(g, a, b, cols, zero, |r, p, v, live| store_i32(c.add(r * g.ldc + p * PANEL), v, live))
    }

    #[inline(always)]
    unsafe fn store_i32(out: *mut i32, v: __m512i, live: usize) {
        if live == PANEL {
            _mm512_storeu_si512(out as *mut _, v);
        } else {
            _mm512_mask_storeu_epi32(out, ((1u32 << live) - 1) as u16, v);
        }
    }

    /// The VNNI tile with the requantising store fused: the accumulators are requantised in
    /// registers ([`requant16`]) and stored as bytes (`vpmovdb` under the live-column mask).
    ///
    /// # Safety
    /// Only after `Int8Isa::Vnni512` was detected; pointers as [`super::FusedTile`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn vnni_tile_requant(
        g: &Geometry,
        a: *const u8,
        rows: usize,
        b: *const i8,
        panels: usize,
        q: &RequantOut,
        out: *mut u8,
        res: *const u8,
        col0: usize,
        cols: usize,
    ) {
        if panels == 2 {
            rows!(rows, vnni_requant_2, g, a, b, q, out, res, col0, cols)
        } else {
            rows!(rows, vnni_requant_1, g, a, b, q, out, res, col0, cols)
        }
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn vnni_requant_2<const R: usize>(
        g: &Geometry,
        a: *const u8,
        b: *const i8,
        q: &RequantOut,
        out: *mut u8,
        res: *const u8,
        col0: usize,
        cols: usize,
    ) {
        vnni_requant::<R, 2>(g, a, b, q, out, res, col0, cols)
    }
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn vnni_requant_1<const R: usize>(
        g: &Geometry,
        a: *const u8,
        b: *const i8,
        q: &RequantOut,
        out: *mut u8,
        res: *const u8,
        col0: usize,
        cols: usize,
    ) {
        vnni_requant::<R, 1>(g, a, b, q, out, res, col0, cols)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn vnni_requant<const R: usize, const P: usize>(
        g: &Geometry,
        a: *const u8,
        b: *const i8,
        q: &RequantOut,
        out: *mut u8,
        res: *const u8,
        col0: usize,
        cols: usize,
    ) {
        let req = q.req;
        let c = Store16::new(req, q.int_round);
        // The bias and multipliers of the tile's columns, loaded under the live-column mask
        // (the slices end at the real channel count).
        let bias = req.bias[col0..col0 + cols].as_ptr();
        let mult = req.multiplier[col0..col0 + cols].as_ptr();
        let live = |p: usize| cols.saturating_sub(p * PANEL).min(PANEL);
        let mask = |p: usize| if live(p) == PANEL { u16::MAX } else { ((1u32 << live(p)) - 1) as u16 };
        let bv: [__m512i; P] = std::array::from_fn(|p| _mm512_maskz_loadu_epi32(mask(p), bias.wrapping_add(p * PANEL)));
        let mv: [__m512; P] = std::array::from_fn(|p| _mm512_maskz_loadu_ps(mask(p), mult.wrapping_add(p * PANEL)));
        // The accumulators start at the bias: `acc + bias` (wrapping, as `vpdpbusd` adds) for free.
        vnni_kernel::<R, P>(g, a, b, cols, bv, |r, p, v, live| {
            let rv = if c.residual { residual16(res.add(r * q.ldr + p * PANEL), live) } else { _mm512_setzero_si512() };
            let bytes = requant16(v, mv[p], rv, &c);
            let dst = out.add(r * q.ldo + p * PANEL);
            if live == PANEL {
                _mm_storeu_si128(dst as *mut __m128i, _mm512_cvtepi32_epi8(bytes));
            } else {
                _mm512_mask_cvtepi32_storeu_epi8(dst as *mut _, mask(p), bytes);
            }
        })
    }

    /// `R` rows × `P` panels of i32 accumulators in zmm, starting at `init` (per panel); per group
    /// of 4 `k`, one broadcast of A per row and one load of B per panel feed `R·P` `vpdpbusd`.
    /// `store(row, panel, sums, live columns)` takes each finished vector.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn vnni_kernel<const R: usize, const P: usize>(
        g: &Geometry,
        a: *const u8,
        b: *const i8,
        cols: usize,
        init: [__m512i; P],
        mut store: impl FnMut(usize, usize, __m512i, usize),
    ) {
        let mut acc = [init; R];
        let groups = g.k.div_ceil(GROUP);
        let full = g.k / GROUP;
        let step = |acc: &mut [[__m512i; P]; R], grp: usize, tail: bool| {
            let bv: [__m512i; P] =
                std::array::from_fn(
                    |p| _mm512_loadu_si512(b.add(p * g.panel_stride + grp * PANEL * GROUP) as *const _),
                );
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = a.add(r * g.lda);
                let word =
                    if tail { a_word(row, grp, g.k) } else { (row.add(grp * GROUP) as *const u32).read_unaligned() };
                let av = _mm512_set1_epi32(word as i32);
                for p in 0..P {
                    acc[p] = _mm512_dpbusd_epi32(acc[p], av, bv[p]);
                }
            }
        };
        for grp in 0..full {
            step(&mut acc, grp, false);
        }
        if groups > full {
            step(&mut acc, full, true);
        }
        for (r, acc) in acc.iter().enumerate() {
            for (p, v) in acc.iter().enumerate() {
                let live = cols.saturating_sub(p * PANEL).min(PANEL);
                if live > 0 {
                    store(r, p, *v, live);
                }
            }
        }
    }

    // ---------------------------------------------------------------- AVX2

    /// # Safety
    /// Only after AVX2 was detected, and only on a `PackedB` whose weights are in `[-64, 63]`
    /// (otherwise `vpmaddubsw` saturates); pointers as [`super::Tile`].
    pub unsafe fn avx2_maddubs_tile(
        g: &Geometry,
        a: *const u8,
        rows: usize,
        b: *const i8,
        _p: usize,
        c: *mut i32,
        cols: usize,
    ) {
        rows!(rows, avx2_maddubs_i32, g, a, b, c, cols)
    }

    #[target_feature(enable = "avx2")]
    unsafe fn avx2_maddubs_i32<const R: usize>(g: &Geometry, a: *const u8, b: *const i8, c: *mut i32, cols: usize) {
        let zero = [_mm256_setzero_si256(); 2];
        avx2_maddubs_kernel::<R>(g, a, b, zero, |r, lo, hi| store16(c.add(r * g.ldc), lo, hi, cols))
    }

    /// The `vpmaddubsw` tile with the requantising store fused (from the accumulator registers,
    /// [`scaled8`], [`Store8::bytes16`]).
    ///
    /// # Safety
    /// As [`avx2_maddubs_tile`]; pointers as [`super::FusedTile`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn avx2_maddubs_requant(
        g: &Geometry,
        a: *const u8,
        rows: usize,
        b: *const i8,
        _p: usize,
        q: &RequantOut,
        out: *mut u8,
        res: *const u8,
        col0: usize,
        cols: usize,
    ) {
        rows!(rows, avx2_maddubs_u8, g, a, b, q, out, res, col0, cols)
    }

    /// # Safety
    /// Only after AVX2 was detected; any weights; pointers as [`super::FusedTile`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn avx2_wide_requant(
        g: &Geometry,
        a: *const u8,
        rows: usize,
        b: *const i8,
        _p: usize,
        q: &RequantOut,
        out: *mut u8,
        res: *const u8,
        col0: usize,
        cols: usize,
    ) {
        rows!(rows, avx2_wide_u8, g, a, b, q, out, res, col0, cols)
    }

    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx2_maddubs_u8<const R: usize>(
        g: &Geometry,
        a: *const u8,
        b: *const i8,
        q: &RequantOut,
        out: *mut u8,
        res: *const u8,
        col0: usize,
        cols: usize,
    ) {
        avx2_u8::<R, false>(g, a, b, q, out, res, col0, cols)
    }

    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx2_wide_u8<const R: usize>(
        g: &Geometry,
        a: *const u8,
        b: *const i8,
        q: &RequantOut,
        out: *mut u8,
        res: *const u8,
        col0: usize,
        cols: usize,
    ) {
        avx2_u8::<R, true>(g, a, b, q, out, res, col0, cols)
    }

    /// The AVX2 tiles' fused store: the `vpmaddubsw` kernel, or the widening one (`WIDE`).
    #[inline]
    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn avx2_u8<const R: usize, const WIDE: bool>(
        g: &Geometry,
        a: *const u8,
        b: *const i8,
        q: &RequantOut,
        out: *mut u8,
        res: *const u8,
        col0: usize,
        cols: usize,
    ) {
        let req = q.req;
        // The panel's bias and multipliers (zero-padded past the real columns for the last
        // panel). The multipliers are loaded inside the store, after the k loop: held in ymm
        // across it they would push the accumulators out of AVX2's 16 registers.
        let (bp, mp) = if cols == PANEL {
            (req.bias[col0..col0 + PANEL].as_ptr(), req.multiplier[col0..col0 + PANEL].as_ptr())
        } else {
            (q.tail_bias.as_ptr(), q.tail_mult.as_ptr())
        };
        let c = Store8::new(req, q.int_round);
        // The accumulators start at the bias: `acc + bias` (wrapping) for free.
        let init = [_mm256_loadu_si256(bp as *const __m256i), _mm256_loadu_si256(bp.add(8) as *const __m256i)];
        let store = |r: usize, v0: __m256i, v1: __m256i| {
            let (r0, r1) = if c.residual {
                let rp = res.add(r * q.ldr);
                let v = if cols == PANEL { _mm_loadu_si128(rp as *const __m128i) } else { load_partial(rp, cols) };
                (_mm256_cvtepu8_epi32(v), _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v, v)))
            } else {
                (_mm256_setzero_si256(), _mm256_setzero_si256())
            };
            let t0 = scaled8(v0, _mm256_loadu_ps(mp), r0, &c);
            let t1 = scaled8(v1, _mm256_loadu_ps(mp.add(8)), r1, &c);
            let bytes = c.bytes16(t0, t1);
            let dst = out.add(r * q.ldo);
            if cols == PANEL {
                _mm_storeu_si128(dst as *mut __m128i, bytes);
            } else {
                store_partial(dst, bytes, cols);
            }
        };
        if WIDE {
            avx2_wide_kernel::<R>(g, a, b, init, store)
        } else {
            avx2_maddubs_kernel::<R>(g, a, b, init, store)
        }
    }

    /// Stores two ymm of i32 (16 columns) to `out`, of which `cols` are real.
    #[inline(always)]
    unsafe fn store16(out: *mut i32, lo: __m256i, hi: __m256i, cols: usize) {
        if cols == PANEL {
            _mm256_storeu_si256(out as *mut __m256i, lo);
            _mm256_storeu_si256(out.add(8) as *mut __m256i, hi);
        } else {
            let mut tmp = [0i32; PANEL];
            _mm256_storeu_si256(tmp.as_mut_ptr() as *mut __m256i, lo);
            _mm256_storeu_si256(tmp.as_mut_ptr().add(8) as *mut __m256i, hi);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), out, cols);
        }
    }

    /// Per group: `vpmaddubsw` (u8·s8, adjacent pairs summed into i16 — exact for 7-bit weights),
    /// then `vpmaddwd` by ones (the two pairs of each column into its i32), then add; the
    /// accumulators start at `init` (16 columns, the same for every row).
    #[target_feature(enable = "avx2")]
    unsafe fn avx2_maddubs_kernel<const R: usize>(
        g: &Geometry,
        a: *const u8,
        b: *const i8,
        init: [__m256i; 2],
        mut store: impl FnMut(usize, __m256i, __m256i),
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [init; R];
        let groups = g.k.div_ceil(GROUP);
        let full = g.k / GROUP;
        let step = |acc: &mut [[__m256i; 2]; R], grp: usize, tail: bool| {
            let bp = b.add(grp * PANEL * GROUP) as *const __m256i;
            let bv = [_mm256_loadu_si256(bp), _mm256_loadu_si256(bp.add(1))];
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = a.add(r * g.lda);
                let word =
                    if tail { a_word(row, grp, g.k) } else { (row.add(grp * GROUP) as *const u32).read_unaligned() };
                let av = _mm256_set1_epi32(word as i32);
                for h in 0..2 {
                    let pairs = _mm256_maddubs_epi16(av, bv[h]);
                    acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(pairs, ones));
                }
            }
        };
        for grp in 0..full {
            step(&mut acc, grp, false);
        }
        if groups > full {
            step(&mut acc, full, true);
        }
        for (r, acc) in acc.iter().enumerate() {
            store(r, acc[0], acc[1]);
        }
    }

    /// # Safety
    /// Only after AVX2 was detected; any weights; pointers as [`super::Tile`].
    pub unsafe fn avx2_wide_tile(
        g: &Geometry,
        a: *const u8,
        rows: usize,
        b: *const i8,
        _p: usize,
        c: *mut i32,
        cols: usize,
    ) {
        rows!(rows, avx2_wide_i32, g, a, b, c, cols)
    }

    #[target_feature(enable = "avx2")]
    unsafe fn avx2_wide_i32<const R: usize>(g: &Geometry, a: *const u8, b: *const i8, c: *mut i32, cols: usize) {
        let zero = [_mm256_setzero_si256(); 2];
        avx2_wide_kernel::<R>(g, a, b, zero, |r, lo, hi| store16(c.add(r * g.ldc), lo, hi, cols))
    }

    /// Per group: the 64 bytes of B sign-extended to i16 in four ymm (4 columns × 4 `k` each),
    /// the 4 bytes of A zero-extended to i16 and broadcast as one 64-bit pattern, and `vpmaddwd`
    /// (i16·i16, pairs summed into i32: exact). Each column ends as two partial sums, added at
    /// the end (`vphaddd`), plus `init` (16 columns, the same for every row); `store(row, columns
    /// 0..8, columns 8..16)` takes each row.
    #[target_feature(enable = "avx2")]
    unsafe fn avx2_wide_kernel<const R: usize>(
        g: &Geometry,
        a: *const u8,
        b: *const i8,
        init: [__m256i; 2],
        mut store: impl FnMut(usize, __m256i, __m256i),
    ) {
        let mut acc = [[_mm256_setzero_si256(); 4]; R];
        let groups = g.k.div_ceil(GROUP);
        let full = g.k / GROUP;
        let step = |acc: &mut [[__m256i; 4]; R], grp: usize, tail: bool| {
            let bp = b.add(grp * PANEL * GROUP) as *const __m128i;
            let bv: [__m256i; 4] = std::array::from_fn(|q| _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(q))));
            for (r, acc) in acc.iter_mut().enumerate() {
                let row = a.add(r * g.lda);
                let word =
                    if tail { a_word(row, grp, g.k) } else { (row.add(grp * GROUP) as *const u32).read_unaligned() };
                let a16 = _mm_cvtepu8_epi16(_mm_cvtsi32_si128(word as i32));
                let av = _mm256_broadcastq_epi64(a16);
                for q in 0..4 {
                    acc[q] = _mm256_add_epi32(acc[q], _mm256_madd_epi16(av, bv[q]));
                }
            }
        };
        for grp in 0..full {
            step(&mut acc, grp, false);
        }
        if groups > full {
            step(&mut acc, full, true);
        }
        for (r, acc) in acc.iter().enumerate() {
            // acc[q] holds columns 4q..4q+4 as (first pair, second pair) each: `vphaddd` of two
            // gives columns (0, 1, 4, 5 | 2, 3, 6, 7) of their eight, `vpermq` puts them in order.
            let lo = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(acc[0], acc[1]));
            let hi = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(acc[2], acc[3]));
            store(r, _mm256_add_epi32(lo, init[0]), _mm256_add_epi32(hi, init[1]));
        }
    }

    /// The raw `vpmaddubsw` kernel on any weights, bypassing [`super::gemm_u8s8`]'s 7-bit check:
    /// for the test that shows the saturation the check guards against.
    #[cfg(test)]
    pub fn maddubs_unchecked(a: &[u8], m: usize, b: &super::PackedB, c: &mut [i32]) {
        assert!(is_x86_feature_detected!("avx2"));
        assert!(a.len() >= m * b.k && c.len() >= m * b.n);
        let geo = Geometry {
            a: a.as_ptr(),
            lda: b.k,
            k: b.k,
            b: b.data.as_ptr(),
            panel_stride: b.panel_stride(),
            c: c.as_mut_ptr(),
            ldc: b.n,
            n: b.n,
        };
        // SAFETY: AVX2 checked above; the slices hold m rows of A and C.
        unsafe { super::drive(&geo, m, b.panels, AVX2_ROWS, 1, avx2_maddubs_tile, None) }
    }
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
    }

    /// Every path this CPU has: (isa, whether to quantise B to 7 bits).
    fn paths() -> Vec<(Int8Isa, bool)> {
        Int8Isa::all_available().into_iter().flat_map(|isa| [(isa, false), (isa, true)]).collect()
    }

    /// Runs every available kernel on (A, B) with padded strides and checks it equals the
    /// reference exactly, and that it writes nothing outside its `m × n` block.
    fn check(a: &[u8], m: usize, k: usize, b: &[i8], n: usize, what: &str) {
        let (lda, ldc) = (k + 3, n + 5);
        let mut a_strided = vec![0u8; m * lda];
        for i in 0..m {
            a_strided[i * lda..i * lda + k].copy_from_slice(&a[i * k..(i + 1) * k]);
        }
        // Exactly as long as the last row needs: a read past the end would panic or be caught
        // by the reference's bounds, never silently pass.
        let a_tight = &a_strided[..(m - 1) * lda + k];
        let mut want = vec![-7i32; m * ldc];
        gemm_reference(a_tight, lda, m, k, b, n, &mut want, ldc);
        let packed = PackedB::pack(b, k, n);
        for isa in Int8Isa::all_available() {
            let mut got = vec![-7i32; m * ldc];
            gemm_u8s8(isa, a_tight, lda, m, &packed, &mut got, ldc);
            if got != want {
                let i = got.iter().zip(&want).position(|(g, w)| g != w).unwrap();
                panic!(
                    "{what}: {} ({isa}) differs at row {} col {}: {} vs {} (m {m} k {k} n {n})",
                    kernel_name(isa, &packed),
                    i / ldc,
                    i % ldc,
                    got[i],
                    want[i]
                );
            }
        }
    }

    #[test]
    fn kernels_equal_the_reference_on_random_shapes() {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        let mut shapes = vec![(1, 1, 1), (1, 4, 16), (3, 5, 17), (8, 96, 32), (9, 7, 33), (17, 13, 15), (13, 3, 47)];
        for _ in 0..40 {
            shapes.push((1 + rng.below(40), 1 + rng.below(150), 1 + rng.below(80)));
        }
        for (m, k, n) in shapes {
            let a: Vec<u8> = (0..m * k).map(|_| rng.next() as u8).collect();
            for seven in [false, true] {
                let b: Vec<i8> = (0..k * n)
                    .map(|_| if seven { (rng.below(128) as i32 - 64) as i8 } else { rng.next() as i8 })
                    .collect();
                check(&a, m, k, &b, n, if seven { "random 7-bit" } else { "random 8-bit" });
            }
        }
        assert!(!paths().is_empty());
    }

    #[test]
    fn kernels_are_exact_at_the_extremes() {
        // A = 255 everywhere and B at ±127 / -128: each vpmaddubsw pair would be ±64770 or
        // -65280 (far beyond i16), so a saturating path gives ±32767 per pair and fails here.
        for (m, k, n) in [(9, 64, 33), (5, 131, 16), (2, 4, 1)] {
            let a = vec![255u8; m * k];
            for fill in [127i8, -128, -127] {
                check(&a, m, k, &vec![fill; k * n], n, "extreme");
            }
            // Alternating signs, so partial sums swing both ways.
            let b: Vec<i8> = (0..k * n).map(|i| if (i / n) % 3 == 0 { -128 } else { 127 }).collect();
            check(&a, m, k, &b, n, "extreme mixed");
            // The 7-bit edge the fast AVX2 kernel relies on: 255·(-64)·2 = -32640, 255·63·2 = 32130.
            for fill in [-64i8, 63] {
                let b = vec![fill; k * n];
                assert!(PackedB::pack(&b, k, n).seven_bit());
                check(&a, m, k, &b, n, "7-bit extreme");
            }
        }
    }

    /// The pitfall itself: the raw `vpmaddubsw` kernel on 8-bit weights does saturate, so the
    /// 7-bit check in `gemm_u8s8` is what keeps the AVX2 path exact.
    #[cfg(engine_x86)]
    #[test]
    fn raw_maddubs_saturates_on_eight_bit_weights() {
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let (m, k, n) = (1, 4, 16);
        let b = PackedB::pack(&vec![127i8; k * n], k, n);
        assert!(!b.seven_bit());
        let mut c = vec![0i32; n];
        x86::maddubs_unchecked(&[255u8; 4], m, &b, &mut c);
        // Exact: 4·255·127 = 129540; saturated: 2·32767 = 65534.
        assert_eq!(c[0], 2 * i16::MAX as i32);
        let mut exact = vec![0i32; n];
        gemm_u8s8(Int8Isa::Avx2, &[255u8; 4], k, m, &b, &mut exact, n);
        assert_eq!(exact[0], 4 * 255 * 127);
    }

    /// The scalar definition of the store over a whole block: `acc` is `m × n` (dense),
    /// `res` `m` rows at stride `ldr`, the result `m` rows at stride `ldo` (filled with 0xAA
    /// beyond `n`, which the kernels must not touch).
    fn store_reference(
        acc: &[i32],
        m: usize,
        n: usize,
        req: &Requant,
        res: Option<(&[u8], usize)>,
        ldo: usize,
    ) -> Vec<u8> {
        let mut want = vec![0xAAu8; m * ldo];
        for r in 0..m {
            for j in 0..n {
                let a = acc[r * n + j];
                want[r * ldo + j] = match res {
                    Some((res, ldr)) => req.apply_with_residual(a, j, res[r * ldr + j]),
                    None => req.apply(a, j),
                };
            }
        }
        want
    }

    /// Runs [`gemm_u8s8_store`] on every ISA (and [`gemm_u8s8_requant`] where there is no
    /// residual) and checks each against [`store_reference`] byte for byte.
    #[allow(clippy::too_many_arguments)]
    fn check_store(
        a: &[u8],
        m: usize,
        k: usize,
        b: &[i8],
        n: usize,
        req: &Requant,
        res: Option<(&[u8], usize)>,
        what: &str,
    ) {
        let mut acc = vec![0i32; m * n];
        gemm_reference(a, k, m, k, b, n, &mut acc, n);
        let ldo = n + 3;
        let want = store_reference(&acc, m, n, req, res, ldo);
        let packed = PackedB::pack(b, k, n);
        for isa in Int8Isa::all_available() {
            let mut got = vec![0xAAu8; m * ldo];
            gemm_u8s8_store(isa, a, k, m, &packed, req, res, &mut got, ldo);
            if got != want {
                let i = got.iter().zip(&want).position(|(g, w)| g != w).unwrap();
                let (r, j) = (i / ldo, i % ldo);
                panic!(
                    "{what}: {} ({isa}) differs at row {r} col {j}: {} vs {} (acc {}, m {m} k {k} n {n}, {req:?})",
                    kernel_name(isa, &packed),
                    got[i],
                    want[i],
                    if j < n { acc[r * n + j] } else { 0 },
                );
            }
            if res.is_none() {
                let mut got = vec![0xAAu8; m * ldo];
                gemm_u8s8_requant(isa, a, k, m, &packed, req, &mut got, ldo);
                assert_eq!(got, want, "{what}: gemm_u8s8_requant ({isa}), m {m} k {k} n {n}");
            }
        }
    }

    #[test]
    fn requantising_store_equals_the_scalar_definition() {
        let mut rng = Rng(0xC0FF_EE00_1234_5678);
        let mut shapes = vec![(1, 1, 1), (9, 5, 33), (17, 64, 48), (3, 131, 17), (8, 8, 32), (12, 24, 144)];
        // Every width of a partial last panel (the stores' masked and pieced loads and stores).
        shapes.extend((1..=32).map(|n| (5, 9, n)));
        for _ in 0..24 {
            shapes.push((1 + rng.below(30), 1 + rng.below(100), 1 + rng.below(70)));
        }
        for (i, (m, k, n)) in shapes.into_iter().enumerate() {
            let a: Vec<u8> = (0..m * k).map(|_| rng.next() as u8).collect();
            for seven in [false, true] {
                let b: Vec<i8> = (0..k * n)
                    .map(|_| if seven { (rng.below(128) as i32 - 64) as i8 } else { rng.next() as i8 })
                    .collect();
                // Every combination of hard-swish, residual and clamp (none, a band, a ReLU at
                // the zero point), with multipliers from tiny to large enough to saturate and
                // biases of both signs, on both x86 rounding paths (integer where every
                // multiplier is at most 0.75, f32 steps otherwise).
                for case in 0..24 {
                    let (hardswish, residual, int_path) = (case & 1 == 1, case & 2 == 2, case & 4 == 4);
                    let clamp = (case / 8 + i) % 3;
                    let zp = rng.next() as u8;
                    let (lo, hi) = match clamp {
                        0 => (0, 255),
                        1 => (20, 200),
                        _ => (zp, 255),
                    };
                    let req = Requant {
                        bias: (0..n).map(|_| rng.below(200_001) as i32 - 100_000).collect(),
                        multiplier: (0..n)
                            .map(|j| match (int_path, j % 5) {
                                (true, _) => 0.75 * 10f32.powf(-(rng.below(5000) as f32) / 1000.0),
                                (false, 0) => 0.76 + rng.below(1000) as f32 / 4000.0,
                                (false, _) => 10f32.powf(-(rng.below(5000) as f32) / 1000.0),
                            })
                            .collect(),
                        out_zero_point: zp,
                        lo,
                        hi,
                        hardswish: hardswish.then(|| 10f32.powf(-(rng.below(3000) as f32) / 1000.0)),
                        residual: residual.then(|| ResidualQuant {
                            zero_point: rng.next() as u8,
                            multiplier: 10f32.powf((rng.below(2500) as f32 - 1500.0) / 1000.0),
                        }),
                    };
                    assert_eq!(int_round_is_exact(&req, n), int_path);
                    let ldr = n + 2;
                    let res: Vec<u8> = (0..m * ldr).map(|_| rng.next() as u8).collect();
                    let what = format!("hard-swish {hardswish} residual {residual} clamp [{lo}, {hi}] 7-bit {seven}");
                    check_store(&a, m, k, &b, n, &req, residual.then_some((&res[..(m - 1) * ldr + n], ldr)), &what);
                }
            }
        }
    }

    /// Hard-swish's clamp at its ends: `t · s + 3` exactly 0 and 6, and a step either side, with
    /// and without a residual after it.
    #[test]
    fn hardswish_clamp_boundaries_are_exact() {
        // k = 1 and B = 1: row i's accumulator is A[i] = i, so with bias -128 column j sees
        // t = (i - 128) · multiplier[j] for every i in -128..128.
        let (m, k, n) = (256, 1, 40);
        let a: Vec<u8> = (0..=255).collect();
        let b = vec![1i8; n];
        let mults = [1.0f32, 0.5, 0.25, 0.1, 0.3, 1.0 / 3.0, 0.0625, 0.7, 0.2, 1.5];
        let mut hit = [false; 2];
        // Twice: multipliers above 0.75 make the x86 stores take the f32 steps one by one;
        // without them they round in integers (`int_round_is_exact`).
        for (s, limit) in
            [0.25f32, 0.1, 0.2, 0.0625, 0.3, 1.0 / 12.0, 0.75].into_iter().flat_map(|s| [(s, 0.75), (s, 2.0)])
        {
            let mults = mults.map(|m| if m > limit { 0.5 } else { m });
            let multiplier: Vec<f32> =
                (0..n).map(|j| mults[j % mults.len()] * if j < 20 { 1.0 } else { 1.0 + 1e-7 * j as f32 }).collect();
            for residual in [None, Some(ResidualQuant { zero_point: 7, multiplier: 0.37 })] {
                let req = Requant {
                    bias: vec![-128; n],
                    multiplier: multiplier.clone(),
                    out_zero_point: 100,
                    lo: 0,
                    hi: 255,
                    hardswish: Some(s),
                    residual,
                };
                assert_eq!(int_round_is_exact(&req, n), limit < 1.0);
                for i in 0..m {
                    for &mu in &multiplier {
                        let x = (i as i32 - 128) as f32 * mu * s + 3.0;
                        hit[0] |= x == 0.0;
                        hit[1] |= x == 6.0;
                    }
                }
                let res: Vec<u8> = (0..m * n).map(|i| (i * 37 % 251) as u8).collect();
                check_store(&a, m, k, &b, n, &req, residual.map(|_| (&res[..], n)), "hard-swish boundaries");
            }
        }
        assert!(hit[0] && hit[1], "the boundaries were not hit exactly");
    }

    /// Multipliers so large that `t` overflows to ±inf (hard-swish then makes NaN of -inf,
    /// `-inf · 0`), zero and negative ones: the kernels still give the definition's bytes.
    #[test]
    fn store_is_exact_at_infinities_and_odd_multipliers() {
        let mut rng = Rng(0x1F1F_2E2E_3D3D_4C4C);
        let (m, k, n) = (11, 7, 37);
        let a: Vec<u8> = (0..m * k).map(|_| rng.next() as u8).collect();
        let b: Vec<i8> = (0..k * n).map(|_| rng.next() as i8).collect();
        let odd = [f32::MAX, 1e30, -1e30, 0.0, -0.0, -0.01, 3e38, 1e-30];
        for hardswish in [None, Some(0.05f32), Some(1e30)] {
            for residual in [None, Some(ResidualQuant { zero_point: 200, multiplier: 1e38 })] {
                for (lo, hi) in [(0u8, 255u8), (9, 250), (0, 0), (255, 255)] {
                    let req = Requant {
                        bias: (0..n).map(|j| if j % 3 == 0 { 0 } else { rng.below(2001) as i32 - 1000 }).collect(),
                        multiplier: (0..n).map(|j| odd[j % odd.len()]).collect(),
                        out_zero_point: 17,
                        lo,
                        hi,
                        hardswish,
                        residual,
                    };
                    let res: Vec<u8> = (0..m * n).map(|_| rng.next() as u8).collect();
                    check_store(&a, m, k, &b, n, &req, residual.map(|_| (&res[..], n)), "odd multipliers");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "residual")]
    fn a_residual_layer_needs_its_map() {
        let b = PackedB::pack(&[1], 1, 1);
        let req = Requant {
            bias: vec![0],
            multiplier: vec![1.0],
            out_zero_point: 0,
            lo: 0,
            hi: 255,
            hardswish: None,
            residual: Some(ResidualQuant { zero_point: 0, multiplier: 1.0 }),
        };
        gemm_u8s8_requant(Int8Isa::Portable, &[1], 1, 1, &b, &req, &mut [0], 1);
    }

    #[test]
    #[should_panic(expected = "residual")]
    fn a_residual_map_needs_a_residual_layer() {
        let b = PackedB::pack(&[1], 1, 1);
        let req = Requant {
            bias: vec![0],
            multiplier: vec![1.0],
            out_zero_point: 0,
            lo: 0,
            hi: 255,
            hardswish: None,
            residual: None,
        };
        gemm_u8s8_store(Int8Isa::Portable, &[1], 1, 1, &b, &req, Some((&[3], 1)), &mut [0], 1);
    }

    /// A whole quantised 1x1 convolution (f32 in, weights and bias, f32 range out) through the
    /// scheme and the GEMM lands within one output step of the f64 convolution on the
    /// dequantised operands, on every ISA.
    #[test]
    fn quantised_pointwise_conv_is_within_one_step() {
        use crate::quant::scheme::{quantize_weights, ActivationQuant, WEIGHT_QMAX};
        let mut rng = Rng(0xABCD_EF01_2345_6789);
        let (m, k, n) = (37, 24, 20);
        let unit = |rng: &mut Rng| (rng.next() >> 40) as f32 / (1u64 << 24) as f32;
        let x: Vec<f32> = (0..m * k).map(|_| unit(&mut rng) * 4.0 - 1.0).collect();
        let w: Vec<f32> = (0..n * k).map(|_| unit(&mut rng) * 0.6 - 0.3).collect();
        let bias: Vec<f32> = (0..n).map(|_| unit(&mut rng) - 0.5).collect();
        let input = ActivationQuant::from_range(-1.0, 3.0);
        let wq = quantize_weights(&w, n, WEIGHT_QMAX);
        let xq: Vec<u8> = x.iter().map(|&v| input.quantize(v)).collect();
        let wd = wq.dequantize();
        let real: Vec<f64> = (0..m * n)
            .map(|i| {
                let (r, j) = (i / n, i % n);
                (0..k).map(|kk| input.dequantize(xq[r * k + kk]) as f64 * wd[j * k + kk] as f64).sum::<f64>()
                    + bias[j] as f64
            })
            .collect();
        let (lo, hi) = real.iter().fold((0.0f64, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
        let output = ActivationQuant::from_range(lo as f32, hi as f32);
        let req = Requant::new(input, &wq, Some(&bias), output);
        let packed = PackedB::pack_out_major(&wq.values, n, k);
        for isa in Int8Isa::all_available() {
            let mut out = vec![0u8; m * n];
            gemm_u8s8_requant(isa, &xq, k, m, &packed, &req, &mut out, n);
            for (i, (&q, &r)) in out.iter().zip(&real).enumerate() {
                let err = (output.dequantize(q) as f64 - r).abs();
                assert!(err <= output.scale as f64 * 1.0, "{isa}: output {i}: {q} is {err} from {r}");
            }
        }
    }

    #[test]
    fn packing_records_sums_and_range() {
        let (k, n) = (6, 3);
        let b: Vec<i8> = (0..k * n).map(|i| i as i8 - 9).collect();
        let p = PackedB::pack(&b, k, n);
        let want: Vec<i32> = (0..n).map(|j| (0..k).map(|kk| b[kk * n + j] as i32).sum()).collect();
        assert_eq!(p.col_sums(), &want[..]);
        assert!(p.seven_bit());
        let t: Vec<i8> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect(); // [n][k]
        assert_eq!(PackedB::pack_out_major(&t, n, k), p);
        assert!(!PackedB::pack(&[64], 1, 1).seven_bit());
        assert!(!PackedB::pack(&[-65], 1, 1).seven_bit());
    }
}
