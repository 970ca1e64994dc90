//! Depthwise k x k convolution (k = 3 or 5), stride 1 or 2, over a [`Conv`] job's output rows.
//! Each channel is filtered on its own, so one vector of channels of one pixel is independent
//! of its neighbours: a tap is one load and one FMA, with no shuffles. The general kernel
//! computes `DEPTHWISE_PIXELS` output pixels of one row at a time (independent accumulator
//! chains hide FMA latency); 3x3 stride 1, the most common case, has a kernel that computes two
//! output rows at once from the four input rows they share.

use super::activation::{activate, with_act};
use super::Conv;
use crate::simd::{multiversion, Simd};

/// Output pixels computed together: independent accumulator chains hide FMA latency.
const DEPTHWISE_PIXELS: usize = 4;

#[inline(always)]
unsafe fn depthwise_rows<S: Simd, const K: usize, const STRIDE: usize, const ACT: u8>(
    conv: &Conv,
    y0: usize,
    y1: usize,
) {
    let in_geom = conv.in_geom;
    let out_geom = conv.out_geom;
    let channels = in_geom.c;
    // Border pixels the k x k window never reaches (the border is at least (k - 1) / 2 wide).
    let unused_border = in_geom.pad - (K - 1) / 2;
    let in_row = in_geom.row_stride();
    // Pixels outer, channels inner: each pixel's channels are one contiguous run, read in
    // order. (Channels outer strides through memory by a whole pixel, 2-4 KB on the late
    // layers, and those addresses collide in the same L1 sets.)
    for out_y in y0..y1 {
        // Top-left tap of output pixel (out_y, 0), in the bordered input.
        let base = conv.input.add((out_y * STRIDE + unused_border - conv.in_row0) * in_row + unused_border * channels);
        let out_row = conv.output.add(out_geom.offset(out_y - conv.out_row0, 0));
        let mut out_x = 0;
        while out_x < out_geom.w && out_geom.w >= DEPTHWISE_PIXELS {
            // The last group overlaps the one before rather than leaving single pixels,
            // whose one accumulator chain would wait on FMA latency.
            out_x = out_x.min(out_geom.w - DEPTHWISE_PIXELS);
            // Two vectors of channels at a time where there are two: eight accumulator chains,
            // what two FMA pipes of 4-cycle latency need (AVX2); four leave half of them idle.
            let mut channel = 0;
            while channel + 2 * S::LANES <= channels {
                depthwise_pixels::<S, K, STRIDE, 2, ACT>(conv, base, out_row, out_x, channel);
                channel += 2 * S::LANES;
            }
            if channel < channels {
                depthwise_pixels::<S, K, STRIDE, 1, ACT>(conv, base, out_row, out_x, channel);
            }
            out_x += DEPTHWISE_PIXELS;
        }
        while out_x < out_geom.w {
            let mut channel = 0;
            while channel < channels {
                let mut acc = S::load(conv.bias.add(channel));
                for ky in 0..K {
                    let row = base.add(ky * in_row + channel);
                    let taps = conv.weights.add(ky * K * channels + channel);
                    for kx in 0..K {
                        acc = S::fma(
                            S::load(row.add((out_x * STRIDE + kx) * channels)),
                            S::load(taps.add(kx * channels)),
                            acc,
                        );
                    }
                }
                S::store(out_row.add(out_x * out_geom.c + channel), activate::<S, ACT>(acc));
                channel += S::LANES;
            }
            out_x += 1;
        }
    }
}

/// `DEPTHWISE_PIXELS` output pixels of one row from `out_x`, `VECTORS` vectors of channels from
/// `channel`. Each accumulator is the bias, then the taps in (ky, kx) order, as in every
/// depthwise path.
// Indexed loops over const bounds: they unroll, and the accumulators stay in registers.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn depthwise_pixels<S: Simd, const K: usize, const STRIDE: usize, const VECTORS: usize, const ACT: u8>(
    conv: &Conv,
    base: *const f32,
    out_row: *mut f32,
    out_x: usize,
    channel: usize,
) {
    let channels = conv.in_geom.c;
    let in_row = conv.in_geom.row_stride();
    let mut acc = [[S::zero(); VECTORS]; DEPTHWISE_PIXELS];
    for v in 0..VECTORS {
        let bias = S::load(conv.bias.add(channel + v * S::LANES));
        for acc in acc.iter_mut() {
            acc[v] = bias;
        }
    }
    for ky in 0..K {
        let row = base.add(ky * in_row + channel);
        let taps = conv.weights.add(ky * K * channels + channel);
        for kx in 0..K {
            for v in 0..VECTORS {
                let weight = S::load(taps.add(kx * channels + v * S::LANES));
                for j in 0..DEPTHWISE_PIXELS {
                    let input = S::load(row.add(((out_x + j) * STRIDE + kx) * channels + v * S::LANES));
                    acc[j][v] = S::fma(input, weight, acc[j][v]);
                }
            }
        }
    }
    for j in 0..DEPTHWISE_PIXELS {
        for v in 0..VECTORS {
            let at = out_row.add((out_x + j) * conv.out_geom.c + channel + v * S::LANES);
            S::store(at, activate::<S, ACT>(acc[j][v]));
        }
    }
}

