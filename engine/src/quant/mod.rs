//! Post-training static int8 quantisation (issue 14).
//!
//! The path of a model, from f32 weights to an int8 file and back to logits:
//! 1. [`crate::FoldedModel`]: the f32 model with its BatchNorms folded (the same description the
//!    f32 network is lowered from).
//! 2. [`calibrate`]: the calibration images run through the f32 network unfused
//!    ([`Calibrator`]) and each map gets a u8 scale and zero point (min-max or percentile); the
//!    report ([`calibrate::sqnr_report`]) sets each int8 map against the f32 one (SQNR).
//! 3. [`network`]: [`QuantModel`] (the folded model, its convs' int8 weights per output channel,
//!    every map's parameters) and [`QuantNetwork`], which runs it: u8 NHWC maps, the stem as an
//!    im2col GEMM, 1x1 convs as GEMMs ([`gemm`]), depthwise convs ([`depthwise`]), each store
//!    fused (bias, ReLU/ReLU6 clamp, hard-swish, residual add: [`scheme::requantize_full`]);
//!    squeeze-excite rescales its map in place with f32 FCs; pooling dequantises; the classifier
//!    stays f32 (all shown as such in `bench --profile`).
//! 4. [`format`]: one safetensors file (i8 weights, f32 scales and folded biases, every map's
//!    parameters and the calibration as metadata); [`crate::Engine::load`] runs it.
//!
//! The numbers ([`scheme`]): symmetric int8 weights per output channel (8 bits, or 7 where only
//! AVX2 exists: `vpmaddubsw` saturates otherwise), asymmetric u8 activations per tensor with 0
//! exact, int32 accumulation, round half to even everywhere (as torch and ONNX Runtime). The
//! kernels ([`isa`]: AVX512-VNNI, AVX2, portable, chosen at run time, capped by
//! `MOBILENET_ENGINE_INT8_ISA`) are exact against plain integer references; the network is
//! tested against a fake-quantised f32 reference (`tests.rs`).
//!
//! Not done yet: an AVX-VNNI (ymm) and an aarch64 `sdot` kernel; splitting one image's layers
//! over threads (a batch splits its images); an int8 classifier; entropy calibration; per-layer
//! f32 fallback on request.

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
