//! The small kernels on u8 maps around the convs: the image's quantisation, the stem's im2col,
//! mean pooling, and squeeze-excite (pool, two f32 fully connected layers, the per-channel
//! rescale). Each is one plain loop compiled per vector ISA ([`isa_variants`]) so that it
//! vectorises; the loops do the same IEEE operations whatever the ISA, so the bytes agree.

use crate::kernels::MapGeom;

use super::isa::Int8Isa;
use super::scheme::ActivationQuant;

/// `$name(isa, args…)` runs `$plain(args…)` compiled for AVX-512 or AVX2 (or plainly), as
/// `isa` says.
macro_rules! isa_variants {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $plain:ident) => {
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: Int8Isa, $($arg: $ty),*) {
            #[cfg(engine_x86)]
            #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) {
                $plain($($arg),*)
            }
            #[cfg(engine_x86)]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) {
                $plain($($arg),*)
            }
            debug_assert!(isa.is_available());
            match isa {
                // SAFETY: a network only holds an Int8Isa this CPU has (checked where it is
                // chosen); the functions touch only their slices.
                #[cfg(engine_x86)]
                Int8Isa::Vnni512 => unsafe { avx512($($arg),*) },
                #[cfg(engine_x86)]
                Int8Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => $plain($($arg),*),
            }
        }
    };
}

isa_variants!(pub(super) fn quantize_slice(src: &[f32], q: ActivationQuant, dst: &mut [u8]) => quantize_slice_plain);

/// `dst[i] = q.quantize(src[i])`.
#[inline(always)]
fn quantize_slice_plain(src: &[f32], q: ActivationQuant, dst: &mut [u8]) {
    let (scale, zp) = (q.scale, q.zero_point as i32);
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = (round_to_i32(x / scale) + zp).clamp(0, 255) as u8;
    }
}

/// The input windows of a `kernel` x `kernel` conv (stride `stride`) over `cin` channels of
/// `input`, one row of `kernel²·cin` bytes per output pixel (tap-major).
pub(super) fn im2col(
    input: &[u8],
    g: MapGeom,
    cin: usize,
    kernel: usize,
    stride: usize,
    out_g: MapGeom,
    cols: &mut [u8],
) {
    let pad = (kernel - 1) / 2;
    let k = kernel * kernel * cin;
    let row_stride = g.row_stride();
    if kernel == 3 && cin == 3 && g.c == 3 {
        // Every MobileNet's stem: three 9-byte window rows per pixel, copied as fixed-size
        // arrays (a memcpy call per 9 bytes took most of the stem's time).
        for oy in 0..out_g.h {
            for ox in 0..out_g.w {
                let dst: &mut [u8; 27] = (&mut cols[(oy * out_g.w + ox) * 27..][..27]).try_into().unwrap();
                for ky in 0..3 {
                    let at = (oy * stride + ky + g.pad - pad) * row_stride + (ox * stride + g.pad - pad) * 3;
                    let src: &[u8; 9] = input[at..at + 9].try_into().unwrap();
                    dst[ky * 9..ky * 9 + 9].copy_from_slice(src);
                }
            }
        }
        return;
    }
    for oy in 0..out_g.h {
        for ox in 0..out_g.w {
            let dst = &mut cols[(oy * out_g.w + ox) * k..][..k];
            for ky in 0..kernel {
                let iy = oy * stride + ky + g.pad - pad;
                let src = &input[iy * row_stride + (ox * stride + g.pad - pad) * g.c..];
                let row = &mut dst[ky * kernel * cin..(ky + 1) * kernel * cin];
                if g.c == cin {
                    // Unpadded channels (the image): the window's row is contiguous.
                    row.copy_from_slice(&src[..kernel * cin]);
                } else {
                    for kx in 0..kernel {
                        row[kx * cin..(kx + 1) * cin].copy_from_slice(&src[kx * g.c..kx * g.c + cin]);
                    }
                }
            }
        }
    }
}

isa_variants!(pub(super) fn mean_pool_u8(map: &[u8], g: MapGeom, channels: usize, q: ActivationQuant, pooled: &mut [f32]) => mean_pool_plain);

/// The mean of each of the first `channels` channels of a u8 map, dequantised: exact integer
/// sums, then one rounding per channel.
#[inline(always)]
fn mean_pool_plain(map: &[u8], g: MapGeom, channels: usize, q: ActivationQuant, pooled: &mut [f32]) {
    // i32 holds any map the engine takes: 4096² pixels · 255 < 2^32... per channel, and the
    // largest pooled map is far smaller (7x7 up to 4096/32 = 128 squared).
    let mut sums = vec![0i32; channels];
    for y in 0..g.h {
        for x in 0..g.w {
            let px = &map[g.offset(y, x)..][..channels];
            for (s, &v) in sums.iter_mut().zip(px) {
                *s += v as i32;
            }
        }
    }
    let n = (g.h * g.w) as i64;
    for (p, &s) in pooled.iter_mut().zip(&sums) {
        *p = (s as i64 - n * q.zero_point as i64) as f32 * q.scale / n as f32;
    }
}

