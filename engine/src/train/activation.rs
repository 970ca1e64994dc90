//! Activations and their derivatives, vector and scalar, with torch's conventions at the kinks:
//!
//! - ReLU: grad 1 where x > 0, else 0 (0 at 0).
//! - ReLU6 (`hardtanh(0, 6)`): grad 1 where 0 < x < 6, else 0 (0 at 0 and at 6).
//! - Hardswish `x · relu6(x + 3) / 6`: grad 0 for x < -3, `x / 3 + 1/2` for -3 ≤ x ≤ 3, 1 above
//!   (ATen's `hardswish_backward`).
//! - Hardsigmoid `relu6(x + 3) / 6`: grad 1/6 where -3 < x < 3, else 0.
//!
//! Backward kernels take the *pre-activation* value (recomputed from the stored conv output,
//! see `batch_norm.rs`), never the output.

use super::lanes::TrainSimd;
/// The activation codes and their dispatch are the inference kernels' own.
pub(crate) use crate::kernels::{act_code, with_act as with_train_act};
pub use crate::kernels::{ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_NONE, ACT_RELU, ACT_RELU6};

#[inline(always)]
pub unsafe fn act_forward<S: TrainSimd, const ACT: u8>(x: S::V) -> S::V {
    match ACT {
        ACT_RELU => S::max(x, S::zero()),
        ACT_RELU6 => S::min(S::max(x, S::zero()), S::splat(6.0)),
        ACT_HARDSWISH => {
            let gate = S::min(S::max(S::add(x, S::splat(3.0)), S::zero()), S::splat(6.0));
            S::mul(S::mul(x, gate), S::splat(1.0 / 6.0))
        }
        ACT_HARDSIGMOID => {
            let gate = S::min(S::max(S::add(x, S::splat(3.0)), S::zero()), S::splat(6.0));
            S::mul(gate, S::splat(1.0 / 6.0))
        }
        _ => x,
    }
}

/// `dy · act'(x)`.
#[inline(always)]
pub unsafe fn act_backward<S: TrainSimd, const ACT: u8>(x: S::V, dy: S::V) -> S::V {
    match ACT {
        ACT_RELU => S::select(S::lt(S::zero(), x), dy, S::zero()),
        ACT_RELU6 => S::select(S::and(S::lt(S::zero(), x), S::lt(x, S::splat(6.0))), dy, S::zero()),
        ACT_HARDSWISH => {
            let mid = S::mul(dy, S::fma(x, S::splat(1.0 / 3.0), S::splat(0.5)));
            let upper = S::select(S::le(x, S::splat(3.0)), mid, dy);
            S::select(S::lt(x, S::splat(-3.0)), S::zero(), upper)
        }
        ACT_HARDSIGMOID => S::select(
            S::and(S::lt(S::splat(-3.0), x), S::lt(x, S::splat(3.0))),
            S::mul(dy, S::splat(1.0 / 6.0)),
            S::zero(),
        ),
        _ => dy,
    }
}

/// Scalar forward (f32), the same arithmetic as [`act_forward`].
pub fn act_scalar(x: f32, act: u8) -> f32 {
    match act {
        ACT_RELU => x.max(0.0),
        ACT_RELU6 => x.clamp(0.0, 6.0),
        ACT_HARDSWISH => x * (x + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0),
        ACT_HARDSIGMOID => (x + 3.0).clamp(0.0, 6.0) * (1.0 / 6.0),
        _ => x,
    }
}

/// Scalar `dy · act'(x)` (f32), the conventions of [`act_backward`].
pub fn act_grad_scalar(x: f32, dy: f32, act: u8) -> f32 {
    match act {
        ACT_RELU => {
            if x > 0.0 {
                dy
            } else {
                0.0
            }
        }
        ACT_RELU6 => {
            if x > 0.0 && x < 6.0 {
                dy
            } else {
                0.0
            }
        }
        ACT_HARDSWISH => {
            if x < -3.0 {
                0.0
            } else if x <= 3.0 {
                dy * (x * (1.0 / 3.0) + 0.5)
            } else {
                dy
            }
        }
        ACT_HARDSIGMOID => {
            if x > -3.0 && x < 3.0 {
                dy * (1.0 / 6.0)
            } else {
                0.0
            }
        }
        _ => dy,
    }
}

