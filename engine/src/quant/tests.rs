//! The whole int8 network against its definition: the fake-quantised f32 reference (the f32
//! network of the dequantised weights, each map rounded to its int8 grid as it is written), on
//! all four architectures and every int8 ISA this CPU has; the file format's round trip.

use crate::arch::{Arch, ModelSpec};
use crate::network::folded::FoldedModel;
use crate::network::{ObservedMap, TensorSource, Workspace};
use crate::simd::Isa;

use super::calibrate::{Calibrator, RangeMethod};
use super::network::{QuantModel, QuantNetwork, WeightBits};
use super::Int8Isa;

fn images(seed: u64, n: usize, h: usize, w: usize) -> Vec<Vec<f32>> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            (0..3 * h * w)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
                })
                .collect()
        })
        .collect()
}

fn quantised(arch: Arch, size: usize, method: RangeMethod, bits: WeightBits) -> (FoldedModel, QuantModel) {
    let spec = ModelSpec::new(arch).with_num_classes(10);
    let folded = FoldedModel::fold(&spec, &mut TensorSource::random(7)).unwrap();
    let mut cal = Calibrator::new(&folded, method, Isa::detect());
    for image in images(1, 4, size, size) {
        cal.observe(&image, size, size);
    }
    let q = QuantModel::quantize(folded.clone(), cal.finish(), bits);
    (folded, q)
}

/// The fake-quantised reference: its logits and every map as written, in order (the image,
/// then each layer's output).
fn reference(q: &QuantModel, image: &[f32], size: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
    let net = q.reference_network(Isa::detect());
    let mut ws = Workspace::with_parts(&net, size, size, 1);
    let mut events: Vec<Vec<f32>> = Vec::new();
    let logits = net.run_observed(&mut ws, image, &mut |mut m: ObservedMap| {
        let params = q.activations[m.map];
        let mut v = Vec::new();
        m.for_each(|x| {
            *x = params.dequantize(params.quantize(*x));
            v.push(*x);
        });
        events.push(v);
    });
    (logits, events)
}

/// Each layer on the reference's input writes the reference's output: every value on the same
/// grid point, or one step off where the f32 sum lands within rounding of a half step (a tie the
/// integer path breaks the other way); never further. Free-running, the int8 network's logits
/// stay within 2% of the logits' range of the reference's: the rare one-step differences do
/// not grow.
#[test]
fn int8_network_matches_the_fake_quantised_reference() {
    let size = 64;
    for arch in [Arch::V1, Arch::V2, Arch::V3Large, Arch::V3Small] {
        for bits in [WeightBits::Eight, WeightBits::Seven] {
            let (_, q) = quantised(arch, size, RangeMethod::MinMax, bits);
            let mut per_isa: Vec<Vec<f32>> = Vec::new();
            for isa in Int8Isa::all_available() {
                let net = QuantNetwork::new(&q, isa, Isa::detect());
                let mut ws = net.workspace(size, size);
                for image in images(2, 2, size, size) {
                    let (want_logits, events) = reference(&q, &image, size);
                    let got = net.run_teacher_forced(&mut ws, &image, &events);
                    let (mut off, mut total) = (0usize, 0usize);
                    for (i, ((got, step), want)) in got.iter().zip(&events[1..]).enumerate() {
                        assert_eq!(got.len(), want.len(), "{arch:?} layer {i}");
                        for (j, (a, b)) in got.iter().zip(want).enumerate() {
                            let d = (a - b).abs();
                            assert!(
                                d <= 1.01 * step,
                                "{arch:?} {bits:?} {isa} layer {i} value {j}: {a} vs {b}, step {step}"
                            );
                            off += (d > 0.5 * step) as usize;
                            total += 1;
                        }
                    }
                    assert!(off * 1000 <= total, "{arch:?} {bits:?} {isa}: {off} of {total} values a step off");
                    let mut pooled = vec![0.0; net.pooled_stride()];
                    net.features_into(&mut ws, &image, &mut pooled);
                    let mut logits = vec![0.0; 10];
                    net.head(&pooled, 1, &mut logits);
                    let range = want_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    for (a, b) in logits.iter().zip(&want_logits) {
                        assert!(
                            (a - b).abs() <= 0.02 * range,
                            "{arch:?} {bits:?} {isa}: logits {logits:?} vs {want_logits:?}"
                        );
                    }
                    eprintln!("{arch:?} {bits:?} {isa}: teacher-forced {off}/{total} values a step off");
                    per_isa.push(logits);
                }
            }
            // Integer kernels: every ISA gives the same bits.
            let n = per_isa.len() / Int8Isa::all_available().len();
            for (i, l) in per_isa.iter().enumerate() {
                assert_eq!(l, &per_isa[i % n], "{arch:?} {bits:?}: ISA {} differs", i / n);
            }
        }
    }
}

/// A quantised file reads back as the same model (the same int8 weights, scales, zero points,
/// biases, f32 tensors and config), and the engine runs it with the same logits.
#[test]
fn the_file_format_round_trips() {
    use super::format::{from_bytes, to_bytes, CalibrationInfo};
    let size = 48;
    let (_, q) = quantised(Arch::V3Small, size, RangeMethod::Percentile(99.9), WeightBits::Eight);
    let mut extra = std::collections::HashMap::new();
    extra.insert("mobilenet.preprocess".to_string(), "{\"resize\":256}".to_string());
    let info = CalibrationInfo { method: "percentile 99.9".into(), images: 4, source: "random".into() };
    let bytes = to_bytes(&q, 8, info.clone(), &extra).unwrap();
    let path = std::path::Path::new("model-int8.safetensors");
    let (back, meta, metadata) = from_bytes(path, &bytes).unwrap();
    assert_eq!(meta.calibration, info);
    assert_eq!(metadata.get("mobilenet.preprocess"), extra.get("mobilenet.preprocess"));
    assert_eq!(back.conv_weights, q.conv_weights);
    assert_eq!(back.activations, q.activations);
    assert_eq!(back.folded.maps, q.folded.maps);
    for (a, b) in back.folded.convs().zip(q.folded.convs()) {
        assert_eq!((&a.key, &a.weights, &a.bias), (&b.key, &b.weights, &b.bias));
    }
    let run = |m: &QuantModel| {
        let net = QuantNetwork::new(m, Int8Isa::detect(), Isa::detect());
        let mut ws = net.workspace(size, size);
        let mut pooled = vec![0.0; net.pooled_stride()];
        net.features_into(&mut ws, &images(3, 1, size, size)[0], &mut pooled);
        let mut logits = vec![0.0; 10];
        net.head(&pooled, 1, &mut logits);
        logits
    };
    assert_eq!(run(&back), run(&q));
    // What a damaged file gets: a clear error naming the file and the problem.
    let err = |b: &[u8]| from_bytes(path, b).unwrap_err().to_string();
    assert!(err(&bytes[..bytes.len() / 2]).contains("model-int8.safetensors"));
    let mut bad_scale = q.clone();
    bad_scale.activations[3].scale = 0.0;
    let e = err(&to_bytes(&bad_scale, 8, info.clone(), &extra).unwrap());
    assert!(e.contains("map 3") && e.contains("not finite and positive"), "{e}");
    let e = err(&to_bytes(&q, 6, info.clone(), &extra).unwrap());
    assert!(e.contains("outside the declared weight range"), "{e}");
    let mut fewer = q.clone();
    fewer.activations.pop();
    let e = err(&to_bytes(&fewer, 8, info, &extra).unwrap());
    assert!(e.contains("map parameter sets"), "{e}");
}