/// 3x3 stride-1 depthwise, two output rows at a time: the four input rows they need are each
/// loaded once (six pixels per row into registers) and feed both rows' accumulators, a third
/// of the loads per FMA of the one-row kernel.
#[inline(always)]
unsafe fn depthwise_3x3s1_row_pairs<S: Simd, const ACT: u8>(conv: &Conv, y0: usize, y1: usize) {
    const PIXELS: usize = DEPTHWISE_PIXELS;
    let in_geom = conv.in_geom;
    let out_geom = conv.out_geom;
    let channels = in_geom.c;
    // Border pixels the 3x3 window never reaches.
    let unused_border = in_geom.pad - 1;
    let in_row = in_geom.row_stride();
    let mut out_y = y0;
    while out_y + 2 <= y1 && out_geom.w >= PIXELS {
        let base = conv.input.add((out_y + unused_border - conv.in_row0) * in_row + unused_border * channels);
        let out0 = conv.output.add(out_geom.offset(out_y - conv.out_row0, 0));
        let out1 = conv.output.add(out_geom.offset(out_y + 1 - conv.out_row0, 0));
        let mut out_x = 0;
        while out_x < out_geom.w {
            out_x = out_x.min(out_geom.w - PIXELS);
            let mut channel = 0;
            while channel < channels {
                let bias = S::load(conv.bias.add(channel));
                let mut acc0 = [bias; PIXELS];
                let mut acc1 = [bias; PIXELS];
                for input_row in 0..4 {
                    let row = base.add(input_row * in_row + (out_x * channels) + channel);
                    let mut inputs = [S::zero(); PIXELS + 2];
                    for (i, input) in inputs.iter_mut().enumerate() {
                        *input = S::load(row.add(i * channels));
                    }
                    if input_row < 3 {
                        for kx in 0..3 {
                            let weight = S::load(conv.weights.add((input_row * 3 + kx) * channels + channel));
                            for j in 0..PIXELS {
                                acc0[j] = S::fma(inputs[j + kx], weight, acc0[j]);
                            }
                        }
                    }
                    if input_row >= 1 {
                        for kx in 0..3 {
                            let weight = S::load(conv.weights.add(((input_row - 1) * 3 + kx) * channels + channel));
                            for j in 0..PIXELS {
                                acc1[j] = S::fma(inputs[j + kx], weight, acc1[j]);
                            }
                        }
                    }
                }
                for j in 0..PIXELS {
                    S::store(out0.add((out_x + j) * out_geom.c + channel), activate::<S, ACT>(acc0[j]));
                    S::store(out1.add((out_x + j) * out_geom.c + channel), activate::<S, ACT>(acc1[j]));
                }
                channel += S::LANES;
            }
            out_x += PIXELS;
        }
        out_y += 2;
    }
    if out_y < y1 {
        depthwise_rows::<S, 3, 1, ACT>(conv, out_y, y1);
    }
}

#[inline(always)]
unsafe fn depthwise_generic<S: Simd>(conv: &Conv, y0: usize, y1: usize) {
    match (conv.kernel, conv.stride) {
        (3, 1) => with_act!(conv.act, depthwise_3x3s1_row_pairs::<S>(conv, y0, y1)),
        (3, 2) => with_act!(conv.act, depthwise_rows::<S, 3, 2>(conv, y0, y1)),
        (5, 1) => with_act!(conv.act, depthwise_rows::<S, 5, 1>(conv, y0, y1)),
        (5, 2) => with_act!(conv.act, depthwise_rows::<S, 5, 2>(conv, y0, y1)),
        (k, s) => panic!("depthwise kernel {k} stride {s} is not built (3 and 5, stride 1 and 2 are)"),
    }
}

multiversion!(pub fn depthwise(conv: &Conv, y0: usize, y1: usize) => depthwise_generic);
