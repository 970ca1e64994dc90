//! Full (dense) k x k convolution with few input channels: the stem, whose 3 input channels
//! are far too few to fill a vector. Vectors run over output channels instead: each input value
//! is broadcast and multiplied into a vector of output channels, for `STEM_PIXELS` output pixels
//! at a time. Weights are `[k][k][cin][cout]`, the output channel innermost to match.

use super::activation::{activate, with_act};
use super::Conv;
use crate::simd::{multiversion, Simd};

/// Output pixels computed together (independent accumulator chains).
const STEM_PIXELS: usize = 4;

#[inline(always)]
unsafe fn direct_rows<S: Simd, const ACT: u8>(conv: &Conv, y0: usize, y1: usize) {
    let (in_geom, out_geom) = (conv.in_geom, conv.out_geom);
    let (k, stride, cin, cout) = (conv.kernel, conv.stride, conv.cin, out_geom.c);
    // Border pixels the k x k window never reaches.
    let unused_border = in_geom.pad - (k - 1) / 2;
    let in_row = in_geom.row_stride();
    for out_y in y0..y1 {
        let base = conv.input.add((out_y * stride + unused_border - conv.in_row0) * in_row + unused_border * in_geom.c);
        let out_row = conv.output.add(out_geom.offset(out_y - conv.out_row0, 0));
        let mut out_x = 0;
        while out_x < out_geom.w {
            let pixels = STEM_PIXELS.min(out_geom.w - out_x);
            let mut channel = 0;
            while channel < cout {
                let bias = S::load(conv.bias.add(channel));
                let mut acc = [bias; STEM_PIXELS];
                for ky in 0..k {
                    for kx in 0..k {
                        for in_channel in 0..cin {
                            let weight = S::load(conv.weights.add(((ky * k + kx) * cin + in_channel) * cout + channel));
                            for (j, acc) in acc.iter_mut().enumerate() {
                                // Pixels past the row end reread the last one.
                                let x = (out_x + j.min(pixels - 1)) * stride + kx;
                                let input = *base.add(ky * in_row + x * in_geom.c + in_channel);
                                *acc = S::fma(S::splat(input), weight, *acc);
                            }
                        }
                    }
                }
                for (j, acc) in acc.iter().enumerate().take(pixels) {
                    S::store(out_row.add((out_x + j) * out_geom.c + channel), activate::<S, ACT>(*acc));
                }
                channel += S::LANES;
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
