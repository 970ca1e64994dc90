//! The activations every kernel applies in its store: the codes a layer carries, `activate`
//! (one vector through one activation), and `with_act!`, which turns a layer's runtime code
//! into a call of the kernel instantiated for that code. The code is a const generic so that
//! each kernel's epilogue is compiled without a branch; the `match` here is resolved at compile
//! time.

use crate::arch::Activation;
use crate::simd::Simd;

/// Activation codes, a const generic so each epilogue is compiled without a branch.
pub const ACT_NONE: u8 = 0;
pub const ACT_RELU: u8 = 1;
pub const ACT_RELU6: u8 = 2;
pub const ACT_HARDSWISH: u8 = 3;
pub const ACT_HARDSIGMOID: u8 = 4;

/// The code of `act` (the inference layers and the trainer's nodes carry `Activation` until a
/// kernel is called).
pub(crate) fn act_code(act: Option<Activation>) -> u8 {
    match act {
        None => ACT_NONE,
        Some(Activation::Relu) => ACT_RELU,
        Some(Activation::Relu6) => ACT_RELU6,
        Some(Activation::Hardswish) => ACT_HARDSWISH,
        Some(Activation::Hardsigmoid) => ACT_HARDSIGMOID,
    }
}

#[inline(always)]
pub(super) unsafe fn activate<S: Simd, const ACT: u8>(x: S::V) -> S::V {
    match ACT {
        ACT_RELU => S::max(x, S::zero()),
        ACT_RELU6 => S::min(S::max(x, S::zero()), S::splat(6.0)),
        ACT_HARDSWISH => {
            let gate = S::min(S::max(S::add(x, S::splat(3.0)), S::zero()), S::splat(6.0));
            S::mul(x, S::mul(gate, S::splat(1.0 / 6.0)))
        }
        ACT_HARDSIGMOID => {
            let gate = S::min(S::max(S::add(x, S::splat(3.0)), S::zero()), S::splat(6.0));
            S::mul(gate, S::splat(1.0 / 6.0))
        }
        _ => x,
    }
}

/// Expands a runtime activation code into the const-generic call. (The codes are spelled with
/// their full path: a bare name not in scope at the call site would be a catch-all binding.)
macro_rules! with_act {
    ($act:expr, $f:ident::<$($g:tt),*>($($arg:expr),*)) => {
        match $act {
            $crate::kernels::ACT_RELU => $f::<$($g,)* { $crate::kernels::ACT_RELU }>($($arg),*),
            $crate::kernels::ACT_RELU6 => $f::<$($g,)* { $crate::kernels::ACT_RELU6 }>($($arg),*),
            $crate::kernels::ACT_HARDSWISH => $f::<$($g,)* { $crate::kernels::ACT_HARDSWISH }>($($arg),*),
            $crate::kernels::ACT_HARDSIGMOID => $f::<$($g,)* { $crate::kernels::ACT_HARDSIGMOID }>($($arg),*),
            _ => $f::<$($g,)* { $crate::kernels::ACT_NONE }>($($arg),*),
        }
    };
}
pub(crate) use with_act;
