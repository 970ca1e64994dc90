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
    unsafe {
        match isa {
            #[cfg(engine_x86)]
            Int8Isa::Vnni512 => drive(&geo, m, b.panels, x86::VNNI_ROWS, x86::VNNI_PANELS, x86::vnni_tile),
            #[cfg(engine_x86)]
            Int8Isa::Avx2 if b.seven_bit => drive(&geo, m, b.panels, x86::AVX2_ROWS, 1, x86::avx2_maddubs_tile),
            #[cfg(engine_x86)]
            Int8Isa::Avx2 => drive(&geo, m, b.panels, x86::WIDE_ROWS, 1, x86::avx2_wide_tile),
            _ => drive(&geo, m, b.panels, PORTABLE_ROWS, 1, portable_tile),
        }
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

/// The loop nest: rows in chunks whose A fits L1 alongside a panel, panels (in steps of
/// `max_panels`) inside, tiles of `max_rows` rows inside that.
unsafe fn drive(g: &Geometry, m: usize, panels: usize, max_rows: usize, max_panels: usize, tile: Tile) {
    const A_CHUNK_BYTES: usize = 16 * 1024;
    let chunk = (A_CHUNK_BYTES / g.k.max(1)).max(1).div_ceil(max_rows) * max_rows;
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
                tile(
                    g,
                    g.a.add(r * g.lda),
                    rows,
                    g.b.add(p * g.panel_stride),
                    np,
                    g.c.add(r * g.ldc + p * PANEL),
                    cols,
                );
                r += rows;
            }
            p += np;
        }
        m0 = m1;
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
    use super::{a_word, Geometry, GROUP, PANEL};
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
        vnni_kernel::<R, 2>(g, a, b, c, cols)
    }
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn vnni_tile_1<const R: usize>(g: &Geometry, a: *const u8, b: *const i8, c: *mut i32, cols: usize) {
        vnni_kernel::<R, 1>(g, a, b, c, cols)
    }

    /// `R` rows × `P` panels of i32 accumulators in zmm; per group of 4 `k`, one broadcast of A per
    /// row and one load of B per panel feed `R·P` `vpdpbusd`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn vnni_kernel<const R: usize, const P: usize>(
        g: &Geometry,
        a: *const u8,
        b: *const i8,
        c: *mut i32,
        cols: usize,
    ) {
        let mut acc = [[_mm512_setzero_si512(); P]; R];
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
                let out = c.add(r * g.ldc + p * PANEL);
                let live = cols.saturating_sub(p * PANEL).min(PANEL);
                if live == PANEL {
                    _mm512_storeu_si512(out as *mut _, *v);
                } else if live > 0 {
                    _mm512_mask_storeu_epi32(out, ((1u32 << live) - 1) as u16, *v);
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
        rows!(rows, avx2_maddubs_kernel, g, a, b, c, cols)
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
    /// then `vpmaddwd` by ones (the two pairs of each column into its i32), then add.
    #[target_feature(enable = "avx2")]
    unsafe fn avx2_maddubs_kernel<const R: usize>(g: &Geometry, a: *const u8, b: *const i8, c: *mut i32, cols: usize) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
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
            store16(c.add(r * g.ldc), acc[0], acc[1], cols);
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
        rows!(rows, avx2_wide_kernel, g, a, b, c, cols)
    }

    /// Per group: the 64 bytes of B sign-extended to i16 in four ymm (4 columns × 4 `k` each),
    /// the 4 bytes of A zero-extended to i16 and broadcast as one 64-bit pattern, and `vpmaddwd`
    /// (i16·i16, pairs summed into i32: exact). Each column ends as two partial sums, added at
    /// the store.
    #[target_feature(enable = "avx2")]
    unsafe fn avx2_wide_kernel<const R: usize>(g: &Geometry, a: *const u8, b: *const i8, c: *mut i32, cols: usize) {
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
            // acc[q] holds columns 4q..4q+4 as (first pair, second pair) each.
            let mut halves = [0i32; 2 * PANEL];
            for (q, v) in acc.iter().enumerate() {
                _mm256_storeu_si256(halves.as_mut_ptr().add(8 * q) as *mut __m256i, *v);
            }
            let out = c.add(r * g.ldc);
            for j in 0..cols {
                *out.add(j) = halves[2 * j] + halves[2 * j + 1];
            }
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
        unsafe { super::drive(&geo, m, b.panels, AVX2_ROWS, 1, avx2_maddubs_tile) }
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
