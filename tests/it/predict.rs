//! Pretrained ImageNet classification end to end: our preprocessing against torchvision's eval
//! transform on real photos, torchvision's MobileNetV2 weights giving torchvision's top-5, and
//! the `predict`/`import` commands. Expected values come from tools/fixtures/make_predict_fixtures.py.

use std::path::{Path, PathBuf};

use crate::common::*;
use mobilenet::data::labels::Labels;
use mobilenet::data::preprocess::{self, Preprocess};
use mobilenet::inference::predict::{Classifier, ImageResult};
use mobilenet::io::tensor_io::read_tensors;
use mobilenet::io::weights;
use mobilenet::{Arch, ModelConfig};
use serde_json::Value;

pub(crate) const PHOTOS: [&str; 3] = ["chelsea.png", "coffee.png", "grace_hopper.jpg"];
const PRETRAINED: &str = "weights/mobilenet_v2-b0353104.pth";

pub(crate) fn photo(name: &str) -> PathBuf {
    fixture("photos").join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("predict_expected.json")).unwrap()).unwrap()
}

/// torchvision's real MobileNetV2 weights, or `None` (with the reason on stderr) when
/// tools/setup/fetch_weights.sh has not been run. CI runs it, so there these tests really run.
pub(crate) fn pretrained() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(PRETRAINED);
    if path.is_file() {
        return Some(path);
    }
    eprintln!(
        "SKIPPED: {PRETRAINED} is absent; run `bash tools/setup/fetch_weights.sh` to test against the real ImageNet weights"
    );
    None
}

#[test]
fn preprocessing_matches_torchvision_on_real_photos() {
    let reference = read_tensors(&fixture("predict.safetensors")).unwrap();
    let p = Preprocess::default();
    let plane = 224 * 224;
    for name in PHOTOS {
        let ours = p.load(&photo(name)).unwrap();
        let stem = name.split('.').next().unwrap();
        let theirs = &reference[stem];
        assert_eq!(theirs.shape, vec![3, 224, 224]);
        assert_eq!(ours.len(), theirs.data.len());
        // Differences in 8-bit levels (1 level = 1/255 on the [0, 1] scale before normalising).
        let levels: Vec<f64> = ours
            .iter()
            .zip(&theirs.data)
            .enumerate()
            .map(|(i, (a, b))| ((a - b).abs() * p.std[i / plane] * 255.0) as f64)
            .collect();
        let max = levels.iter().copied().fold(0.0, f64::max);
        let mean = levels.iter().sum::<f64>() / levels.len() as f64;
        let differing = levels.iter().filter(|&&l| l > 0.5).count() as f64 / levels.len() as f64;
        eprintln!("{name}: max diff {max:.3}/255, mean {mean:.4}/255, {:.2}% of values differ", differing * 100.0);
        assert!(max <= 2.0 + 1e-3, "{name}: max diff {max}/255 > 2/255");
        // PNG decodes identically, so only the resize's rounding differs (its 15-bit
        // coefficients against Pillow's 22-bit ones); JPEG adds zune-jpeg's decode against
        // libjpeg-turbo's (chroma upsampling and IDCT rounding).
        let mean_bound = if name.ends_with(".png") { 0.01 } else { 0.25 };
        assert!(mean <= mean_bound, "{name}: mean diff {mean}/255 > {mean_bound}/255");
    }
}

#[test]
fn resize_and_crop_geometry_match_torchvision() {
    for case in expected()["geometry"].as_array().unwrap() {
        let get = |k: &str| case[k].as_i64().unwrap();
        let p =
            Preprocess { resize_size: get("resize") as u32, crop_size: get("crop") as u32, ..Preprocess::default() };
        let (w, h) = p.resized_size(get("width") as u32, get("height") as u32);
        assert_eq!((w as i64, h as i64), (get("resized_width"), get("resized_height")), "{case}");
        let window = p.crop_window(w, h);
        assert_eq!((window.top, window.left), (get("top"), get("left")), "{case}");
    }
}

#[test]
fn crops_larger_than_the_image_are_zero_padded() {
    let dir = temp_dir("predict-pad");
    let path = dir.join("white.png");
    image::RgbImage::from_pixel(50, 40, image::Rgb([255, 255, 255])).save(&path).unwrap();
    let p = Preprocess { resize_size: 200, crop_size: 224, ..Preprocess::default() };
    let x = p.load(&path).unwrap();
    // Resized to 250x200: rows 0..12 and 212..224 are padding, columns 13..237 of the image.
    for c in 0..3 {
        let at = |y: usize, x_: usize| x[c * 224 * 224 + y * 224 + x_];
        let black = (0.0 - p.mean[c]) / p.std[c];
        let white = (1.0 - p.mean[c]) / p.std[c];
        assert!((at(0, 100) - black).abs() < 1e-6 && (at(223, 100) - black).abs() < 1e-6);
        assert!((at(11, 0) - black).abs() < 1e-6 && (at(212, 223) - black).abs() < 1e-6);
        assert!((at(12, 0) - white).abs() < 1e-5 && (at(211, 223) - white).abs() < 1e-5);
    }
}

