//! Pointwise (1x1) convolutions and Linear layers: one GEMM, `C = act(A · B + bias) (+ residual)`,
//! with the epilogue fused into the store. In GEMM terms M is pixels (the rows of the A and C
//! maps, addressed through their [`MapGeom`]s), K is input channels and N output channels. B is
//! packed once at load ([`pack_gemm_weights`]) into panels two vectors wide; a register tile is
//! `TILE_ROWS` pixels by one panel, with the tile height per ISA (`Simd::GEMM_ROWS`: 12 × 2 zmm
//! on AVX-512's 32 registers, 6 × 2 ymm on AVX2's 16, MLAS's and BLIS's Haswell shape) and half-
//! and quarter-height tiles for the remainder. The loops around the tiles are blocked for the
//! core's caches ([`GemmBlocking`], sizes read at run time by [`CacheSizes`]), so that a core
//! with half the L2 (Zen 3's 512 KB against Zen 4's 1 MB) streams its weights and rows from L2,
//! not L3.

use super::activation::{activate, with_act};
use super::cache::CacheSizes;
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

/// One register tile: `TILE_ROWS` pixels × `TILE_VECTORS` vectors of output channels, over
/// inputs `ks.0..ks.1`. The first K block starts from the bias, a later one from the partial
/// sums the previous block stored in C; only the last applies the epilogue (activation,
/// residual). Every output is one chain of FMAs in input order whatever the blocking (a store
/// and reload is exact), so the blocking never changes a result.
// Indexed loops over const bounds: they unroll, and the accumulators stay in registers.
#[allow(clippy::needless_range_loop)]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn gemm_tile<S: Simd, const TILE_ROWS: usize, const TILE_VECTORS: usize, const ACT: u8>(
    ks: (usize, usize),
    (first, last): (bool, bool),
    a: &[*const f32; TILE_ROWS],
    b: *const f32,
    panel_width: usize,
    bias: *const f32,
    c: &[*mut f32; TILE_ROWS],
    res: Option<&[*const f32; TILE_ROWS]>,
) {
    // No closures here: a closure is a separate function without the caller's target features,
    // and the intrinsics in it would not be inlined.
    let mut acc = [[S::zero(); TILE_VECTORS]; TILE_ROWS];
    if first {
        let mut bias_vectors = [S::zero(); TILE_VECTORS];
        for (j, v) in bias_vectors.iter_mut().enumerate() {
            *v = S::load(bias.add(j * S::LANES));
        }
        acc = [bias_vectors; TILE_ROWS];
    } else {
        for r in 0..TILE_ROWS {
            for j in 0..TILE_VECTORS {
                acc[r][j] = S::load(c[r].add(j * S::LANES));
            }
        }
    }
    // The C lines this tile stores, requested now so that the stores at the end do not wait.
    if last {
        for r in 0..TILE_ROWS {
            let mut at = 0;
            while at < TILE_VECTORS * S::LANES {
                S::prefetch(c[r].wrapping_add(at));
                at += FLOATS_PER_LINE;
            }
        }
    }
    for input in ks.0..ks.1 {
        let b_row = b.add(input * panel_width);
        // The weights four cache lines ahead (MLAS's distance): the panel streams from L2 for
        // every row tile, and a core with a weak L1 streamer (Zen 3) waits on it otherwise.
        if PREFETCH_B {
            let mut at = 0;
            while at < panel_width {
                S::prefetch(b_row.wrapping_add(PREFETCH_B_FLOATS + at));
                at += FLOATS_PER_LINE;
            }
        }
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
    if last {
        for r in 0..TILE_ROWS {
            for j in 0..TILE_VECTORS {
                let mut y = activate::<S, ACT>(acc[r][j]);
                if let Some(res) = res {
                    y = S::add(y, S::load(res[r].add(j * S::LANES)));
                }
                S::store(c[r].add(j * S::LANES), y);
            }
        }
    } else {
        for r in 0..TILE_ROWS {
            for j in 0..TILE_VECTORS {
                S::store(c[r].add(j * S::LANES), acc[r][j]);
            }
        }
    }
}

/// Software prefetch of the weight panel in the tile's K loop: a hint per cache line of a K step
/// (AVX2's step is one 64-byte line, AVX-512's two).
const PREFETCH_B: bool = true;
/// How far ahead: 256 bytes.
const PREFETCH_B_FLOATS: usize = 64;
const FLOATS_PER_LINE: usize = 16;

/// Which part of the GEMM one pass of row tiles covers: weight panels `panels.0..panels.1`,
/// inputs `ks.0..ks.1`.
#[derive(Clone, Copy)]
struct Block {
    panels: (usize, usize),
    ks: (usize, usize),
    first: bool,
    last: bool,
}

#[inline(always)]
unsafe fn gemm_rows<S: Simd, const TILE_ROWS: usize, const ACT: u8>(g: &Gemm, m: usize, rows: usize, block: Block) {
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
    let flags = (block.first, block.last);
    let mut first_panel = block.panels.0;
    if TILE_ROWS == 1 {
        // One row (a batch-1 classifier): a tile of one panel is two FMA chains, latency-bound
        // at a quarter of the FMA rate and one weight stream at a time. Four full panels at
        // once are eight chains and four streams; each output's sum keeps its order.
        while first_panel + 4 <= block.panels.1 && g.n_pad >= (first_panel + 4) * panel_width {
            gemm_row_panels::<S, 4, ACT>(g, block, a[0], c[0], res.map(|r| r[0]), first_panel);
            first_panel += 4;
        }
    }
    for panel in first_panel..block.panels.1 {
        let b = g.b.add(panel * g.k * panel_width);
        let bias = g.bias.add(panel * panel_width);
        let c_panel: [*mut f32; TILE_ROWS] = std::array::from_fn(|r| c[r].add(panel * panel_width));
        let res_panel: Option<[*const f32; TILE_ROWS]> =
            res.map(|res| std::array::from_fn(|r| res[r].add(panel * panel_width)));
        if g.n_pad - panel * panel_width >= panel_width {
            gemm_tile::<S, TILE_ROWS, 2, ACT>(block.ks, flags, &a, b, panel_width, bias, &c_panel, res_panel.as_ref());
        } else {
            gemm_tile::<S, TILE_ROWS, 1, ACT>(block.ks, flags, &a, b, panel_width, bias, &c_panel, res_panel.as_ref());
        }
    }
}

/// One pixel × `PANELS` full weight panels from `panel0`, over the block's inputs: the
/// one-row tile of [`gemm_tile`] with more panels, the same sums in the same order.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn gemm_row_panels<S: Simd, const PANELS: usize, const ACT: u8>(
    g: &Gemm,
    block: Block,
    a: *const f32,
    c: *mut f32,
    res: Option<*const f32>,
    panel0: usize,
) {
    let panel_width = 2 * S::LANES;
    let b = g.b.add(panel0 * g.k * panel_width);
    let c = c.add(panel0 * panel_width);
    let mut acc = [[S::zero(); 2]; PANELS];
    for p in 0..PANELS {
        for j in 0..2 {
            let at = p * panel_width + j * S::LANES;
            acc[p][j] = if block.first { S::load(g.bias.add(panel0 * panel_width + at)) } else { S::load(c.add(at)) };
        }
    }
    for input in block.ks.0..block.ks.1 {
        let a_value = S::splat(*a.add(input));
        for p in 0..PANELS {
            let b_row = b.add((p * g.k + input) * panel_width);
            for j in 0..2 {
                acc[p][j] = S::fma(a_value, S::load(b_row.add(j * S::LANES)), acc[p][j]);
            }
        }
    }
    for p in 0..PANELS {
        for j in 0..2 {
            let at = p * panel_width + j * S::LANES;
            let y = if block.last {
                let y = activate::<S, ACT>(acc[p][j]);
                match res {
                    Some(res) => S::add(y, S::load(res.add(panel0 * panel_width + at))),
                    None => y,
                }
            } else {
                acc[p][j]
            };
            S::store(c.add(at), y);
        }
    }
}

