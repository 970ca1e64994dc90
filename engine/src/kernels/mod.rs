//! The compute kernels, each generic over [`Simd`](crate::simd::Simd) and compiled per ISA by
//! `multiversion!` (see [`crate::simd`]). One file per kernel family:
//!
//! - `activation.rs`: the activation codes, the `activate` epilogue and `with_act!`, which turns
//!   a runtime code into a const-generic call.
//! - `gemm.rs`: pointwise (1x1) convolutions and Linear layers as one GEMM: weight packing,
//!   the register tiles, and the choice between row tiles outer and weight panels outer.
//! - `depthwise.rs`: depthwise k x k convolution (k = 3 or 5, stride 1 or 2), with a
//!   two-rows-at-a-time kernel for 3x3 stride 1.
//! - `direct_conv.rs`: full k x k convolution with few input channels: the stem.
//! - `pooling.rs`: global average pooling.
//! - `squeeze_excite.rs`: squeeze-excite in place (pool, two small vector-matrix products, scale).
//!
//! This file holds what the families share: [`MapGeom`] and the [`Conv`] job that the depthwise
//! and stem kernels both take.
//!
//! Activations are NHWC maps of one image ([`MapGeom`]): channels innermost and padded to
//! [`crate::simd::CHANNEL_ALIGN`], with a zero border as wide as the next depthwise conv needs,
//! so depthwise and stem kernels never test bounds. Channels innermost is what makes every
//! family vectorise the same way: one vector is consecutive channels of one pixel, so a
//! depthwise tap is one load and one FMA, a pointwise conv is a plain GEMM whose A rows (one per
//! pixel) are contiguous, and the padded channel count means no kernel needs a masked load.
//!
//! Every kernel fuses its bias (folded BatchNorm) and activation into the store, and the GEMM
//! the residual add too: the values are finished in registers and each output is written once,
//! so no layer makes a second pass over its map.

mod activation;
mod cache;
mod depthwise;
mod direct_conv;
mod gemm;
mod peak;
mod pooling;
mod squeeze_excite;

pub(crate) use activation::{act_code, with_act};
pub use activation::{ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_NONE, ACT_RELU, ACT_RELU6};
pub use cache::CacheSizes;
pub use depthwise::depthwise;
pub use direct_conv::direct_conv;
pub use gemm::{band_max_a_bytes, gemm, pack_gemm_weights, weights_exceed_l2, Gemm};
pub use peak::fma_peak_gmacs;
pub use pooling::mean_pool;
pub use squeeze_excite::{pack_vec_mat, squeeze_excite, SqueezeExcite};

/// Where one image's activation map lives in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapGeom {
    pub h: usize,
    pub w: usize,
    /// Channel stride: the channel count padded to the lane multiple.
    pub c: usize,
    /// Zero border, in pixels, on every side.
    pub pad: usize,
}

impl MapGeom {
    /// Floats from one row to the next. A row that is a multiple of 2 KB gets one spare cache
    /// line: rows a multiple of 4 KB apart fall in the same L1 sets, and the rows a depthwise
    /// window (or a GEMM tile spanning rows) reads at once would then evict each other.
    pub fn row_stride(&self) -> usize {
        let dense = (self.w + 2 * self.pad) * self.c;
        if dense.is_multiple_of(512) {
            dense + 16
        } else {
            dense
        }
    }
    pub fn len(&self) -> usize {
        (self.h + 2 * self.pad) * self.row_stride()
    }
    /// Offset of interior pixel (y, x).
    #[inline(always)]
    pub fn offset(&self, y: usize, x: usize) -> usize {
        (y + self.pad) * self.row_stride() + (x + self.pad) * self.c
    }
}

/// A k x k convolution over output rows `y0..y1`, depthwise ([`depthwise()`]: weights
/// `[k·k][c]`) or full with few input channels ([`direct_conv()`], the stem: weights
/// `[k][k][cin][cout]`). Bias `[c]`; the input border must be at least `(k - 1) / 2`.
#[derive(Clone, Copy)]
pub struct Conv {
    pub input: *const f32,
    pub in_geom: MapGeom,
    /// The bordered input row stored first at `input` (0 for a whole map; a band's first row
    /// when `input` holds only a band of rows).
    pub in_row0: usize,
    /// Input channels read by the full conv (the depthwise conv reads all of `in_geom.c`).
    pub cin: usize,
    pub kernel: usize,
    pub stride: usize,
    pub weights: *const f32,
    pub bias: *const f32,
    pub act: u8,
    pub output: *mut f32,
    pub out_geom: MapGeom,
    /// The output row stored first in `output` (0 for a whole map; a band's first row when
    /// `output` holds only a band of rows).
    pub out_row0: usize,
}

// The kernel descriptors hold raw pointers; threads given disjoint row ranges of one
// descriptor write disjoint memory. (`Gemm`'s is in gemm.rs.)
unsafe impl Sync for Conv {}

impl Conv {
    /// The same conv writing a band of rows starting at output row `row0` to `output`. (A
    /// method, so that closures capture the whole job, which is `Sync`, not its raw fields.)
    pub fn into_band(self, output: *mut f32, out_geom: MapGeom, row0: usize) -> Conv {
        Conv { output, out_geom, out_row0: row0, ..self }
    }

    /// The same conv reading its input from a band of bordered rows starting at row `row0`.
    pub fn reading_band(self, input: *const f32, row0: usize) -> Conv {
        Conv { input, in_row0: row0, ..self }
    }
}
