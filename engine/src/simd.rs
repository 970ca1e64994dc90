//! The vector abstraction every kernel is written against, and runtime ISA selection.
//!
//! Kernels are generic over [`Simd`] and marked `#[inline(always)]`; [`multiversion!`] compiles
//! each one three times, inside functions carrying `#[target_feature]` for AVX-512 and AVX2+FMA
//! and once without, so the same source becomes three instruction sets and the choice is made
//! once per engine at run time. The portable path is plain Rust on fixed-size arrays, which LLVM
//! vectorises for whatever the build target has (SSE2, NEON), and is correct everywhere.

use std::fmt;

/// The instruction set an engine runs its kernels with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512F (16 lanes), with AVX2 and FMA.
    Avx512,
    /// AVX2 with FMA (8 lanes).
    Avx2,
    /// Plain Rust, 8-lane arrays; any CPU.
    Portable,
}

impl Isa {
    /// The best instruction set this CPU has. `MOBILENET_ENGINE_ISA=portable|avx2|avx512` caps it
    /// (a request for more than the CPU has falls back to what it has).
    pub fn detect() -> Isa {
        let best = Self::best_available();
        match std::env::var("MOBILENET_ENGINE_ISA").ok().as_deref().map(str::trim) {
            Some("portable") => Isa::Portable,
            Some("avx2") if best != Isa::Portable => Isa::Avx2,
            _ => best,
        }
    }

    fn best_available() -> Isa {
        #[cfg(engine_x86)]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2 && is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every instruction set this CPU can run (for tests that cover all paths).
    pub fn all_available() -> Vec<Isa> {
        let best = Self::best_available();
        [Isa::Avx512, Isa::Avx2, Isa::Portable]
            .into_iter()
            .filter(|isa| match best {
                Isa::Avx512 => true,
                Isa::Avx2 => *isa != Isa::Avx512,
                Isa::Portable => *isa == Isa::Portable,
            })
            .collect()
    }

    /// Lanes per vector: the width weights are packed for.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 | Isa::Portable => 8,
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2+fma",
            Isa::Portable => "portable",
        })
    }
}

/// Channel counts are stored padded to this multiple (every ISA's lane count divides it), so
/// kernels never need masked loads; the padding channels hold zeros.
pub const CHANNEL_ALIGN: usize = 16;

pub fn pad_channels(c: usize) -> usize {
    c.div_ceil(CHANNEL_ALIGN) * CHANNEL_ALIGN
}

/// One vector of `LANES` f32.
///
/// # Safety
/// Every method is `unsafe` for the same two reasons: loads and stores read and write `LANES`
/// floats at a raw pointer, which must be valid for them; and an implementation's instructions
/// may only run where the CPU has them (callers go through `multiversion!`, which checks).
#[allow(clippy::missing_safety_doc)]
pub trait Simd: Copy {
    const LANES: usize;
    /// Rows per GEMM micro-kernel: as many as the register file holds (2 vectors per row).
    const GEMM_ROWS: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// a · b + c (fused where the ISA has it).
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
    /// A hint to bring the cache line at `p` into L1 (none where the ISA has no such hint).
    #[inline(always)]
    unsafe fn prefetch(_p: *const f32) {}
}

#[cfg(engine_x86)]
pub use x86::{Avx2, Avx512};

#[cfg(engine_x86)]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct Avx512;

    impl Simd for Avx512 {
        const LANES: usize = 16;
        const GEMM_ROWS: usize = 12;
        type V = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m512 {
            _mm512_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            _mm512_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const f32) {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx2;

    impl Simd for Avx2 {
        const LANES: usize = 8;
        const GEMM_ROWS: usize = 6;
        type V = __m256;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            _mm256_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const f32) {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
        }
    }
}

/// Plain Rust: 8-lane arrays that LLVM vectorises for the build target.
#[derive(Clone, Copy)]
pub struct Portable;

#[inline(always)]
fn lanes8(f: impl Fn(usize) -> f32) -> [f32; 8] {
    std::array::from_fn(f)
}

impl Simd for Portable {
    const LANES: usize = 8;
    const GEMM_ROWS: usize = 4;
    type V = [f32; 8];
    #[inline(always)]
    unsafe fn zero() -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> [f32; 8] {
        [x; 8]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> [f32; 8] {
        (p as *const [f32; 8]).read_unaligned()
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: [f32; 8]) {
        (p as *mut [f32; 8]).write_unaligned(v)
    }
    #[inline(always)]
    unsafe fn fma(a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        // `mul_add` is a libm call where the target has no FMA instruction: only use it where
        // it is one instruction.
        #[cfg(any(target_arch = "aarch64", target_feature = "fma"))]
        return lanes8(|i| a[i].mul_add(b[i], c[i]));
        #[cfg(not(any(target_arch = "aarch64", target_feature = "fma")))]
        return lanes8(|i| a[i] * b[i] + c[i]);
    }
    #[inline(always)]
    unsafe fn add(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        lanes8(|i| a[i] + b[i])
    }
    #[inline(always)]
    unsafe fn mul(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        lanes8(|i| a[i] * b[i])
    }
    #[inline(always)]
    unsafe fn max(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        lanes8(|i| if a[i] > b[i] { a[i] } else { b[i] })
    }
    #[inline(always)]
    unsafe fn min(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        lanes8(|i| if a[i] < b[i] { a[i] } else { b[i] })
    }
}

/// Defines `$name(isa, args…)` that runs `$generic::<S>(args…)` compiled for `isa`.
///
/// The generated function is `unsafe`: the kernels follow the raw pointers in their arguments,
/// which must cover the rows and channels the descriptor names, and `isa` must be one this
/// CPU runs ([`Isa::all_available`]).
macro_rules! multiversion {
    ($vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $generic:ident) => {
        #[allow(clippy::too_many_arguments)]
        /// # Safety
        /// The pointers in the arguments must be valid for the rows and channels they describe,
        /// and `isa` must be available on this CPU.
        $vis unsafe fn $name(isa: $crate::simd::Isa, $($arg: $ty),*) {
            #[cfg(engine_x86)]
            #[target_feature(enable = "avx512f,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) {
                unsafe { $generic::<$crate::simd::Avx512>($($arg),*) }
            }
            #[cfg(engine_x86)]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) {
                unsafe { $generic::<$crate::simd::Avx2>($($arg),*) }
            }
            match isa {
                // SAFETY: an engine only holds an Isa that `Isa::detect` found on this CPU.
                #[cfg(engine_x86)]
                $crate::simd::Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(engine_x86)]
                $crate::simd::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => unsafe { $generic::<$crate::simd::Portable>($($arg),*) },
            }
        }
    };
}
pub(crate) use multiversion;
