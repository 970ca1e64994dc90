//! The command line: summary output, infer round trip, and clear errors for bad input.

use crate::common::*;
use mobilenet::io::tensor_io::{read_tensor, write_tensors, HostTensor};

#[test]
fn summary_prints_totals() {
    let (ok, out, err) = mobilenet(&["summary", "--model", "mobilenet_v2"]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "params: 3504872"), "{out}");
    assert!(out.lines().any(|l| l == "MACs: 300774272"), "{out}");
    let (ok, out, _) =
        mobilenet(&["summary", "--model", "v1", "--width-mult", "0.5", "--image-size", "160", "--num-classes", "10"]);
    assert!(ok);
    assert!(out.contains("[-1, 512, 5, 5]"), "{out}");
}

#[test]
fn unknown_model_is_a_clear_error() {
    let (ok, _, err) = mobilenet(&["summary", "--model", "resnet50"]);
    assert!(!ok);
    assert!(err.contains("unknown model 'resnet50'"), "{err}");
}

#[test]
fn infer_matches_torchvision_on_real_pth() {
    let dir = temp_dir("cli-infer");
    let io = fixture("tiny_v3_small_io.safetensors");
    let out = dir.join("logits.safetensors");
    for weights in ["tiny_v3_small.pth", "tiny_v3_small_legacy.pth", "tiny_v3_small.safetensors"] {
        let w = fixture(weights);
        let (ok, _, err) =
            mobilenet_line(&format!(
            "infer --model mobilenet_v3_small --width-mult 0.25 --num-classes 5 --weights {} --input {} --output {}",
            w.display(), io.display(), out.display()
        ));
        assert!(ok, "{weights}: {err}");
        let ours = read_tensor(&out, "logits").unwrap();
        let theirs = read_tensor(&io, "logits").unwrap();
        assert_eq!(ours.shape, vec![2, 5]);
        let diff = max_abs_diff(&ours.data, &theirs.data);
        assert!(diff <= 1e-4, "{weights}: max diff {diff}");
    }
}

#[test]
fn infer_rejects_bad_input() {
    let dir = temp_dir("cli-bad");
    let w = fixture("tiny_v3_small.pth");
    let out = dir.join("o.safetensors");
    let run = |input: &std::path::Path, extra: &[&str]| {
        let mut args =
            vec!["infer", "--model", "mobilenet_v3_small", "--width-mult", "0.25", "--num-classes", "5", "--weights"];
        let wpath = extra.first().copied().unwrap_or(w.to_str().unwrap());
        args.push(wpath);
        args.extend(["--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]);
        mobilenet(&args)
    };
    // Missing input file.
    let (ok, _, err) = run(&dir.join("nope.safetensors"), &[]);
    assert!(!ok && err.contains("nope.safetensors") && err.contains("not found"), "{err}");
    // Wrong rank.
    let p = dir.join("rank3.safetensors");
    write_tensors(&p, &[("input", &HostTensor { shape: vec![3, 64, 64], data: vec![0.0; 3 * 64 * 64] })]).unwrap();
    let (ok, _, err) = run(&p, &[]);
    assert!(!ok && err.contains("wrong input shape [3, 64, 64]"), "{err}");
    // Wrong channel count.
    let p = dir.join("c1.safetensors");
    write_tensors(&p, &[("input", &HostTensor { shape: vec![1, 1, 64, 64], data: vec![0.0; 64 * 64] })]).unwrap();
    let (ok, _, err) = run(&p, &[]);
    assert!(!ok && err.contains("wrong input shape [1, 1, 64, 64]"), "{err}");
    // Wrong tensor name.
    let p = dir.join("named.safetensors");
    write_tensors(&p, &[("x", &HostTensor { shape: vec![1, 3, 64, 64], data: vec![0.0; 3 * 64 * 64] })]).unwrap();
    let (ok, _, err) = run(&p, &[]);
    assert!(!ok && err.contains("no tensor named 'input'"), "{err}");
    // Wrong dtype: a file with an f64 tensor.
    let p = dir.join("f64.safetensors");
    let data: Vec<u8> = vec![0u8; 8 * 3 * 32 * 32];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![1, 3, 32, 32], &data).unwrap();
    std::fs::write(&p, safetensors::serialize([("input", view)], None).unwrap()).unwrap();
    let (ok, _, err) = run(&p, &[]);
    assert!(!ok && err.contains("dtype F64"), "{err}");
    // Weights for another width: shape mismatch names the key and both shapes.
    let io = fixture("tiny_v3_small_io.safetensors");
    let (ok, _, err) = mobilenet_line(&format!(
        "infer --model mobilenet_v3_small --num-classes 5 --weights {} --input {} --output {}",
        w.display(),
        io.display(),
        out.display()
    ));
    assert!(
        !ok && err
            .contains("features.0.0.weight: shape mismatch: the model has [16, 3, 3, 3], the file has [8, 3, 3, 3]"),
        "{err}"
    );
    // A truncated weight file.
    let truncated = dir.join("trunc.pth");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, err) = run(&io, &[truncated.to_str().unwrap()]);
    assert!(!ok && err.contains("trunc.pth"), "{err}");
    // A file that is not weights at all.
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, b"hello world, not weights").unwrap();
    let (ok, _, err) = run(&io, &[junk.to_str().unwrap()]);
    assert!(!ok && err.contains("junk.bin") && err.contains("not a weight file"), "{err}");
}

#[test]
fn bench_train_prints_the_figures_scripts_read() {
    for backend in ["engine", "burn"] {
        let (ok, out, err) = mobilenet_line(&format!(
            "bench-train --model v3_small --width-mult 0.25 --batch 4 --image-size 32 --threads 1 --seconds 0 --backend {backend}"
        ));
        assert!(ok, "{backend}: {err}");
        let last: Vec<&str> = out.lines().rev().take(4).collect();
        assert!(last.iter().any(|l| l.starts_with("median_ms: ")), "{backend}: {out}");
        assert!(last.iter().any(|l| l.starts_with("images_per_s: ")), "{backend}: {out}");
    }
    let (ok, _, err) = mobilenet_line("bench-train --batch 4");
    assert!(!ok && err.contains("--model"), "{err}");
    let (ok, _, err) = mobilenet_line("bench-train --model v2 --batch 1");
    assert!(!ok && err.contains("--batch must be at least 2"), "{err}");
}