/// Weights this large do not stay in L2 (half of it) between bands of rows: a fused group
/// makes its bands as large as [`band_max_a_bytes`] allows, so that it streams them fewer times.
pub fn weights_exceed_l2(k: usize, n_pad: usize) -> bool {
    k * n_pad * 4 > CacheSizes::get().l2 / 2
}

/// The most A (pixels × input channels) a fused group's band holds when its weights exceed the
/// L2 ([`weights_exceed_l2`]): five eighths of the L2.
pub fn band_max_a_bytes() -> usize {
    CacheSizes::get().l2 / 8 * 5
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
    /// The cache blocking; `None` shapes it for this machine's caches ([`GemmBlocking::new`]).
    pub blocking: Option<GemmBlocking>,
}

// The kernel descriptors hold raw pointers; threads given disjoint row ranges of one
// descriptor write disjoint memory.
unsafe impl Sync for Gemm {}

/// How a GEMM over a range of pixels is cut into blocks, BLIS's and MLAS's way for a kernel
/// whose A rows are read in place (not packed): per block of `rows` pixels, per group of
/// `panels` weight panels, per block of `k` inputs, every register tile of the rows runs over
/// the group's panels. The A rows of one tile (tile height × `k` floats) stay in L1 while the
/// group's weights (`k` × `panels` panel widths) stream from L2; the rows' A (`rows` × K) stays
/// in L2 while the next group of panels passes over it. With small weights (the early layers)
/// all three are whole: one pass, row tiles over every panel and the whole K.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmBlocking {
    /// Pixels per row block (a multiple of the tile height, or all).
    pub rows: usize,
    /// Weight panels per group.
    pub panels: usize,
    /// Inputs per K block.
    pub k: usize,
}

