//! Post-training static int8 quantisation (issue 14): the foundation.
//!
//! What exists:
//! - [`scheme`]: the numbers. Symmetric int8 weights per output channel
//!   ([`scheme::quantize_weights`], half-to-even rounding as torch and ONNX Runtime), asymmetric u8
//!   activations per tensor from a min/max range with 0 exact ([`scheme::ActivationQuant`]), and
//!   requantisation of an int32 accumulator with bias and clamp to u8 ([`scheme::Requant`],
//!   [`scheme::requantize`]; float multiplier per channel, the input zero point folded into the
//!   bias).
//! - [`isa`]: [`Int8Isa`] (AVX512-VNNI, AVX2, portable), detected at run time, capped by
//!   `MOBILENET_ENGINE_INT8_ISA=portable|avx2|vnni512` (else by `MOBILENET_ENGINE_ISA=portable|avx2`).
//! - [`gemm`]: the u8 × s8 → i32 GEMM over packed B panels ([`gemm::PackedB`],
//!   [`gemm::gemm_u8s8`]) with a `vpdpbusd` kernel, two AVX2 kernels (`vpmaddubsw` when the
//!   weights fit 7 bits, a widening `vpmaddwd` one otherwise, so saturation can never happen) and
//!   a portable one, all exact against [`gemm::gemm_reference`]; and with the requantising
//!   store ([`gemm::gemm_u8s8_requant`]: u8 out, bit-identical to [`scheme::requantize`];
//!   from the accumulator registers on VNNI and AVX2 `vpmaddubsw`, through an L1 block
//!   elsewhere).
//! - [`mod@bench`]: the GEMM's speed probe against the f32 GEMM (`cargo run --release -p
//!   mobilenet-engine --example int8_gemm`; figures in docs/BENCHMARKS.md, "int8 GEMM").
//!
//! The plan (issue 14's remaining points), in order:
//! 1. The GEMM: the residual add in the requantised domain; rows split over threads like the
//!    f32 GEMM (`gemm_u8s8*` are single-threaded today); an AVX-VNNI (ymm `vpdpbusd`, Alder
//!    Lake / Zen 5) kernel; an aarch64 `sdot` kernel and a faster portable store; the AVX2
//!    store's cost at small k (docs/BENCHMARKS.md); quantise weights to 7 bits where only the
//!    AVX2 kernels exist (the widening 8-bit path is slower than f32).
//! 2. Depthwise 3x3/5x5 u8 kernels (i16/i32 widening, per-channel weights), the stem (3x3 s2 on
//!    3 channels: im2col into the GEMM or a direct kernel), squeeze-excite and hard-swish /
//!    hard-sigmoid (lookup tables over the 256 input codes are exact and cheap), average pool and
//!    the classifier; a layer kept in f32 on purpose shows in `bench --profile`.
//! 3. Network lowering: a quantised `Network` built from f32 weights plus calibrated ranges;
//!    calibration (min-max, percentile, maybe entropy) and `mobilenet quantize` with `--report`
//!    (per-layer SQNR against f32); the safetensors format (i8 weights, scales and zero points as
//!    metadata) and its clear errors.
//! 4. Accuracy and speed against ONNX Runtime's `quantize_static` (docs/BENCHMARKS.md), the
//!    network-level test against a fake-quantised f32 reference within one step.

pub mod bench;
pub mod calibrate;
pub mod depthwise;
pub mod format;
pub mod gemm;
pub mod isa;
mod maps;
pub mod network;
pub mod scheme;
#[cfg(test)]
mod tests;

pub use calibrate::{Calibrator, RangeMethod};
pub use isa::Int8Isa;
pub use network::{QuantModel, QuantNetwork, QuantWorkspace, WeightBits};
