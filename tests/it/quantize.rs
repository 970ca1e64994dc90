//! `mobilenet quantize` end to end: a model trained here is calibrated on its data set, written
//! as one int8 file, and evaluated, benchmarked and refused where it cannot run; torchvision's
//! ImageNet V2 weights keep every photo's top-1 through int8 (when the weights are fetched).

use std::path::Path;

use serde_json::Value;

use crate::common::*;
use crate::predict::{photo, pretrained, PHOTOS};

fn eval_top1(weights: &Path, data: &Path) -> f64 {
    let (ok, out, err) =
        mobilenet_line(&format!("eval --weights {} --data {} --json", weights.display(), data.display()));
    assert!(ok, "eval {}: {err}", weights.display());
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    v["top1"].as_f64().unwrap()
}

fn fails_with(line: &str, needle: &str) {
    let (ok, out, err) = mobilenet_line(line);
    assert!(!ok, "`{line}` should fail:\n{out}");
    assert!(err.contains(needle), "`{line}`: expected '{needle}' in:\n{err}");
}

#[test]
fn quantise_a_trained_model_then_evaluate_benchmark_and_refuse_it_where_it_cannot_run() {
    let dir = temp_dir("quantize");
    // The embedded Fashion-MNIST subset: the model learns enough in three short epochs.
    let data = Path::new("fashion-mnist-small");
    let run = dir.join("run");
    let (ok, _, err) = mobilenet_line(&format!(
        "train --data {} --output {} --model v3_small --width-mult 0.5 --batch-size 64 --epochs 3 --seed 1",
        data.display(),
        run.display()
    ));
    assert!(ok, "{err}");
    let f32_weights = run.join("last.safetensors");
    let q = dir.join("q.safetensors");
    let (ok, out, err) = mobilenet_line(&format!(
        "quantize --weights {} --calibration {} --calibration-images 64 --output {} --report --report-images 4",
        f32_weights.display(),
        data.display(),
        q.display()
    ));
    assert!(ok, "{err}");
    // The report: one row per map, a lowest row and the agreement with f32.
    assert!(out.contains("SQNR dB") && out.contains("features.0.0") && out.contains("squeeze-excite"), "{out}");
    assert!(out.contains("top-1 agreement with f32 on the 64 calibration images"), "{out}");
    assert!(err.contains("int8 mobilenet_v3_small") && err.contains("64 images"), "{err}");
    assert!(std::fs::metadata(&q).unwrap().len() < std::fs::metadata(&f32_weights).unwrap().len());

    // Accuracy: the same evaluation, f32 and int8.
    let (top1_f32, top1_int8) = (eval_top1(&f32_weights, data), eval_top1(&q, data));
    eprintln!("top-1 on the validation split: f32 {:.2}%, int8 {:.2}%", 100.0 * top1_f32, 100.0 * top1_int8);
    assert!(top1_f32 > 0.4, "the model learned something: {top1_f32}");
    assert!((top1_f32 - top1_int8).abs() <= 0.03, "int8 top-1 {top1_int8} vs f32 {top1_f32}");

    let (ok, out, err) = mobilenet_line(&format!("bench --weights {} --image-size 32 --seconds 0", q.display()));
    assert!(ok, "{err}");
    assert!(out.contains("engine int8"), "{out}");

    // Where an int8 file cannot go, the error says what it is and what to do.
    let (q_s, d_s, w_s) = (q.display(), data.display(), f32_weights.display());
    fails_with(&format!("eval --weights {q_s} --data {d_s} --backend burn"), "runs on the CPU engine only");
    fails_with(&format!("eval --weights {q_s} --data {d_s} --recalibrate-bn 2"), "is an int8 model");
    fails_with(
        &format!("quantize --weights {q_s} --calibration {d_s} --output {}", dir.join("qq.safetensors").display()),
        "already an int8 model",
    );
    fails_with(
        &format!(
            "train --data {d_s} --output {} --init {q_s} --model v3_small --width-mult 0.5 --epochs 1",
            dir.join("r2").display()
        ),
        "an int8 model",
    );
    // The output is never one of the inputs; the f32 file is untouched.
    let before = std::fs::read(&f32_weights).unwrap();
    let (ok, _, _) = mobilenet_line(&format!("quantize --weights {w_s} --calibration {d_s} --output {w_s}"));
    assert!(!ok);
    assert_eq!(std::fs::read(&f32_weights).unwrap(), before);
    // A damaged int8 file: an error naming it.
    let bytes = std::fs::read(&q).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    fails_with(&format!("eval --weights {} --data {d_s}", cut.display()), "cut.safetensors");
    let _ = std::fs::remove_dir_all(&dir);
}

/// torchvision's ImageNet MobileNetV2, calibrated on the repo's three photos (percentile and
/// min-max): int8 gives each photo fp32's top-1, with the top class's probability within 0.15.
#[test]
fn pretrained_v2_int8_keeps_every_photos_top1() {
    let Some(weights_path) = pretrained() else { return };
    let dir = temp_dir("quantize-v2");
    let f32_file = dir.join("v2.safetensors");
    let (ok, _, err) = mobilenet_line(&format!(
        "import --model mobilenet_v2 --from {} --output {}",
        weights_path.display(),
        f32_file.display()
    ));
    assert!(ok, "{err}");
    let photos: Vec<String> = PHOTOS.iter().map(|p| photo(p).display().to_string()).collect();
    let top = |weights: &Path| -> Vec<(u64, f64)> {
        let mut args = vec!["predict", "--json", "--top-k", "1", "--weights"];
        let w = weights.display().to_string();
        args.push(&w);
        args.extend(photos.iter().map(|s| s.as_str()));
        let (ok, out, err) = mobilenet(&args);
        assert!(ok, "{err}");
        out.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["top"][0]["index"].as_u64().unwrap(), v["top"][0]["prob"].as_f64().unwrap())
            })
            .collect()
    };
    let want = top(&f32_file);
    for method in ["minmax", "percentile"] {
        let q = dir.join(format!("v2-{method}.safetensors"));
        let (ok, _, err) = mobilenet(&[
            "quantize",
            "--weights",
            f32_file.to_str().unwrap(),
            "--calibration",
            photo("chelsea.png").parent().unwrap().to_str().unwrap(),
            "--method",
            method,
            "--output",
            q.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let got = top(&q);
        for ((g, w), name) in got.iter().zip(&want).zip(PHOTOS) {
            assert_eq!(g.0, w.0, "{method}: {name}: int8 class {} vs f32 {}", g.0, w.0);
            assert!((g.1 - w.1).abs() <= 0.15, "{method}: {name}: top probability {} vs {}", g.1, w.1);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
