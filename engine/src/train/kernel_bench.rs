//! Speed probes of the CPU trainer's kernels alone, one thread, at training shapes: the GEMM's
//! three layouts, the depthwise kernels, weight repacking. For speed work, beside the whole-step
//! profile (`Trainer::start_profile`); not tests (timings assert nothing):
//!
//! ```text
//! MOBILENET_ENGINE_ISA=avx2 cargo run --release -p mobilenet-engine --example train_kernels
//! ```

#![allow(clippy::needless_range_loop)]

use super::conv::Dense;
use super::depthwise::{depthwise_forward, depthwise_input_grad, depthwise_weight_grad, DwGeom};
use super::gemm::{matmul_block, pack_panels_with, MatMul};
use crate::simd::Isa;

/// GFLOP/s of the GEMM's three layouts at training shapes, one thread.
pub fn gemm(isa: Isa) {
    // (m, n, k, trans_a): forward / input grad (pixels x channels) and weight grads.
    for &(m, n, k, ta, what) in &[
        (32768, 96, 16, false, "fwd 16->96 (M=32768)"),
        (8192, 576, 96, false, "fwd 96->576 (M=8192)"),
        (128, 1024, 576, false, "linear fwd 576->1024 (M=128)"),
        (8192, 96, 576, false, "dX 576->96"),
        (96, 576, 8192, true, "dW 96x576 over 8192"),
        (1024, 576, 128, true, "linear dW 1024x576 over 128"),
        (96, 16, 32768, true, "dW 96x16 over 32768"),
        (128, 576, 1024, false, "linear dX 1024->576 (M=128)"),
        (128, 144, 576, false, "SE fc1 576->144 (M=128)"),
        (576, 144, 128, true, "SE fc2 dW 576x144 over 128"),
    ] {
        let lda = if ta { m } else { k };
        let a: Vec<f32> = (0..(if ta { k } else { m }) * lda).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        let mm = MatMul {
            m,
            n,
            k,
            a: a.as_ptr(),
            lda,
            trans_a: ta,
            b: b.as_ptr(),
            ldb: n,
            b_panel: 0,
            c: c.as_mut_ptr(),
            ldc: n,
            accumulate: false,
        };
        let runs = 20;
        let t = std::time::Instant::now();
        for _ in 0..runs {
            unsafe { matmul_block(isa, &mm, 0, m, 0, n) };
        }
        let s = t.elapsed().as_secs_f64() / runs as f64;
        println!("{what:<32} {:>7.3} ms {:>6.1} GFLOP/s", s * 1e3, 2.0 * (m * n * k) as f64 / s / 1e9);
    }
    // Row-major B with a long row (ldb 1024) against a packed panel (ldb 32).
    for ldb in [32usize, 1024] {
        let (m, n, k) = (8192, 32, 576);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * ldb).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        let mm = MatMul {
            m,
            n,
            k,
            a: a.as_ptr(),
            lda: k,
            trans_a: false,
            b: b.as_ptr(),
            ldb,
            b_panel: 0,
            c: c.as_mut_ptr(),
            ldc: n,
            accumulate: false,
        };
        let t = std::time::Instant::now();
        for _ in 0..20 {
            unsafe { matmul_block(isa, &mm, 0, m, 0, n) };
        }
        let s = t.elapsed().as_secs_f64() / 20.0;
        println!(
            "B panel ldb {ldb:<5}                   {:>7.3} ms {:>6.1} GFLOP/s",
            s * 1e3,
            2.0 * (m * n * k) as f64 / s / 1e9
        );
    }
}

/// The three depthwise kernels at training shapes, one thread.
pub fn depthwise(isa: Isa) {
    for &(h, c, k, s, n) in &[
        (16usize, 96usize, 3usize, 2usize, 128usize),
        (8, 144, 3, 1, 128),
        (4, 576, 5, 1, 128),
        (112, 96, 3, 2, 8),
        (56, 144, 3, 1, 8),
    ] {
        let g = DwGeom::new(h, h, c, k, s);
        let x = vec![0.5f32; n * g.in_len()];
        let wt = vec![0.25f32; k * k * c];
        let mut z = vec![0.0f32; n * g.out_len()];
        let mut dx = vec![0.0f32; n * g.in_len()];
        let mut dw = vec![0.0f32; k * k * c];
        let macs = (n * g.out_len() * k * k) as f64;
        let time = |f: &mut dyn FnMut()| {
            f();
            let t = std::time::Instant::now();
            for _ in 0..5 {
                f();
            }
            t.elapsed().as_secs_f64() / 5.0
        };
        let tf = time(&mut || unsafe { depthwise_forward(isa, &g, x.as_ptr(), wt.as_ptr(), z.as_mut_ptr(), 0, n) });
        let ti = time(&mut || unsafe { depthwise_input_grad(isa, &g, z.as_ptr(), wt.as_ptr(), dx.as_mut_ptr(), 0, n) });
        let tw = time(&mut || unsafe { depthwise_weight_grad(isa, &g, x.as_ptr(), z.as_ptr(), dw.as_mut_ptr(), 0, n) });
        println!(
            "{h}x{h}x{c} k{k} s{s} n{n}: forward {:.2} ms ({:.1} GMAC/s), input grad {:.2} ms ({:.1}), weight grad {:.2} ms ({:.1})",
            tf * 1e3,
            macs / tf / 1e9,
            ti * 1e3,
            macs / ti / 1e9,
            tw * 1e3,
            macs / tw / 1e9
        );
    }
}

/// Repacking a 1024x576 weight after an optimizer step: the dense packer against the generic one.
pub fn packing() {
    let (out, inp) = (1024, 576);
    let w: Vec<f32> = (0..out * inp).map(|i| i as f32).collect();
    let mut d = Dense::new(out, inp, 0, None);
    d.pack(&w, None, 16);
    let t = std::time::Instant::now();
    for _ in 0..20 {
        d.pack(&w, None, 16);
    }
    println!("pack 1024x576: {:.3} ms", t.elapsed().as_secs_f64() / 20.0 * 1e3);
    // The generic packer, for comparison.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let t = std::time::Instant::now();
    for _ in 0..20 {
        pack_panels_with(inp, out, 16, &mut a, |i, o| w[o * inp + i]);
        pack_panels_with(out, inp, 16, &mut b, |o, i| w[o * inp + i]);
    }
    println!("generic pack_panels_with: {:.3} ms", t.elapsed().as_secs_f64() / 20.0 * 1e3);
}
