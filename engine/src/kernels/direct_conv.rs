//! Full (dense) k x k convolution with few input channels: the stem, whose 3 input channels
//! are far too few to fill a vector. Vectors run over output channels instead: each input value
//! is broadcast and multiplied into a vector of output channels, for `STEM_PIXELS` output pixels
//! at a time. Weights are `[k][k][cin][cout]`, the output channel innermost to match.

use super::activation::{activate, with_act};
use super::Conv;
use crate::simd::{multiversion, Simd};

/// Output pixels computed together.
const STEM_PIXELS: usize = 6;

/// `STEM_PIXELS` output pixels × `VECTORS` vectors of output channels at a time: 12 independent
/// accumulator chains with two vectors, enough to keep two FMA pipes busy through their latency
/// (AVX2: 4 cycles × 2 pipes; four pixels of one vector, the old tile, left half of that idle).
#[inline(always)]
unsafe fn direct_rows<S: Simd, const ACT: u8>(conv: &Conv, y0: usize, y1: usize) {
    let cout = conv.out_geom.c;
    let mut channel = 0;
    while channel + 2 * S::LANES <= cout {
        direct_tile::<S, 2, ACT>(conv, y0, y1, channel);
        channel += 2 * S::LANES;
    }
    if channel < cout {
        direct_tile::<S, 1, ACT>(conv, y0, y1, channel);
    }
}

// Indexed loops over const bounds: they unroll, and the accumulators stay in registers.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn direct_tile<S: Simd, const VECTORS: usize, const ACT: u8>(conv: &Conv, y0: usize, y1: usize, channel: usize) {
    let (in_geom, out_geom) = (conv.in_geom, conv.out_geom);
    let (k, stride, cin, cout) = (conv.kernel, conv.stride, conv.cin, out_geom.c);
    // Border pixels the k x k window never reaches.
    let unused_border = in_geom.pad - (k - 1) / 2;
    let in_row = in_geom.row_stride();
    let mut bias = [S::zero(); VECTORS];
    for (v, b) in bias.iter_mut().enumerate() {
        *b = S::load(conv.bias.add(channel + v * S::LANES));
    }
    for out_y in y0..y1 {
        let base = conv.input.add((out_y * stride + unused_border - conv.in_row0) * in_row + unused_border * in_geom.c);
        let out_row = conv.output.add(out_geom.offset(out_y - conv.out_row0, 0));
        let mut out_x = 0;
        while out_x < out_geom.w {
            let pixels = STEM_PIXELS.min(out_geom.w - out_x);
            // Pixels past the row end reread the last one.
            let mut column = [0usize; STEM_PIXELS];
            for (j, column) in column.iter_mut().enumerate() {
                *column = (out_x + j.min(pixels - 1)) * stride * in_geom.c;
            }
            let mut acc = [bias; STEM_PIXELS];
            for ky in 0..k {
                let row = base.add(ky * in_row);
                for kx in 0..k {
                    for in_channel in 0..cin {
                        let tap = row.add(kx * in_geom.c + in_channel);
                        let w = conv.weights.add(((ky * k + kx) * cin + in_channel) * cout + channel);
                        let mut weight = [S::zero(); VECTORS];
                        for (v, weight) in weight.iter_mut().enumerate() {
                            *weight = S::load(w.add(v * S::LANES));
                        }
                        for j in 0..STEM_PIXELS {
                            let input = S::splat(*tap.add(column[j]));
                            for v in 0..VECTORS {
                                acc[j][v] = S::fma(input, weight[v], acc[j][v]);
                            }
                        }
                    }
                }
            }
            for j in 0..pixels {
                for v in 0..VECTORS {
                    S::store(
                        out_row.add((out_x + j) * out_geom.c + channel + v * S::LANES),
                        activate::<S, ACT>(acc[j][v]),
                    );
                }
            }
            out_x += pixels;
        }
    }
}

#[inline(always)]
unsafe fn direct_conv_generic<S: Simd>(conv: &Conv, y0: usize, y1: usize) {
    with_act!(conv.act, direct_rows::<S>(conv, y0, y1))
}

multiversion!(pub fn direct_conv(conv: &Conv, y0: usize, y1: usize) => direct_conv_generic);