#[test]
fn grey_and_rgba_images_become_rgb_like_pil_convert() {
    let dir = temp_dir("predict-modes");
    let grey = image::GrayImage::from_fn(64, 48, |x, y| image::Luma([(x * 3 + y) as u8]));
    grey.save(dir.join("grey.png")).unwrap();
    let rgba = image::RgbaImage::from_fn(64, 48, |x, y| image::Rgba([x as u8, y as u8, 7, (x * 4) as u8]));
    rgba.save(dir.join("rgba.png")).unwrap();
    // Grey is replicated into three equal channels.
    let rgb = preprocess::load_rgb(&dir.join("grey.png")).unwrap();
    assert!(rgb.enumerate_pixels().all(|(x, y, p)| p.0 == [grey.get_pixel(x, y).0[0]; 3]));
    // Alpha is dropped, not composited (PIL's convert("RGB")), even where it is 0.
    let rgb = preprocess::load_rgb(&dir.join("rgba.png")).unwrap();
    assert!(rgb.enumerate_pixels().all(|(x, y, p)| p.0 == [x as u8, y as u8, 7]));
}

#[test]
fn pretrained_mobilenet_v2_gives_torchvisions_top5() {
    let Some(weights_path) = pretrained() else { return };
    let device = burn::tensor::Device::flex();
    let model = weights::load(&weights_path, Some(&ModelConfig::new(Arch::V2)), &device).unwrap();
    let classifier = Classifier::new(model, Preprocess::default(), Some(Labels::imagenet()), device).unwrap();
    let expected = expected();
    for name in PHOTOS {
        let ours = classifier.classify_file(&photo(name), 5).unwrap();
        let theirs = expected["photos"][name]["top5"].as_array().unwrap();
        let indices: Vec<u64> = theirs.iter().map(|t| t["index"].as_u64().unwrap()).collect();
        assert_eq!(ours.top.iter().map(|p| p.index as u64).collect::<Vec<_>>(), indices, "{name}: top-5 order");
        let max_diff =
            ours.top.iter().zip(theirs).map(|(a, b)| (a.prob - b["prob"].as_f64().unwrap()).abs()).fold(0.0, f64::max);
        eprintln!(
            "{name}: top-5 {:?}, max prob diff vs torchvision {max_diff:.2e}",
            ours.top.iter().map(|p| format!("{} {:.4}", p.label.as_deref().unwrap(), p.prob)).collect::<Vec<_>>()
        );
        // Same decoded pixels (PNG): the model and the resize agree to ~1e-4. A JPEG decodes
        // slightly differently in zune-jpeg than in PIL's libjpeg-turbo (mean 0.16/255 per pixel,
        // see the test above), and this model moves probabilities by ~5e-3 for that much noise.
        let bound = if name.ends_with(".png") { 1e-3 } else { 1e-2 };
        assert!(max_diff <= bound, "{name}: probabilities differ from torchvision's by {max_diff} > {bound}");
        for (p, t) in ours.top.iter().zip(theirs) {
            assert_eq!(p.label.as_deref(), t["label"].as_str(), "{name}: label of class {}", p.index);
        }
    }
    let top1 = |name: &str| classifier.classify_file(&photo(name), 5).unwrap();
    assert_eq!(top1("chelsea.png").top[0].label.as_deref(), Some("Egyptian cat"));
    let grace: ImageResult = top1("grace_hopper.jpg");
    assert!(grace.top.iter().any(|p| p.label.as_deref() == Some("military uniform")), "{grace:?}");
}

