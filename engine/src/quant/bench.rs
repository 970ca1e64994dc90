//! Speed probes of the int8 GEMM against the f32 one at a layer's shape, one thread (for
//! `engine/examples/int8_gemm.rs` and docs/BENCHMARKS.md).

use super::gemm::{gemm_u8s8, gemm_u8s8_store, kernel_name, PackedB};
use super::isa::Int8Isa;
use super::scheme::{Requant, ResidualQuant};
use crate::kernels::{self, Gemm, MapGeom};
use crate::simd::{pad_channels, Isa};
use std::time::Instant;

/// One kernel's speed at one shape.
#[derive(Debug, Clone)]
pub struct GemmSpeed {
    pub kernel: String,
    /// Median time of one GEMM: the CPU time of the calling thread where the OS gives it
    /// (Linux), so other processes on a busy machine count less; wall time elsewhere.
    pub ms: f64,
    /// `2 · m · k · n` operations (a multiply and an add per MAC) per second, in billions.
    pub gops: f64,
}

/// Milliseconds of CPU time this thread has used (wall time where there is no such clock).
fn now_ms() -> f64 {
    #[cfg(target_os = "linux")]
    {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `t` is a valid timespec to write; the clock id is a constant Linux has.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } == 0 {
            return t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6;
        }
    }
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
}

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm the caches and the code
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = now_ms();
            f();
            now_ms() - start
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// What the store does besides bias, rounding and clamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreVariant {
    /// Bias, multiplier, rounding, zero point and clamp only.
    Plain,
    /// Hard-swish in the store (an expansion 1x1 conv of MobileNetV3).
    HardSwish,
    /// A residual map added in the store (a projection 1x1 conv closing an inverted residual).
    Residual,
}

impl StoreVariant {
    fn label(self) -> &'static str {
        match self {
            StoreVariant::Plain => "",
            StoreVariant::HardSwish => " + hard-swish",
            StoreVariant::Residual => " + residual",
        }
    }
}

/// The int8 kernels this CPU has, capped by the ISA overrides (`MOBILENET_ENGINE_INT8_ISA`,
/// else `MOBILENET_ENGINE_ISA`; see [`Int8Isa::detect`]), best first.
fn int8_isas() -> Vec<Int8Isa> {
    let cap = Int8Isa::detect();
    Int8Isa::all_available().into_iter().skip_while(|&i| i != cap).collect()
}

/// Every int8 kernel this CPU has (capped by the ISA overrides; the AVX2 one with 7-bit and with
/// 8-bit weights) and the f32 GEMM on every f32 ISA, at `m × k × n` (`m` pixels, `k` inputs, `n`
/// outputs), `runs` timed runs each. Each int8 kernel with the requantising store (u8 out,
/// [`gemm_u8s8_store`]) doing `variant`, and for [`StoreVariant::Plain`] also as the bare i32
/// GEMM; the f32 one is the engine's 1x1 convolution with its bias (and hard-swish, or the
/// residual add) in the store.
pub fn gemm_speeds(m: usize, k: usize, n: usize, runs: usize, variant: StoreVariant) -> Vec<GemmSpeed> {
    let ops = 2.0 * (m * k * n) as f64;
    let speed = |kernel: String, ms: f64| GemmSpeed { kernel, ms, gops: ops / (ms * 1e6) };
    let mut out = Vec::new();
    let mut seed = 0x1234_5678_9ABC_DEF1u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let a: Vec<u8> = (0..m * k).map(|_| next() as u8).collect();
    let b8: Vec<i8> = (0..k * n).map(|_| next() as i8).collect();
    let b7: Vec<i8> = b8.iter().map(|&v| v >> 1).collect(); // [-64, 63]
    let res8: Vec<u8> = (0..m * n).map(|_| next() as u8).collect();
    let mut c = vec![0i32; m * n];
    let mut c8 = vec![0u8; m * n];
    let mut req = Requant {
        bias: vec![-1000; n],
        multiplier: vec![1e-4; n],
        out_zero_point: 3,
        lo: 3,
        hi: 255,
        hardswish: None,
        residual: None,
    };
    match variant {
        StoreVariant::Plain => {}
        StoreVariant::HardSwish => req.hardswish = Some(0.05),
        StoreVariant::Residual => {
            // As a MobileNet residual layer: no activation, the full u8 range.
            req.lo = 0;
            req.residual = Some(ResidualQuant { zero_point: 120, multiplier: 0.8 });
        }
    }
    let residual = (variant == StoreVariant::Residual).then_some((&res8[..], n));
    for isa in int8_isas() {
        let weights: &[&[i8]] = if isa == Int8Isa::Avx2 { &[&b7, &b8] } else { &[&b8] };
        for b in weights {
            let packed = PackedB::pack(b, k, n);
            if variant == StoreVariant::Plain {
                let ms = median_ms(runs, || gemm_u8s8(isa, &a, k, m, &packed, &mut c, n));
                out.push(speed(format!("int8 {}", kernel_name(isa, &packed)), ms));
            }
            let ms = median_ms(runs, || gemm_u8s8_store(isa, &a, k, m, &packed, &req, residual, &mut c8, n));
            out.push(speed(format!("int8 {}, u8 out{}", kernel_name(isa, &packed), variant.label()), ms));
        }
    }
    for isa in Isa::all_available() {
        let (packed, n_pad) = kernels::pack_gemm_weights(
            &(0..n * k).map(|i| (i % 17) as f32 * 0.01).collect::<Vec<_>>(),
            n,
            k,
            isa.lanes(),
        );
        let a_geom = MapGeom { h: 1, w: m, c: pad_channels(k), pad: 0 };
        let c_geom = MapGeom { h: 1, w: m, c: n_pad, pad: 0 };
        let af: Vec<f32> = (0..a_geom.len()).map(|i| (i % 13) as f32 * 0.1).collect();
        let resf: Vec<f32> = (0..c_geom.len()).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut cf = vec![0.0f32; c_geom.len()];
        let bias = vec![0.0f32; n_pad];
        let g = Gemm {
            a: af.as_ptr(),
            a_geom,
            k,
            b: packed.as_ptr(),
            n_pad,
            bias: bias.as_ptr(),
            act: if variant == StoreVariant::HardSwish { kernels::ACT_HARDSWISH } else { kernels::ACT_NONE },
            c: cf.as_mut_ptr(),
            c_geom,
            res: if variant == StoreVariant::Residual { resf.as_ptr() } else { std::ptr::null() },
            res_geom: c_geom,
            blocking: None,
        };
        // SAFETY: the maps above hold `m` pixels of `k` (padded) inputs and `n_pad` outputs
        // (the residual as many), the packed weights and bias are `n_pad` wide, and `isa` is
        // available on this CPU.
        let ms = median_ms(runs, || unsafe { kernels::gemm(isa, &g, 0, m) });
        out.push(speed(format!("f32 {isa}{}", variant.label()), ms));
        drop(cf);
    }
    out
}
