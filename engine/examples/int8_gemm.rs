//! Speed of the int8 GEMM kernels against the f32 GEMM at MobileNet 1x1-convolution shapes, one
//! thread (issue 14):
//!
//! ```text
//! cargo run --release -p mobilenet-engine --example int8_gemm
//! ```
//!
//! Every kernel this CPU has is listed (the ISA overrides do not apply); `RUNS=n` sets the
//! timed runs per kernel (default 20).

use mobilenet_engine::quant::bench::gemm_speeds;

fn main() {
    let runs = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    // 56x56 pixels through a 96 -> 576 expansion (a large 1x1 conv), and V2's 14x14 projection
    // 576 -> 160 (a small m, a long k).
    for (m, k, n) in [(3136, 96, 576), (196, 576, 160)] {
        println!("m {m} k {k} n {n} ({:.1} MMAC), one thread, median of {runs}", (m * k * n) as f64 / 1e6);
        for s in gemm_speeds(m, k, n, runs) {
            println!("  {:<40} {:>8.3} ms {:>8.1} GOP/s", s.kernel, s.ms, s.gops);
        }
    }
}
