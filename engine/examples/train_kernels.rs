//! Speed probes of the CPU trainer's kernels (GEMM layouts, depthwise, weight repacking), one
//! thread, at training shapes, on the best instruction set of this CPU
//! (`MOBILENET_ENGINE_ISA=avx2|portable` caps it):
//!
//! ```text
//! cargo run --release -p mobilenet-engine --example train_kernels
//! ```

use mobilenet_engine::train::kernel_bench;
use mobilenet_engine::Isa;

fn main() {
    let isa = Isa::detect();
    println!("kernels on {isa}, one thread");
    kernel_bench::gemm(isa);
    kernel_bench::depthwise(isa);
    kernel_bench::packing();
}
