//! What training kernels need beyond [`Simd`]: subtraction, comparisons and a select (the
//! activation derivatives branch on the pre-activation), implemented for the same three
//! vector types so that `multiversion!` dispatches kernels bounded by [`TrainSimd`] unchanged.
//! (Kept here, not in `crate::simd`, so the inference kernels' trait stays as it is; it could
//! move there later.)

use crate::simd::{Portable, Simd};

/// # Safety
/// As [`Simd`]: only call where the CPU has the instructions (through `multiversion!`).
#[allow(clippy::missing_safety_doc)]
pub trait TrainSimd: Simd {
    /// A lane mask.
    type M: Copy;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// a < b, lane-wise.
    unsafe fn lt(a: Self::V, b: Self::V) -> Self::M;
    /// a <= b, lane-wise.
    unsafe fn le(a: Self::V, b: Self::V) -> Self::M;
    unsafe fn and(a: Self::M, b: Self::M) -> Self::M;
    /// `m ? a : b`, lane-wise.
    unsafe fn select(m: Self::M, a: Self::V, b: Self::V) -> Self::V;
}

#[cfg(engine_x86)]
mod x86 {
    use super::TrainSimd;
    use crate::simd::{Avx2, Avx512};
    use std::arch::x86_64::*;

    impl TrainSimd for Avx512 {
        type M = __mmask16;
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            _mm512_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn lt(a: __m512, b: __m512) -> __mmask16 {
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b)
        }
        #[inline(always)]
        unsafe fn le(a: __m512, b: __m512) -> __mmask16 {
            _mm512_cmp_ps_mask::<_CMP_LE_OQ>(a, b)
        }
        #[inline(always)]
        unsafe fn and(a: __mmask16, b: __mmask16) -> __mmask16 {
            a & b
        }
        #[inline(always)]
        unsafe fn select(m: __mmask16, a: __m512, b: __m512) -> __m512 {
            _mm512_mask_blend_ps(m, b, a)
        }
    }

    impl TrainSimd for Avx2 {
        type M = __m256;
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            _mm256_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn lt(a: __m256, b: __m256) -> __m256 {
            _mm256_cmp_ps::<_CMP_LT_OQ>(a, b)
        }
        #[inline(always)]
        unsafe fn le(a: __m256, b: __m256) -> __m256 {
            _mm256_cmp_ps::<_CMP_LE_OQ>(a, b)
        }
        #[inline(always)]
        unsafe fn and(a: __m256, b: __m256) -> __m256 {
            _mm256_and_ps(a, b)
        }
        #[inline(always)]
        unsafe fn select(m: __m256, a: __m256, b: __m256) -> __m256 {
            _mm256_blendv_ps(b, a, m)
        }
    }
}

impl TrainSimd for Portable {
    type M = [bool; 8];
    #[inline(always)]
    unsafe fn sub(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] - b[i])
    }
    #[inline(always)]
    unsafe fn lt(a: [f32; 8], b: [f32; 8]) -> [bool; 8] {
        std::array::from_fn(|i| a[i] < b[i])
    }
    #[inline(always)]
    unsafe fn le(a: [f32; 8], b: [f32; 8]) -> [bool; 8] {
        std::array::from_fn(|i| a[i] <= b[i])
    }
    #[inline(always)]
    unsafe fn and(a: [bool; 8], b: [bool; 8]) -> [bool; 8] {
        std::array::from_fn(|i| a[i] & b[i])
    }
    #[inline(always)]
    unsafe fn select(m: [bool; 8], a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| if m[i] { a[i] } else { b[i] })
    }
}

/// A raw pointer that closures running on the pool may share: every parallel loop hands each
/// task a disjoint range of what it points to (or only reads).
pub struct Ptr<T = f32>(pub *mut T);
impl<T> Clone for Ptr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Ptr<T> {}
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}

impl<T> Ptr<T> {
    pub fn new(p: *mut T) -> Ptr<T> {
        Ptr(p)
    }
    #[inline(always)]
    pub fn get(self) -> *mut T {
        self.0
    }
    #[inline(always)]
    pub fn at(self, offset: usize) -> *mut T {
        unsafe { self.0.add(offset) }
    }
}