/// torchvision's `SqueezeExcitation` on a u8 map, in place: the mean of each channel
/// (dequantised), `fc1` + ReLU, `fc2` + hard-sigmoid in f32, then each channel's real values
/// times its gate, on the map's own grid (`round((q - zp)·gate) + zp`).
pub(super) struct SqueezeExcite<'a> {
    pub channels: usize,
    pub squeeze: usize,
    /// `[channels][squeeze]` (fc1 transposed: one axpy per input channel).
    pub fc1t: &'a [f32],
    pub b1: &'a [f32],
    /// `[squeeze][channels]` (fc2 transposed).
    pub fc2t: &'a [f32],
    pub b2: &'a [f32],
}

isa_variants!(pub(super) fn squeeze_excite(se: &SqueezeExcite, map: &mut [u8], g: MapGeom, q: ActivationQuant) => squeeze_excite_plain);

#[inline(always)]
fn squeeze_excite_plain(se: &SqueezeExcite, map: &mut [u8], g: MapGeom, q: ActivationQuant) {
    let (c, s) = (se.channels, se.squeeze);
    let mut pooled = vec![0.0f32; c];
    mean_pool_plain(map, g, c, q, &mut pooled);
    let mut hidden = se.b1.to_vec();
    for (x, row) in pooled.iter().zip(se.fc1t.chunks_exact(s)) {
        for (h, w) in hidden.iter_mut().zip(row) {
            *h += x * w;
        }
    }
    let mut gate = se.b2.to_vec();
    for (h, row) in hidden.iter().zip(se.fc2t.chunks_exact(c)) {
        let h = h.max(0.0);
        for (o, w) in gate.iter_mut().zip(row) {
            *o += h * w;
        }
    }
    for v in &mut gate {
        // hard-sigmoid: relu6(x + 3) / 6
        *v = (*v + 3.0).clamp(0.0, 6.0) / 6.0;
    }
    let zp = q.zero_point as i32;
    for y in 0..g.h {
        for x in 0..g.w {
            let px = &mut map[g.offset(y, x)..][..c];
            for (v, &k) in px.iter_mut().zip(&gate) {
                *v = (round_to_i32((*v as i32 - zp) as f32 * k) + zp).clamp(0, 255) as u8;
            }
        }
    }
}

/// `round_half_even(x)` as i32 for the u8 stores: the same value as the scheme's f32 steps
/// (`(round(x) + zp).clamp(0, 255)` equals `(round(x) as i32 + zp).clamp(0, 255)` for any
/// `x`, as values beyond ±512 clamp either way), in operations that vectorise: a NaN-free
/// bound, then the plain conversion instead of Rust's saturating one.
#[inline(always)]
fn round_to_i32(x: f32) -> i32 {
    // Not `clamp`: it keeps a NaN, which the unchecked conversion must never see.
    #[allow(clippy::manual_clamp)]
    let r = x.round_ties_even().max(-512.0).min(512.0);
    // SAFETY: `r` is finite and within ±512 (`max`/`min` return the bound for NaN).
    unsafe { r.to_int_unchecked::<i32>() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stem's fixed-size im2col and the general one (reading a channel-padded copy of the
    /// same image) give the same rows, for both strides and odd sizes.
    #[test]
    fn the_stems_im2col_equals_the_general_one() {
        for (h, w, stride) in [(7, 5, 2), (8, 8, 1), (13, 11, 2)] {
            let (g3, g16) = (MapGeom { h, w, c: 3, pad: 1 }, MapGeom { h, w, c: 16, pad: 1 });
            let (mut a, mut b) = (vec![7u8; g3.len()], vec![7u8; g16.len()]);
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let v = (y * 31 + x * 7 + c * 101) as u8;
                        a[g3.offset(y, x) + c] = v;
                        b[g16.offset(y, x) + c] = v;
                    }
                }
            }
            let out = |d: usize| (d + 2 - 3) / stride + 1;
            let og = MapGeom { h: out(h), w: out(w), c: 16, pad: 0 };
            let (mut ca, mut cb) = (vec![0u8; og.h * og.w * 27], vec![1u8; og.h * og.w * 27]);
            im2col(&a, g3, 3, 3, stride, og, &mut ca);
            im2col(&b, g16, 3, 3, stride, og, &mut cb);
            assert_eq!(ca, cb, "{h}x{w} stride {stride}");
        }
    }
}