/// The f64 definitions the tests' references use.
pub fn act_f64(x: f64, act: u8) -> f64 {
    match act {
        ACT_RELU => x.max(0.0),
        ACT_RELU6 => x.clamp(0.0, 6.0),
        ACT_HARDSWISH => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        ACT_HARDSIGMOID => (x + 3.0).clamp(0.0, 6.0) / 6.0,
        _ => x,
    }
}

pub fn act_grad_f64(x: f64, act: u8) -> f64 {
    match act {
        ACT_RELU => (x > 0.0) as u8 as f64,
        ACT_RELU6 => (x > 0.0 && x < 6.0) as u8 as f64,
        ACT_HARDSWISH => {
            if x < -3.0 {
                0.0
            } else if x <= 3.0 {
                x / 3.0 + 0.5
            } else {
                1.0
            }
        }
        ACT_HARDSIGMOID => {
            if x > -3.0 && x < 3.0 {
                1.0 / 6.0
            } else {
                0.0
            }
        }
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{multiversion, Isa};

    unsafe fn both_generic<S: TrainSimd>(act: u8, x: *const f32, dy: *const f32, y: *mut f32, dx: *mut f32, n: usize) {
        unsafe fn run<S: TrainSimd, const ACT: u8>(x: *const f32, dy: *const f32, y: *mut f32, dx: *mut f32, n: usize) {
            let mut i = 0;
            while i < n {
                S::store(y.add(i), act_forward::<S, ACT>(S::load(x.add(i))));
                S::store(dx.add(i), act_backward::<S, ACT>(S::load(x.add(i)), S::load(dy.add(i))));
                i += S::LANES;
            }
        }
        with_train_act!(act, run::<S>(x, dy, y, dx, n))
    }
    multiversion!(fn both(act: u8, x: *const f32, dy: *const f32, y: *mut f32, dx: *mut f32, n: usize) => both_generic);

    #[test]
    fn activations_match_scalar_and_torch_kinks() {
        // The kinks, exactly, and a sweep.
        let mut xs: Vec<f32> = vec![-3.0, 3.0, 0.0, 6.0, -0.0, 2.9999, -3.0001, 5.9999];
        xs.extend((0..88).map(|i| -8.0 + i as f32 * 0.1843));
        assert_eq!(xs.len() % 16, 0);
        let dy: Vec<f32> = (0..xs.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        for isa in Isa::all_available() {
            for act in [ACT_NONE, ACT_RELU, ACT_RELU6, ACT_HARDSWISH, ACT_HARDSIGMOID] {
                let mut y = vec![0.0; xs.len()];
                let mut dx = vec![0.0; xs.len()];
                unsafe { both(isa, act, xs.as_ptr(), dy.as_ptr(), y.as_mut_ptr(), dx.as_mut_ptr(), xs.len()) };
                for i in 0..xs.len() {
                    assert!((y[i] - act_scalar(xs[i], act)).abs() <= 1e-6, "{isa} act {act} x {}", xs[i]);
                    let scalar = act_grad_scalar(xs[i], dy[i], act);
                    assert!((dx[i] - scalar).abs() <= 1e-6 * (1.0 + scalar.abs()), "{isa} act {act} x {}", xs[i]);
                    let want = dy[i] as f64 * act_grad_f64(xs[i] as f64, act);
                    assert!((dx[i] as f64 - want).abs() <= 1e-6, "{isa} act {act} x {}", xs[i]);
                }
            }
        }
        // torch's conventions at the kinks.
        assert_eq!(act_grad_f64(0.0, ACT_RELU), 0.0);
        assert_eq!(act_grad_f64(0.0, ACT_RELU6), 0.0);
        assert_eq!(act_grad_f64(6.0, ACT_RELU6), 0.0);
        assert_eq!(act_grad_f64(-3.0, ACT_HARDSWISH), -0.5);
        assert_eq!(act_grad_f64(3.0, ACT_HARDSWISH), 1.5);
        assert_eq!(act_grad_f64(-3.0, ACT_HARDSIGMOID), 0.0);
        assert_eq!(act_grad_f64(3.0, ACT_HARDSIGMOID), 0.0);
    }
}