impl GemmBlocking {
    /// The blocking for a GEMM of `m` pixels, `k` inputs and `n_pad` outputs, packed for
    /// `lanes`-wide vectors and `tile_rows`-high tiles, on a core with these caches.
    pub fn new(m: usize, k: usize, n_pad: usize, lanes: usize, tile_rows: usize, cache: CacheSizes) -> GemmBlocking {
        let panel_bytes_per_k = 2 * lanes * 4;
        let panels = n_pad.div_ceil(2 * lanes).max(1);
        let (kc_max, group_bytes, a_bytes) = tuning();
        // K blocks of equal size, only where one tile's A rows would not fit in twice the L1:
        // below that (every layer of these models), whole-K tiles measured faster on AVX2 and
        // AVX-512 alike, the partial sums' store and reload costing more than they save.
        let kc_max = kc_max.unwrap_or(2 * cache.l1d / (4 * tile_rows)).max(16);
        let k_blocks = k.div_ceil(kc_max).max(1);
        let kc = k.div_ceil(k_blocks).max(1);
        // Panels per group: the group's weights for one K block in half the L2.
        let group = (group_bytes.unwrap_or(cache.l2 / 2) / (kc * panel_bytes_per_k)).clamp(1, panels);
        // A row block that every group passes over stays in a quarter of the L2.
        let rows = if group >= panels {
            m.max(1)
        } else {
            let rows = a_bytes.unwrap_or(cache.l2 / 4) / (4 * k.max(1));
            (rows / tile_rows * tile_rows).max(tile_rows)
        };
        GemmBlocking { rows, panels: group, k: kc }
    }
}

/// Development overrides of the blocking's budgets: `MOBILENET_ENGINE_GEMM=kc,group_kb,a_kb`
/// (0 keeps a default).
fn tuning() -> (Option<usize>, Option<usize>, Option<usize>) {
    static TUNING: std::sync::OnceLock<(Option<usize>, Option<usize>, Option<usize>)> = std::sync::OnceLock::new();
    *TUNING.get_or_init(|| {
        let Ok(v) = std::env::var("MOBILENET_ENGINE_GEMM") else { return (None, None, None) };
        let f: Vec<Option<usize>> = v.split(',').map(|x| x.trim().parse().ok().filter(|&n: &usize| n > 0)).collect();
        let at = |i: usize| f.get(i).copied().flatten();
        (at(0), at(1).map(|kb| kb * 1024), at(2).map(|kb| kb * 1024))
    })
}

