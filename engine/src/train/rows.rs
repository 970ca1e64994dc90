//! Small vectorised kernels over `[rows][c]` maps (c padded to 16): the global average pool and
//! its gradient, the squeeze-excite's channel scale and its reductions, and adds.
//! Sums over rows accumulate in f32 vectors over blocks of rows and in f64 across blocks.

use super::lanes::TrainSimd;
use crate::simd::multiversion;

const ROW_BLOCK: usize = 64;

#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn col_dot_generic<S: TrainSimd>(a: *const f32, b: *const f32, c: usize, r0: usize, r1: usize, out: *mut f64) {
    // `b` null: plain sums of `a`.
    let mut ch = 0;
    while ch < c {
        let mut total = [0.0f64; 16];
        let mut r = r0;
        while r < r1 {
            let re = (r + ROW_BLOCK).min(r1);
            let (mut s0, mut s1) = (S::zero(), S::zero());
            let mut row = r;
            while row + 1 < re {
                let (i0, i1) = (row * c + ch, (row + 1) * c + ch);
                if b.is_null() {
                    s0 = S::add(s0, S::load(a.add(i0)));
                    s1 = S::add(s1, S::load(a.add(i1)));
                } else {
                    s0 = S::fma(S::load(a.add(i0)), S::load(b.add(i0)), s0);
                    s1 = S::fma(S::load(a.add(i1)), S::load(b.add(i1)), s1);
                }
                row += 2;
            }
            if row < re {
                let i0 = row * c + ch;
                s0 = if b.is_null() {
                    S::add(s0, S::load(a.add(i0)))
                } else {
                    S::fma(S::load(a.add(i0)), S::load(b.add(i0)), s0)
                };
            }
            let mut t = [0.0f32; 16];
            S::store(t.as_mut_ptr(), S::add(s0, s1));
            for l in 0..S::LANES {
                total[l] += t[l] as f64;
            }
            r = re;
        }
        for l in 0..S::LANES {
            *out.add(ch + l) = total[l];
        }
        ch += S::LANES;
    }
}

// `out[ch] = Σ_rows a[row][ch] · b[row][ch]` (`b` null: `Σ a`), rows `r0..r1`.
multiversion!(pub fn col_dot(a: *const f32, b: *const f32, c: usize, r0: usize, r1: usize, out: *mut f64) => col_dot_generic);

#[inline(always)]
unsafe fn scale_rows_generic<S: TrainSimd>(
    x: *const f32,
    v: *const f32,
    factor: f32,
    c: usize,
    r0: usize,
    r1: usize,
    out: *mut f32,
) {
    // `x` null: `out = v · factor`; else `out = x · v · factor`.
    let f = S::splat(factor);
    for row in r0..r1 {
        let mut ch = 0;
        while ch < c {
            let s = S::mul(S::load(v.add(ch)), f);
            let y = if x.is_null() { s } else { S::mul(S::load(x.add(row * c + ch)), s) };
            S::store(out.add(row * c + ch), y);
            ch += S::LANES;
        }
    }
}

// `out[row] = x[row] ∘ v · factor` (or `v · factor` with `x` null) for rows `r0..r1`.
multiversion!(pub fn scale_rows(x: *const f32, v: *const f32, factor: f32, c: usize, r0: usize, r1: usize, out: *mut f32) => scale_rows_generic);

#[inline(always)]
unsafe fn add_rows_generic<S: TrainSimd>(v: *const f32, factor: f32, c: usize, r0: usize, r1: usize, out: *mut f32) {
    let f = S::splat(factor);
    let mut ch = 0;
    while ch < c {
        let s = S::mul(S::load(v.add(ch)), f);
        for row in r0..r1 {
            let p = out.add(row * c + ch);
            S::store(p, S::add(S::load(p), s));
        }
        ch += S::LANES;
    }
}

// `out[row] += v · factor` for rows `r0..r1`.
multiversion!(pub fn add_rows(v: *const f32, factor: f32, c: usize, r0: usize, r1: usize, out: *mut f32) => add_rows_generic);

#[inline(always)]
unsafe fn add_into_generic<S: TrainSimd>(out: *mut f32, x: *const f32, len: usize) {
    let mut i = 0;
    while i < len {
        S::store(out.add(i), S::add(S::load(out.add(i)), S::load(x.add(i))));
        i += S::LANES;
    }
}

// `out[i] += x[i]`, `len` a multiple of 16.
multiversion!(pub fn add_into(out: *mut f32, x: *const f32, len: usize) => add_into_generic);

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use crate::simd::Isa;
    use crate::train::rng::Rng;

    #[test]
    fn row_kernels_match_f64() {
        let mut rng = Rng::new(3);
        for isa in Isa::all_available() {
            for &(rows, c) in &[(1usize, 16usize), (7, 32), (150, 48)] {
                let a: Vec<f32> = (0..rows * c).map(|_| rng.normal()).collect();
                let b: Vec<f32> = (0..rows * c).map(|_| rng.normal()).collect();
                let v: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
                let mut sums = vec![0.0f64; c];
                let mut dots = vec![0.0f64; c];
                unsafe {
                    col_dot(isa, a.as_ptr(), std::ptr::null(), c, 0, rows, sums.as_mut_ptr());
                    col_dot(isa, a.as_ptr(), b.as_ptr(), c, 0, rows, dots.as_mut_ptr());
                }
                for ch in 0..c {
                    let s: f64 = (0..rows).map(|r| a[r * c + ch] as f64).sum();
                    let d: f64 = (0..rows).map(|r| a[r * c + ch] as f64 * b[r * c + ch] as f64).sum();
                    assert!((sums[ch] - s).abs() < 1e-4 && (dots[ch] - d).abs() < 1e-4, "{isa}");
                }
                let mut out = vec![0.0f32; rows * c];
                unsafe { scale_rows(isa, a.as_ptr(), v.as_ptr(), 0.5, c, 0, rows, out.as_mut_ptr()) };
                let mut out2 = b.clone();
                unsafe { add_rows(isa, v.as_ptr(), 2.0, c, 0, rows, out2.as_mut_ptr()) };
                let mut out3 = a.clone();
                unsafe { add_into(isa, out3.as_mut_ptr(), b.as_ptr(), rows * c) };
                for r in 0..rows {
                    for ch in 0..c {
                        let i = r * c + ch;
                        assert!((out[i] - a[i] * v[ch] * 0.5).abs() < 1e-6);
                        assert!((out2[i] - (b[i] + v[ch] * 2.0)).abs() < 1e-5);
                        assert_eq!(out3[i], a[i] + b[i]);
                    }
                }
            }
        }
    }
}
