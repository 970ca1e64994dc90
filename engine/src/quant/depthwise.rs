//! The int8 depthwise conv: u8 NHWC map in, s8 weights per channel, exact i32 accumulation,
//! the requantising store of [`crate::quant::scheme::requantize_full`] (bias, clamp, hard-swish)
//! out.
//!
//! The input's border must hold the input's zero point (the real value 0), and the requantiser's
//! bias must carry the zero point's correction (`-zp_in · Σ_taps q_w`, as [`Requant::new`]
//! computes it): the accumulator is the plain `Σ_taps x_u8 · w_s8`, border included.

use std::ops::Range;

use super::isa::Int8Isa;
use super::scheme::{QuantizedWeights, Requant};
use crate::kernels::MapGeom;

/// Depthwise weights laid out for the kernels: `[tap][c_pad]` (padding channels 0).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedDepthwise {
    /// `[kernel·kernel][c_pad]`.
    weights: Vec<i8>,
    kernel: usize,
    channels: usize,
    c_pad: usize,
}

impl PackedDepthwise {
    /// From per-channel weights `[channels][kernel·kernel]` (torch's `[c, 1, k, k]`), for maps
    /// whose channel stride is `c_pad`.
    pub fn new(q: &QuantizedWeights, kernel: usize, c_pad: usize) -> PackedDepthwise {
        let taps = kernel * kernel;
        assert_eq!(q.per_channel, taps, "depthwise weights are not {kernel}x{kernel}");
        assert!(c_pad >= q.out_channels, "channel stride {c_pad} < {} channels", q.out_channels);
        let mut weights = vec![0i8; taps * c_pad];
        for c in 0..q.out_channels {
            for t in 0..taps {
                weights[t * c_pad + c] = q.values[c * taps + t];
            }
        }
        PackedDepthwise { weights, kernel, channels: q.out_channels, c_pad }
    }

    pub fn kernel(&self) -> usize {
        self.kernel
    }
    pub fn channels(&self) -> usize {
        self.channels
    }
}

/// Output rows `rows` of the depthwise conv of `input` (geometry `in_geom`, border ≥
/// `(kernel - 1) / 2` holding the input zero point) into `output` (geometry `out_geom`, which
/// must be the conv's output size for `stride`). Only the interior of each output row is
/// written, and of each pixel its first `channels` values (no reader looks at the padding
/// channels of a u8 map).
///
/// Panics if the buffers are too small, the geometries disagree or `isa` is not available.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_u8(
    isa: Int8Isa,
    input: &[u8],
    in_geom: MapGeom,
    w: &PackedDepthwise,
    stride: usize,
    req: &Requant,
    output: &mut [u8],
    out_geom: MapGeom,
    rows: Range<usize>,
) {
    let (k, pad) = (w.kernel, (w.kernel - 1) / 2);
    assert!(in_geom.pad >= pad, "input border {} < {pad}", in_geom.pad);
    assert!(in_geom.c == w.c_pad && out_geom.c == w.c_pad, "channel strides differ from the weights'");
    assert_eq!(out_geom.h, (in_geom.h + 2 * pad - k) / stride + 1, "output height");
    assert_eq!(out_geom.w, (in_geom.w + 2 * pad - k) / stride + 1, "output width");
    assert!(input.len() >= in_geom.len() && output.len() >= out_geom.len(), "buffers shorter than their maps");
    assert!(rows.end <= out_geom.h, "rows beyond the map");
    assert!(req.bias.len() >= w.channels && req.multiplier.len() >= w.channels, "requantisation too short");
    assert!(req.residual.is_none(), "a depthwise conv has no residual");
    assert!(isa.is_available(), "this CPU cannot run the {isa} int8 kernels");
    depthwise_portable(input, in_geom, w, stride, req, output, out_geom, rows)
}

/// The plain definition (also the portable kernel).
#[allow(clippy::too_many_arguments)]
fn depthwise_portable(
    input: &[u8],
    in_geom: MapGeom,
    w: &PackedDepthwise,
    stride: usize,
    req: &Requant,
    output: &mut [u8],
    out_geom: MapGeom,
    rows: Range<usize>,
) {
    let (k, pad, c_pad) = (w.kernel, (w.kernel - 1) / 2, w.c_pad);
    let mut acc = vec![0i32; c_pad];
    for oy in rows {
        for ox in 0..out_geom.w {
            acc.fill(0);
            for ky in 0..k {
                // Input row oy·stride + ky - pad, in bordered coordinates: + in_geom.pad.
                let iy = oy * stride + ky + in_geom.pad - pad;
                for kx in 0..k {
                    let ix = ox * stride + kx + in_geom.pad - pad;
                    let src = &input[iy * in_geom.row_stride() + ix * c_pad..][..c_pad];
                    let wt = &w.weights[(ky * k + kx) * c_pad..][..c_pad];
                    for ((a, &x), &q) in acc.iter_mut().zip(src).zip(wt) {
                        *a += x as i32 * q as i32;
                    }
                }
            }
            let dst = &mut output[out_geom.offset(oy, ox)..][..c_pad];
            for (c, (d, &a)) in dst.iter_mut().zip(&acc).enumerate().take(w.channels) {
                *d = req.apply(a, c);
            }
        }
    }
}