#[inline(always)]
unsafe fn gemm_generic<S: Simd>(g: &Gemm, m0: usize, m1: usize) {
    #[inline(always)]
    unsafe fn run<S: Simd, const TILE_ROWS: usize, const ACT: u8>(g: &Gemm, m0: usize, m1: usize) {
        let panels = g.n_pad.div_ceil(2 * S::LANES);
        let bl = g
            .blocking
            .unwrap_or_else(|| GemmBlocking::new(m1 - m0, g.k, g.n_pad, S::LANES, TILE_ROWS, CacheSizes::get()));
        let (rows, group, kc) = (bl.rows.max(1), bl.panels.max(1), bl.k.max(1));
        let mut mb = m0;
        while mb < m1 {
            let mb1 = (mb + rows).min(m1);
            let mut p = 0;
            while p < panels {
                let p1 = (p + group).min(panels);
                let mut k0 = 0;
                loop {
                    let k1 = (k0 + kc).min(g.k);
                    let block = Block { panels: (p, p1), ks: (k0, k1), first: k0 == 0, last: k1 == g.k };
                    rows_over::<S, TILE_ROWS, ACT>(g, mb, mb1, block);
                    k0 = k1;
                    if k0 >= g.k {
                        break;
                    }
                }
                p = p1;
            }
            mb = mb1;
        }
    }
    // A function, not a closure: a closure would be compiled without the ISA's target features.
    #[inline(always)]
    unsafe fn rows_over<S: Simd, const TILE_ROWS: usize, const ACT: u8>(g: &Gemm, m0: usize, m1: usize, block: Block) {
        let mut m = m0;
        while m < m1 {
            let rows = TILE_ROWS.min(m1 - m);
            if rows == TILE_ROWS || rows > TILE_ROWS / 2 {
                gemm_rows::<S, TILE_ROWS, ACT>(g, m, rows, block);
            } else if rows > TILE_ROWS / 4 {
                gemm_rows_small::<S, TILE_ROWS, ACT>(g, m, rows, block);
            } else {
                gemm_rows_tiny::<S, TILE_ROWS, ACT>(g, m, rows, block);
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
        block: Block,
    ) {
        match TILE_ROWS {
            12 => gemm_rows::<S, 6, ACT>(g, m, rows, block),
            6 => gemm_rows::<S, 3, ACT>(g, m, rows, block),
            _ => gemm_rows::<S, 2, ACT>(g, m, rows, block),
        }
    }
    #[inline(always)]
    unsafe fn gemm_rows_tiny<S: Simd, const TILE_ROWS: usize, const ACT: u8>(
        g: &Gemm,
        m: usize,
        rows: usize,
        block: Block,
    ) {
        // One row (a batch-1 classifier) must not pay for three.
        match rows {
            1 => gemm_rows::<S, 1, ACT>(g, m, rows, block),
            2 => gemm_rows::<S, 2, ACT>(g, m, rows, block),
            _ => gemm_rows::<S, 3, ACT>(g, m, rows, block),
        }
    }
    match S::GEMM_ROWS {
        12 => with_act!(g.act, run::<S, 12>(g, m0, m1)),
        6 => with_act!(g.act, run::<S, 6>(g, m0, m1)),
        _ => with_act!(g.act, run::<S, 4>(g, m0, m1)),
    }
}

multiversion!(pub fn gemm(g: &Gemm, m0: usize, m1: usize) => gemm_generic);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Activation;
    use crate::kernels::act_code;
    use crate::reference;
    use crate::simd::{pad_channels, Isa};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn range(&mut self, lo: usize, hi: usize) -> usize {
            lo + (self.next() % (hi - lo + 1) as u64) as usize
        }
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| scale * (2.0 * ((self.next() >> 40) as f32 / (1u64 << 24) as f32) - 1.0)).collect()
        }
    }

    /// A map of `h`×`w` pixels, `c` real channels, padded channels and border, random interior.
    fn map(rng: &mut Rng, h: usize, w: usize, c: usize, pad: usize) -> (Vec<f32>, MapGeom) {
        let geom = MapGeom { h, w, c: pad_channels(c), pad };
        let mut data = vec![0.0; geom.len()];
        for y in 0..h {
            for x in 0..w {
                let values = rng.vec(c, 1.0);
                data[geom.offset(y, x)..geom.offset(y, x) + c].copy_from_slice(&values);
            }
        }
        (data, geom)
    }

    /// Every blocking gives the same bits as one unblocked pass (each output is one FMA chain
    /// in input order), and that pass matches the plain reference: random shapes, including K
    /// and N past one block and row ranges that end in partial tiles, on every ISA.
    #[test]
    fn blocked_gemm_matches_reference_and_unblocked_bits() {
        let mut rng = Rng(13);
        let acts = [None, Some(Activation::Relu), Some(Activation::Relu6), Some(Activation::Hardswish)];
        for isa in Isa::all_available() {
            let lanes = isa.lanes();
            let tile = match isa {
                Isa::Avx512 => 12,
                Isa::Avx2 => 6,
                Isa::Portable => 4,
            };
            for case in 0..60 {
                // One pixel (a batch-1 classifier: the one-row tile over four panels) every
                // fifth case.
                let (h, w) = if case % 5 == 0 { (1, 1) } else { (rng.range(1, 7), rng.range(1, 9)) };
                let k = if case % 3 == 0 { rng.range(200, 600) } else { rng.range(1, 90) };
                let n = if case % 4 == 0 || case % 5 == 0 { rng.range(60, 200) } else { rng.range(1, 40) };
                let act = acts[rng.range(0, 3)];
                let residual = case % 2 == 1;
                let a_pad = rng.range(0, 1);
                let (a, a_geom) = map(&mut rng, h, w, k, a_pad);
                let weights = rng.vec(n * k, 0.2);
                let bias = rng.vec(n, 0.5);
                let (packed, n_pad) = pack_gemm_weights(&weights, n, k, lanes);
                let mut bias_pad = bias.clone();
                bias_pad.resize(n_pad, 0.0);
                let (res, res_geom) = map(&mut rng, h, w, n, 1);
                let c_geom = MapGeom { h, w, c: n_pad, pad: rng.range(0, 1) };
                let m = h * w;
                let run = |blocking: Option<GemmBlocking>, m0: usize, m1: usize, c: &mut Vec<f32>| {
                    let g = Gemm {
                        a: a.as_ptr(),
                        a_geom,
                        k,
                        b: packed.as_ptr(),
                        n_pad,
                        bias: bias_pad.as_ptr(),
                        act: act_code(act),
                        c: c.as_mut_ptr(),
                        c_geom,
                        res: if residual { res.as_ptr() } else { std::ptr::null() },
                        res_geom,
                        blocking,
                    };
                    unsafe { gemm(isa, &g, m0, m1) };
                };
                let mut whole = vec![0.0; c_geom.len()];
                run(Some(GemmBlocking { rows: m, panels: n_pad, k }), 0, m, &mut whole);
                // Against the reference, in f64 sums rounded once.
                for y in 0..h {
                    for x in 0..w {
                        let row = &a[a_geom.offset(y, x)..a_geom.offset(y, x) + k];
                        let want = reference::linear(row, &weights, &bias, act);
                        for (o, want) in want.iter().enumerate() {
                            let want = want + if residual { res[res_geom.offset(y, x) + o] } else { 0.0 };
                            let got = whole[c_geom.offset(y, x) + o];
                            assert!(
                                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{isa} m {m} k {k} n {n}: pixel ({y}, {x}) output {o}: {got} vs {want}"
                            );
                        }
                    }
                }
                let blockings = [
                    None,
                    Some(GemmBlocking { rows: tile, panels: 1, k: 1 }),
                    Some(GemmBlocking { rows: 2 * tile, panels: 2, k: 7 }),
                    Some(GemmBlocking { rows: m, panels: 1, k: k.div_ceil(2) }),
                    Some(GemmBlocking { rows: tile, panels: 3, k: 16 }),
                    Some(GemmBlocking::new(m, k, n_pad, lanes, tile, CacheSizes { l1d: 4096, l2: 64 * 1024 })),
                ];
                for blocking in blockings {
                    // Split over two "threads" at an odd pixel, as the parts of a layer are.
                    let mut c = vec![0.0; c_geom.len()];
                    let split = m / 2 + (m > 2) as usize;
                    run(blocking, 0, split, &mut c);
                    run(blocking, split, m, &mut c);
                    for y in 0..h {
                        for x in 0..w {
                            let at = c_geom.offset(y, x);
                            assert!(
                                c[at..at + n].iter().zip(&whole[at..at + n]).all(|(p, q)| p.to_bits() == q.to_bits()),
                                "{isa} m {m} k {k} n {n} {blocking:?}: pixel ({y}, {x}) differs from one pass"
                            );
                        }
                    }
                }
            }
        }
    }
}
