//! The machine's measured FMA peak for an ISA: independent FMA chains in registers, no memory
//! traffic, timed for a few milliseconds. `bench --profile` sets each layer's GMAC/s against it,
//! so that a reader sees which layers run near the core's arithmetic limit and which wait on
//! memory or overheads.

use crate::simd::{multiversion, Isa, Simd};

/// Independent accumulator chains: enough to cover FMA latency × FMA ports on every core this
/// engine targets (4 cycles × 2 ports), and few enough to stay in 16 vector registers.
const CHAINS: usize = 12;

#[inline(always)]
unsafe fn fma_chains_generic<S: Simd>(iterations: usize, out: *mut f32) {
    let mut acc = [S::zero(); CHAINS];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = S::splat(i as f32 * 1e-3);
    }
    let (x, y) = (S::splat(std::hint::black_box(0.999_9)), S::splat(std::hint::black_box(1e-4)));
    for _ in 0..std::hint::black_box(iterations) {
        for a in acc.iter_mut() {
            *a = S::fma(*a, x, y);
        }
    }
    let mut sum = acc[0];
    for a in &acc[1..] {
        sum = S::add(sum, *a);
    }
    S::store(std::hint::black_box(out), sum);
}

multiversion!(fn fma_chains(iterations: usize, out: *mut f32) => fma_chains_generic);

/// Lanes of one vector of `isa` as the kernels run it.
fn lanes(isa: Isa) -> usize {
    isa.lanes()
}

/// The best of a few timed runs of FMA chains, in GMAC/s (one MAC per lane per FMA), on the
/// calling thread.
pub fn fma_peak_gmacs(isa: Isa) -> f64 {
    let mut out = [0.0f32; 16];
    let iterations = 200_000;
    // Warm-up: the clock and the vector units come up to speed.
    unsafe { fma_chains(isa, iterations, out.as_mut_ptr()) };
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        unsafe { fma_chains(isa, iterations, out.as_mut_ptr()) };
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(out);
    (iterations * CHAINS * lanes(isa)) as f64 / best / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_positive_on_every_isa() {
        for isa in Isa::all_available() {
            let peak = fma_peak_gmacs(isa);
            assert!(peak.is_finite() && peak > 0.1, "{isa}: {peak}");
        }
    }
}
