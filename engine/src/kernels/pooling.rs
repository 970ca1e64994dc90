//! Global average pooling: the mean over a map's interior pixels, per channel, for the
//! classifier head and for squeeze-excite (which calls [`mean_pool_generic`] inside its own
//! ISA-compiled function). The sum runs in four interleaved partial sums so the additions do not
//! wait on each other, in a fixed order.

use super::MapGeom;
use crate::simd::{multiversion, Simd};

/// `out[c] = mean over the interior of input[.., c]` for the padded channel count.
#[inline(always)]
pub(super) unsafe fn mean_pool_generic<S: Simd>(input: *const f32, geom: MapGeom, out: *mut f32) {
    let mut channel = 0;
    let scale = S::splat(1.0 / (geom.h * geom.w) as f32);
    while channel < geom.c {
        // Four partial sums per vector for latency; the order of additions is fixed.
        let mut acc = [S::zero(); 4];
        let mut pixel = 0;
        for y in 0..geom.h {
            let row = input.add(geom.offset(y, 0) + channel);
            for x in 0..geom.w {
                acc[pixel & 3] = S::add(acc[pixel & 3], S::load(row.add(x * geom.c)));
                pixel += 1;
            }
        }
        let sum = S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3]));
        S::store(out.add(channel), S::mul(sum, scale));
        channel += S::LANES;
    }
}

multiversion!(pub fn mean_pool(input: *const f32, geom: MapGeom, out: *mut f32) => mean_pool_generic);