#[test]
fn pretrained_import_then_predict_with_no_flags() {
    let Some(weights_path) = pretrained() else { return };
    let dir = temp_dir("predict-import");
    let ours = dir.join("mobilenet_v2_imagenet.safetensors");
    let (ok, _, err) = mobilenet_line(&format!(
        "import --model mobilenet_v2 --from {} --output {}",
        weights_path.display(),
        ours.display()
    ));
    assert!(ok, "{err}");
    assert_eq!(Preprocess::from_metadata(&ours).unwrap(), Some(Preprocess::default()));
    assert_eq!(weights::read_config(&ours).unwrap(), Some(ModelConfig::new(Arch::V2)));
    // The .pth with --model and our file without it give the same answer, through the CLI.
    let chelsea = photo("chelsea.png");
    let run = |args: &[&str]| {
        let (ok, out, err) = mobilenet(args);
        assert!(ok, "{err}");
        let line: Value = serde_json::from_str(out.trim()).unwrap();
        line["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["index"].as_u64().unwrap(), t["prob"].as_f64().unwrap()))
            .collect::<Vec<_>>()
    };
    let from_ours = run(&["predict", "--weights", ours.to_str().unwrap(), "--json", chelsea.to_str().unwrap()]);
    let from_pth = run(&[
        "predict",
        "--model",
        "v2",
        "--weights",
        weights_path.to_str().unwrap(),
        "--json",
        chelsea.to_str().unwrap(),
    ]);
    assert_eq!(from_ours.len(), 5);
    assert_eq!(from_ours.iter().map(|t| t.0).collect::<Vec<_>>(), from_pth.iter().map(|t| t.0).collect::<Vec<_>>());
    for (a, b) in from_ours.iter().zip(&from_pth) {
        assert!((a.1 - b.1).abs() < 1e-6, "{from_ours:?} vs {from_pth:?}");
    }
    assert_eq!(from_ours[0].0, 285, "chelsea is class 285, Egyptian cat");
}

// The CLI tests below use the tiny 5-class V3-Small checkpoint (torchvision keys, random weights, no metadata): they test the
// command's behaviour, not the classes.

fn tiny_args(weights: &str) -> Vec<&str> {
    vec!["predict", "--model", "mobilenet_v3_small", "--width-mult", "0.25", "--num-classes", "5", "--weights", weights]
}

#[test]
fn predict_reports_bad_images_by_path_and_continues() {
    let dir = temp_dir("predict-corrupt");
    std::fs::copy(photo("chelsea.png"), dir.join("a_chelsea.png")).unwrap();
    std::fs::write(dir.join("b_broken.jpg"), b"this is not a JPEG at all").unwrap();
    let png = std::fs::read(photo("coffee.png")).unwrap();
    std::fs::write(dir.join("c_truncated.png"), &png[..png.len() / 3]).unwrap();
    std::fs::copy(photo("grace_hopper.jpg"), dir.join("d_grace.JPG")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image, and not an image extension").unwrap();
    let w = fixture("tiny_v3_small.safetensors");
    let missing = dir.join("missing.png");
    let mut args = tiny_args(w.to_str().unwrap());
    args.extend(["--json", "--batch-size", "2", dir.to_str().unwrap(), missing.to_str().unwrap()]);
    let (ok, out, err) = mobilenet(&args);
    assert!(!ok, "a failed image must make the exit code non-zero");
    for bad in ["b_broken.jpg", "c_truncated.png", "missing.png"] {
        assert!(err.lines().any(|l| l.contains(bad)), "{bad} not reported: {err}");
    }
    assert!(err.contains("3 of 5 inputs could not be classified"), "{err}");
    assert!(!err.contains("notes.txt") && !out.contains("notes.txt"), "non-images in a directory are skipped");
    let paths: Vec<String> =
        out.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(paths.len(), 2, "the good images are still classified: {out}");
    assert!(paths[0].ends_with("a_chelsea.png") && paths[1].ends_with("d_grace.JPG"), "{paths:?}");
}

#[test]
fn predict_json_lines_parse_and_hold_the_top_k() {
    let dir = temp_dir("predict-json");
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, "zero\none\ntwo\nthree\nfour\n").unwrap();
    let w = fixture("tiny_v3_small.safetensors");
    let (chelsea, coffee) = (photo("chelsea.png"), photo("coffee.png"));
    let mut args = tiny_args(w.to_str().unwrap());
    args.extend(["--json", "--top-k", "5", "--labels", labels.to_str().unwrap()]);
    args.extend([chelsea.to_str().unwrap(), coffee.to_str().unwrap()]);
    let (ok, out, err) = mobilenet(&args);
    assert!(ok, "{err}");
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect();
    assert_eq!(lines.len(), 2);
    let names = ["zero", "one", "two", "three", "four"];
    for (line, path) in lines.iter().zip([&chelsea, &coffee]) {
        assert_eq!(line["path"].as_str().unwrap(), path.to_str().unwrap());
        let top = line["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        let probs: Vec<f64> = top.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "most probable first: {probs:?}");
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5, "all 5 classes: softmax sums to 1: {probs:?}");
        for t in top {
            let i = t["index"].as_u64().unwrap() as usize;
            assert_eq!(t["label"].as_str().unwrap(), names[i]);
        }
    }
    // The human-readable form prints the same classes.
    let mut args = tiny_args(w.to_str().unwrap());
    args.extend(["--top-k", "2", "--labels", labels.to_str().unwrap(), chelsea.to_str().unwrap()]);
    let (ok, text, err) = mobilenet(&args);
    assert!(ok, "{err}");
    let first = &lines[0]["top"][0];
    let expected = format!("{} ({})", first["label"].as_str().unwrap(), first["index"]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().nth(1).unwrap().ends_with(&expected), "{text}");
}

#[test]
fn label_file_of_the_wrong_length_is_a_clear_error() {
    let dir = temp_dir("predict-labels");
    let labels = dir.join("three.txt");
    std::fs::write(&labels, "cat\ndog\nbird\n").unwrap();
    let w = fixture("tiny_v3_small.safetensors");
    let chelsea = photo("chelsea.png");
    let mut args = tiny_args(w.to_str().unwrap());
    args.extend(["--labels", labels.to_str().unwrap(), chelsea.to_str().unwrap()]);
    let (ok, out, err) = mobilenet(&args);
    assert!(!ok && out.is_empty());
    assert!(err.contains("three.txt") && err.contains("3 labels") && err.contains("5 classes"), "{err}");
    // An empty line inside the file would shift every later class: an error too.
    std::fs::write(&labels, "a\nb\n\nc\nd\ne\n").unwrap();
    let (ok, _, err) = mobilenet(&args);
    assert!(!ok && err.contains("three.txt") && err.contains("line 3"), "{err}");
}

#[test]
fn import_records_preprocessing_that_predict_uses_and_flags_override() {
    let dir = temp_dir("predict-meta");
    let w = fixture("tiny_v3_small.safetensors");
    let ours = dir.join("tiny.safetensors");
    let (ok, _, err) = mobilenet_line(&format!(
        "import --model v3_small --width-mult 0.25 --num-classes 5 --from {} --output {} --resize-size 160 --crop-size 128 --mean 0.5,0.5,0.5 --std 0.25,0.25,0.25",
        w.display(), ours.display()
    ));
    assert!(ok, "{err}");
    let stored = Preprocess::from_metadata(&ours).unwrap().unwrap();
    assert_eq!(stored, Preprocess { resize_size: 160, crop_size: 128, mean: [0.5; 3], std: [0.25; 3] });
    // The imported weights are the checkpoint's: same logits as loading the .pth directly.
    let device = burn::tensor::Device::flex();
    let config = ModelConfig::new(Arch::V3Small).with_width_mult(0.25).with_num_classes(5);
    let a = weights::load(&w, Some(&config), &device).unwrap().eval_mode();
    let b = weights::load(&ours, None, &device).unwrap().eval_mode();
    let x = input("predict-meta", &[1, 3, 64, 64], &device);
    let (la, lb): (Vec<f32>, Vec<f32>) = (to_vec(a.forward(x.clone())), to_vec(b.forward(x)));
    assert!(max_abs_diff(&la, &lb) == 0.0);
    // predict: no --model needed, the stored preprocessing is the default, a flag overrides it.
    let chelsea = photo("chelsea.png");
    let (ok, _, err) =
        mobilenet(&["predict", "--weights", ours.to_str().unwrap(), "--verbose", chelsea.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("resize 160, crop 128, mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25]"), "{err}");
    assert!(err.contains("decode") && err.contains("forward"), "--verbose reports timings: {err}");
    let (ok, _, err) =
        mobilenet_line(&format!("predict --weights {} --verbose --crop-size 96 {}", ours.display(), chelsea.display()));
    assert!(ok, "{err}");
    assert!(err.contains("resize 160, crop 96,"), "{err}");
    // Nonsense preprocessing is refused before any image is read.
    let (ok, _, err) =
        mobilenet(&["predict", "--weights", ours.to_str().unwrap(), "--std", "0.2,0,0.2", chelsea.to_str().unwrap()]);
    assert!(!ok && err.contains("std must be positive"), "{err}");
    // torchvision-keyed weights carry no model description: without --model, a clear error.
    let (ok, _, err) = mobilenet(&["predict", "--weights", w.to_str().unwrap(), chelsea.to_str().unwrap()]);
    assert!(!ok && err.contains("pass --model"), "{err}");
}

fn to_vec(t: burn::Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}
