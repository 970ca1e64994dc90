//! Speed of the int8 GEMM kernels against the f32 GEMM at MobileNet 1x1-convolution shapes, one
//! thread (issue 14):
//!
//! ```text
//! cargo run --release -p mobilenet-engine --example int8_gemm
//! MOBILENET_ENGINE_INT8_ISA=avx2 cargo run --release -p mobilenet-engine --example int8_gemm
//! ```
//!
//! Every int8 kernel this CPU has, down from the cap of the ISA overrides
//! (`MOBILENET_ENGINE_INT8_ISA=portable|avx2|vnni512`, else `MOBILENET_ENGINE_ISA`), and the f32
//! GEMM on every f32 ISA. `RUNS=n` sets the timed runs per kernel (default 20); `SHAPES=a,b,..`
//! picks shapes by number (default all).

use mobilenet_engine::quant::bench::{gemm_speeds, StoreVariant};

fn main() {
    let runs = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let pick: Option<Vec<usize>> =
        std::env::var("SHAPES").ok().map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect());
    // 56x56 pixels through a 96 -> 576 expansion (a large 1x1 conv); V2's 14x14 projection
    // 576 -> 160 (a small m, a long k); V3-large's 56x56 24 -> 144 expansion with hard-swish
    // and its 144 -> 24 projection closing a residual (a small k, and a small n: the store's
    // cost shows).
    let shapes = [
        (3136, 96, 576, StoreVariant::Plain),
        (196, 576, 160, StoreVariant::Plain),
        (3136, 24, 144, StoreVariant::Plain),
        (3136, 24, 144, StoreVariant::HardSwish),
        (3136, 144, 24, StoreVariant::Plain),
        (3136, 144, 24, StoreVariant::Residual),
        (196, 576, 160, StoreVariant::HardSwish),
        (196, 576, 160, StoreVariant::Residual),
    ];
    for (i, &(m, k, n, variant)) in shapes.iter().enumerate() {
        if pick.as_ref().is_some_and(|p| !p.contains(&i)) {
            continue;
        }
        println!(
            "[{i}] m {m} k {k} n {n} ({:.1} MMAC), store {variant:?}, one thread, median of {runs}",
            (m * k * n) as f64 / 1e6
        );
        for s in gemm_speeds(m, k, n, runs, variant) {
            println!("  {:<48} {:>8.3} ms {:>8.1} GOP/s", s.kernel, s.ms, s.gops);
        }
    }
}
