//! Hostile and careless inputs (issue 15): every one either works or is an error naming the file
//! or option (exit code 1, never a panic's 101), outputs never destroy inputs or special files,
//! and a run folder killed at any file operation resumes to exactly the uninterrupted run.
//! Everything here is tiny: generated files in a temp folder, the 5-class 0.25-width V3-Small
//! fixture, two-epoch runs of three steps.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;
use mobilenet::io::tensor_io::{read_tensors, write_tensors_with_metadata, HostTensor};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mobilenet"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails unless the command failed cleanly (exit code 1, not a panic) with all of `needles`
/// in its message.
fn assert_refused(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected a clean error (exit 1), got {:?}:\n{err}", out.status);
    for needle in needles {
        assert!(err.contains(needle), "the error does not mention {needle:?}:\n{err}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An idx data set of random 28x28 images, labels cycling through `classes`.
fn idx_data(dir: &Path, n_train: usize, n_val: usize, classes: u8) {
    std::fs::create_dir_all(dir).unwrap();
    let write = |prefix: &str, n: usize, salt: u32| {
        let mut images = vec![0, 0, 8, 3];
        for d in [n as u32, 28, 28] {
            images.extend(d.to_be_bytes());
        }
        let mut labels = vec![0, 0, 8, 1];
        labels.extend((n as u32).to_be_bytes());
        for i in 0..n as u32 {
            let label = (i % classes as u32) as u8;
            // A class-dependent pattern plus noise: something to learn.
            images.extend((0..784u32).map(|p| {
                let noise = (p.wrapping_mul(2654435761).wrapping_add(i * 97 + salt) >> 24) as u8 / 4;
                if ((p / 28) as u8).is_multiple_of(label + 2) {
                    180 + noise
                } else {
                    noise
                }
            }));
            labels.push(label);
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    };
    write("train", n_train, 1);
    write("t10k", n_val, 2);
}

/// The tiny fixture imported into our format (metadata: model, classes, preprocessing), so
/// that commands need no model flags.
fn tiny_weights(dir: &Path) -> PathBuf {
    let out = dir.join("tiny.safetensors");
    if !out.exists() {
        let from = fixture("tiny_v3_small.safetensors");
        let r = run(&[
            "import",
            "--model",
            "mobilenet_v3_small",
            "--width-mult",
            "0.25",
            "--num-classes",
            "5",
            "--crop-size",
            "32",
            "--resize-size",
            "32",
            "--from",
            s(&from),
            "--output",
            s(&out),
        ]);
        assert!(r.status.success(), "{}", stderr(&r));
    }
    out
}

fn png(path: &Path, width: u32, height: u32) {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 7) as u8, (y * 3) as u8, 90]));
    image.save_with_format(path, image::ImageFormat::Png).unwrap();
}

#[test]
fn every_image_is_classified_or_reported_and_the_rest_go_on() {
    let dir = temp_dir("bad-images");
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(fixture("photos/chelsea.png"), images.join("a_chelsea.png")).unwrap();
    // A 1x20000 strip: torchvision's resize makes it 256 x 5,120,000 (4 GB); ours computes only
    // the centre crop's window, so it is classified.
    png(&images.join("b_strip.png"), 1, 20000);
    // Beyond the decoder's side limit: reported, not allocated.
    png(&images.join("c_too_tall.png"), 1, 40000);
    // A whole JPEG, one cut in its image data, one cut before it (headers only).
    let jpeg_path = images.join("d_whole.jpg");
    image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([x as u8 * 5, y as u8 * 6, 30]))
        .save_with_format(&jpeg_path, image::ImageFormat::Jpeg)
        .unwrap();
    let jpeg = std::fs::read(&jpeg_path).unwrap();
    let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    std::fs::write(images.join("e_truncated.jpg"), &jpeg[..sos + (jpeg.len() - sos) / 2]).unwrap();
    std::fs::write(images.join("f_headers_only.jpg"), &jpeg[..sos]).unwrap();
    let weights = tiny_weights(&dir);

    let started = std::time::Instant::now();
    let out = run(&["predict", "--weights", s(&weights), "--json", "--batch-size", "3", s(&images)]);
    assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());
    assert_refused(&out, &["3 of 6 inputs could not be classified"]);
    let err = stderr(&out);
    for bad in ["c_too_tall.png", "e_truncated.jpg", "f_headers_only.jpg"] {
        assert!(err.lines().any(|l| l.contains(bad)), "{bad} not reported:\n{err}");
    }
    assert!(err.contains("truncated JPEG"), "{err}");
    let classified: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(classified.len(), 3, "{classified:?}");
    for (path, name) in classified.iter().zip(["a_chelsea.png", "b_strip.png", "d_whole.jpg"]) {
        assert!(path.ends_with(name), "{classified:?}");
    }
}

#[test]
fn training_transforms_bound_memory_on_extreme_images() {
    use mobilenet::data::augment::{AugmentConfig, TrainCrop};
    // A validation folder's 1x20000 strip: resized whole it would be 256 x 5,120,000.
    let strip = mobilenet::data::Image { width: 1, height: 20000, channels: 3, pixels: vec![128; 3 * 20000] };
    for train_crop in [TrainCrop::Pad, TrainCrop::RandomResized] {
        let augment = AugmentConfig {
            image_size: 32,
            train_crop,
            padding: 2,
            min_scale: 0.35,
            hflip: true,
            eval_resize: 256,
            mean: [0.5; 3],
            std: [0.25; 3],
        };
        augment.validate().unwrap();
        assert_eq!(augment.eval(&strip).unwrap().len(), 3 * 32 * 32);
        assert_eq!(augment.train(&strip, 1, 0, 0).unwrap().len(), 3 * 32 * 32);
    }
}

#[test]
fn outputs_never_destroy_inputs_or_special_files() {
    let dir = temp_dir("bad-outputs");
    let weights = tiny_weights(&dir);
    let before = std::fs::read(&weights).unwrap();
    let io = dir.join("io.safetensors");
    std::fs::copy(fixture("tiny_v3_small_io.safetensors"), &io).unwrap();
    let io_before = std::fs::read(&io).unwrap();

    // --output equal to an input: refused, the input intact.
    let out = run(&["infer", "--weights", s(&weights), "--input", s(&io), "--output", s(&io)]);
    assert_refused(&out, &["io.safetensors", "is the input"]);
    let out = run(&["import", "--from", s(&weights), "--output", s(&weights)]);
    assert_refused(&out, &["tiny.safetensors", "is the input"]);
    let data = dir.join("data");
    idx_data(&data, 8, 5, 5);
    let out = run(&["recalibrate-bn", "--data", s(&data), "--weights", s(&weights), "--output", s(&weights)]);
    assert_refused(&out, &["is the input"]);
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    assert_eq!(std::fs::read(&io).unwrap(), io_before);

    // A symlink is not replaced by a regular file; a folder neither.
    let target = dir.join("target.bin");
    std::fs::write(&target, b"keep me").unwrap();
    let link = dir.join("link.safetensors");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = run(&["import", "--from", s(&weights), "--output", s(&link)]);
    assert_refused(&out, &["link.safetensors", "symbolic link"]);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    let out = run(&["infer", "--weights", s(&weights), "--input", s(&io), "--output", s(&dir)]);
    assert_refused(&out, &["a folder"]);

    // `-` is standard output.
    let out = run(&["infer", "--weights", s(&weights), "--input", s(&io), "--output", "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let header = u64::from_le_bytes(out.stdout[..8].try_into().unwrap()) as usize;
    assert_eq!(out.stdout[8], b'{');
    assert!(String::from_utf8_lossy(&out.stdout[8..8 + header]).contains("logits"));
    assert!(!dir.join("-").exists());
}

#[test]
fn bad_options_are_refused_at_parse_time_not_in_a_panic() {
    let dir = temp_dir("bad-options");
    let data = dir.join("data");
    idx_data(&data, 8, 5, 5);
    let out_dir = dir.join("never");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--data", s(&data), "--output", s(&out_dir), "--width-mult", "0.25"];
        args.extend(extra);
        run(&args)
    };
    for (extra, needle) in [
        (&["--image-size", "0"][..], "--image-size"),
        (&["--image-size", "7"], "--image-size"),
        (&["--image-size", "31"], "--image-size"),
        (&["--image-size", "100000"], "--image-size"),
        (&["--eval-resize", "0"], "--eval-resize"),
        (&["--min-scale", "1.5", "--train-crop", "random-resized"], "--min-scale"),
        (&["--batch-size", "1000000"], "--batch-size"),
        (&["--batch-size", "1"], "--batch-size"),
        (&["--lr", "NaN"], "--lr"),
        (&["--label-smoothing", "1.5"], "--label-smoothing"),
    ] {
        let out = train(extra);
        assert_refused(&out, &[needle]);
        assert!(!out_dir.exists(), "{extra:?}: a refused run must not create its folder");
    }
    // A folder holding someone else's files is not a run folder to write into.
    let foreign = dir.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let out = run(&["train", "--data", s(&data), "--output", s(&foreign), "--width-mult", "0.25"]);
    assert_refused(&out, &["foreign", "not empty", "notes.txt"]);
    assert_eq!(std::fs::read_to_string(foreign.join("notes.txt")).unwrap(), "mine");

    let weights = tiny_weights(&dir);
    let chelsea = fixture("photos/chelsea.png");
    for (args, needle) in [
        (vec!["bench", "--model", "v3_small", "--seconds", "1e300"], "--seconds"),
        (vec!["bench", "--model", "v3_small", "--threads", "100000000"], "--threads"),
        (vec!["bench", "--model", "v3_small", "--batch", "1000000"], "--batch"),
        (vec!["bench-train", "--model", "v3_small", "--image-size", "100000"], "--image-size"),
        (vec!["summary", "--model", "v3_small", "--image-size", "4000000000"], "--image-size"),
        (vec!["predict", "--weights", s(&weights), "--threads", "100000000", s(&chelsea)], "--threads"),
        (vec!["predict", "--weights", s(&weights), "--batch-size", "100000000", s(&chelsea)], "--batch-size"),
        // Flags that contradict the weights' metadata are errors, not silently ignored.
        (vec!["predict", "--weights", s(&weights), "--width-mult", "0.5", s(&chelsea)], "--width-mult 0.5"),
        (vec!["predict", "--weights", s(&weights), "--num-classes", "7", s(&chelsea)], "--num-classes 7"),
        (vec!["eval", "--weights", s(&weights), "--data", s(&data), "--width-mult", "1"], "--width-mult 1"),
        // Recalibration that would do nothing.
        (
            vec!["recalibrate-bn", "--weights", s(&weights), "--data", s(&data), "--batches", "0", "--output", "o"],
            "--batches",
        ),
        (
            vec!["recalibrate-bn", "--weights", s(&weights), "--data", s(&data), "--batch-size", "1", "--output", "o"],
            "--batch-size",
        ),
        (
            vec!["eval", "--weights", s(&weights), "--data", s(&data), "--recalibrate-bn", "2", "--batch-size", "1"],
            "--batch-size",
        ),
    ] {
        assert_refused(&run(&args), &[needle]);
    }
    assert!(!Path::new("o").exists());
}

#[test]
fn bad_data_and_weight_files_are_errors_naming_them() {
    let dir = temp_dir("bad-files");
    // idx images of 0x0 pixels.
    let zero = dir.join("zero");
    std::fs::create_dir_all(&zero).unwrap();
    let mut images = vec![0, 0, 8, 3];
    for d in [4u32, 0, 0] {
        images.extend(d.to_be_bytes());
    }
    std::fs::write(zero.join("train-images-idx3-ubyte"), &images).unwrap();
    std::fs::write(zero.join("train-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 4, 0, 1, 2, 3]).unwrap();
    let out = run(&["train", "--data", s(&zero), "--output", s(&dir.join("run0"))]);
    assert_refused(&out, &["train-images-idx3-ubyte", "zero size"]);
    // An evaluation split with a class the training split lacks.
    let more = dir.join("more");
    idx_data(&more, 8, 4, 3);
    let mut labels = std::fs::read(more.join("t10k-labels-idx1-ubyte")).unwrap();
    *labels.last_mut().unwrap() = 7;
    std::fs::write(more.join("t10k-labels-idx1-ubyte"), labels).unwrap();
    let out = run(&["train", "--data", s(&more), "--output", s(&dir.join("run1"))]);
    assert_refused(&out, &["evaluation split has label 7", "only 3 classes"]);

    // Weights stored as f64 and bf16 load through burn as f32 (they used to panic there).
    let original = std::fs::read(fixture("tiny_v3_small.safetensors")).unwrap();
    let original = safetensors::SafeTensors::deserialize(&original).unwrap();
    let io = fixture("tiny_v3_small_io.safetensors");
    let reference = mobilenet::io::tensor_io::read_tensor(&io, "logits").unwrap();
    for (dtype, name) in [(safetensors::Dtype::F64, "f64"), (safetensors::Dtype::BF16, "bf16")] {
        let encoded: Vec<(String, safetensors::Dtype, Vec<u8>, Vec<usize>)> = original
            .tensors()
            .into_iter()
            .map(|(k, view)| {
                if view.dtype() != safetensors::Dtype::F32 {
                    return (k, view.dtype(), view.data().to_vec(), view.shape().to_vec());
                }
                let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                let bytes = match dtype {
                    safetensors::Dtype::F64 => values.flat_map(|v| (v as f64).to_le_bytes()).collect(),
                    _ => values.flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
                };
                (k, dtype, bytes, view.shape().to_vec())
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = encoded
            .iter()
            .map(|(k, d, b, shape)| (k.clone(), safetensors::tensor::TensorView::new(*d, shape.clone(), b).unwrap()))
            .collect();
        let path = dir.join(format!("tiny_{name}.safetensors"));
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        let logits = dir.join(format!("logits_{name}.safetensors"));
        let out = run(&[
            "infer",
            "--model",
            "v3_small",
            "--width-mult",
            "0.25",
            "--num-classes",
            "5",
            "--weights",
            s(&path),
            "--input",
            s(&io),
            "--output",
            s(&logits),
        ]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let ours = mobilenet::io::tensor_io::read_tensor(&logits, "logits").unwrap();
        let tolerance = if name == "f64" { 1e-4 } else { 0.5 };
        assert!(max_abs_diff(&ours.data, &reference.data) <= tolerance, "{name}: {:?}", ours.data);
    }

    // A checkpoint whose tensor is a 1-element storage viewed with stride 0 as 2.6e9 elements
    // (tools/fixtures/make_hostile_pth.py): refused before 10 GB are allocated.
    let out = run(&[
        "infer",
        "--model",
        "v3_small",
        "--weights",
        s(&fixture("hostile_stride0.pth")),
        "--input",
        s(&io),
        "--output",
        s(&dir.join("never.safetensors")),
    ]);
    assert_refused(&out, &["hostile_stride0.pth", "features.0.0.weight", "more than the whole file"]);

    // A NaN weight: the engine says so instead of computing finite logits.
    let weights = tiny_weights(&dir);
    let mut tensors = read_tensors(&weights).unwrap();
    tensors.get_mut("features.0.0.weight").unwrap().data[3] = f32::NAN;
    let meta = mobilenet::io::weights::read_metadata(&weights).unwrap();
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let nan = dir.join("nan.safetensors");
    write_tensors_with_metadata(&nan, &refs, Some(meta)).unwrap();
    let out = run(&["predict", "--weights", s(&nan), s(&fixture("photos/chelsea.png"))]);
    assert_refused(&out, &["features.0.0.weight", "non-finite"]);
    // A NaN input too.
    let pixels = vec![f32::NAN; 3 * 32 * 32];
    let err = mobilenet::inference::backend::Images::new(&pixels, 1, 32, 32).unwrap_err().to_string();
    assert!(err.contains("non-finite"), "{err}");
}

#[test]
fn concurrent_runs_claim_different_folders() {
    let dir = temp_dir("bad-claim");
    let runs = dir.join("runs");
    let claimed: Vec<PathBuf> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    mobilenet::training::checkpoint::claim_run_dir(None, &runs, mobilenet::Arch::V3Small).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut unique = claimed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 8, "{claimed:?}");
    // The same explicit --output: one run gets it, the others are told it is taken.
    let dir = dir.join("same");
    let claims: Vec<Result<PathBuf, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    mobilenet::training::checkpoint::claim_run_dir(Some(&dir), &runs, mobilenet::Arch::V3Small)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(claims.iter().filter(|c| c.is_ok()).count(), 1, "{claims:?}");
    assert!(claims.iter().filter_map(|c| c.as_ref().err()).all(|e| e.contains("another run")), "{claims:?}");
}

/// The files of a finished run folder that must not depend on timing: tensors of the
/// checkpoints and weights, the metrics without their time columns, and the file names.
fn run_folder_digest(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut digest = vec![names.join(" ")];
    for file in ["last.ckpt", "best.ckpt", "last.safetensors", "best.safetensors"] {
        let mut tensors: Vec<(String, HostTensor)> = read_tensors(&dir.join(file)).unwrap().into_iter().collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, t) in tensors {
            let sum: f64 = t.data.iter().map(|v| *v as f64).sum();
            let bits: u64 = t.data.iter().fold(0u64, |h, v| h.rotate_left(5) ^ v.to_bits() as u64);
            digest.push(format!("{file} {k} {:?} {sum} {bits:x}", t.shape));
        }
    }
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    digest.extend(metrics.lines().map(|l| l.split(',').take(10).collect::<Vec<_>>().join(",")));
    digest
}

#[test]
fn a_run_killed_at_any_file_operation_resumes_to_the_same_folder() {
    let dir = temp_dir("bad-crash");
    let data = dir.join("data");
    idx_data(&data, 48, 16, 5);
    let train_args = |out: &Path| -> Vec<String> {
        ["train", "--data", s(&data), "--output", s(out), "--width-mult", "0.25", "--batch-size", "16"]
            .iter()
            .chain(&["--image-size", "32", "--epochs", "2", "--seed", "3", "--lr", "0.05"])
            .map(|a| a.to_string())
            .collect()
    };
    let straight = dir.join("straight");
    let out = bin().args(train_args(&straight)).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = run_folder_digest(&straight);

    // Epoch 1 (improved, no EMA) is 11 file operations: 5 staged files, the commit
    // (last.ckpt), 5 renames into place; epoch 2 follows (at least 7 more: metrics, curves,
    // last.safetensors, the commit, 3 renames). Die before each operation k in turn, then finish:
    // resume when a checkpoint was committed, else start again (the folder holds only leftovers).
    for k in 1..=18 {
        let out_dir = dir.join(format!("crash-{k}"));
        let out = bin().args(train_args(&out_dir)).env("MOBILENET_CRASH_AT", k.to_string()).output().unwrap();
        assert!(!out.status.success(), "k={k}: the run was to be killed:\n{}", stderr(&out));
        let finish = if out_dir.join("last.ckpt").exists() {
            bin().args(["train", "--resume", s(&out_dir)]).output().unwrap()
        } else {
            bin().args(train_args(&out_dir)).output().unwrap()
        };
        assert!(finish.status.success(), "k={k}: {}", stderr(&finish));
        assert_eq!(run_folder_digest(&out_dir), expected, "k={k}: the finished folder differs");
    }

    // Leftovers of a killed writer are swept on resume.
    let stale = straight.join(".last.ckpt.tmp-4000000000");
    std::fs::write(&stale, vec![0u8; 1000]).unwrap();
    let out = bin().args(["train", "--resume", s(&straight)]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stale.exists());

    // A checkpoint given as weights is named as one.
    let out = run(&["predict", "--weights", s(&straight.join("last.ckpt")), s(&fixture("photos/chelsea.png"))]);
    assert_refused(&out, &["last.ckpt", "training checkpoint", "last.safetensors"]);

    // --resume takes its settings from the checkpoint: others are refused, not ignored.
    let out = run(&["train", "--resume", s(&straight), "--lr", "0.5", "--epochs", "9"]);
    assert_refused(&out, &["--lr", "--epochs"]);

    // A checkpoint whose state is invalid, or lacks optimizer state, is refused on resume.
    let ckpt = straight.join("last.ckpt");
    let meta = mobilenet::io::weights::read_metadata(&ckpt).unwrap();
    let tensors = read_tensors(&ckpt).unwrap();
    let broken = dir.join("broken");
    let rewrite = |meta: &std::collections::HashMap<String, String>, drop: Option<&str>| {
        let _ = std::fs::remove_dir_all(&broken);
        std::fs::create_dir_all(&broken).unwrap();
        for f in ["metrics.csv", "last.safetensors", "best.safetensors", "best.ckpt"] {
            std::fs::copy(straight.join(f), broken.join(f)).unwrap();
        }
        let refs: Vec<(&str, &HostTensor)> =
            tensors.iter().filter(|(k, _)| Some(k.as_str()) != drop).map(|(k, t)| (k.as_str(), t)).collect();
        write_tensors_with_metadata(&broken.join("last.ckpt"), &refs, Some(meta.clone())).unwrap();
    };
    let mut zero_batch = meta.clone();
    let state = zero_batch.get_mut("mobilenet.train_state").unwrap();
    *state = state.replace("\"batch_size\":16", "\"batch_size\":0");
    rewrite(&zero_batch, None);
    assert_refused(&run(&["train", "--resume", s(&broken)]), &["last.ckpt", "--batch-size"]);
    let momentum = tensors.keys().find(|k| k.starts_with("optim/") && k.ends_with("momentum_buffer")).unwrap();
    rewrite(&meta, Some(momentum.as_str()));
    assert_refused(&run(&["train", "--resume", s(&broken)]), &["last.ckpt", "optimizer state", momentum.as_str()]);

    // A corrupt metrics.csv row is an error naming the file and line, not a dropped epoch.
    rewrite(&meta, None);
    let metrics = std::fs::read_to_string(broken.join("metrics.csv")).unwrap();
    let mut lines: Vec<String> = metrics.lines().map(String::from).collect();
    lines[1] = lines[1].replacen(',', ",garbage", 1);
    std::fs::write(broken.join("metrics.csv"), lines.join("\n") + "\n").unwrap();
    let out = run(&["compare-runs", s(&broken), "--output", s(&dir.join("compare.png"))]);
    assert_refused(&out, &["metrics.csv", "line 2"]);
    assert_refused(&run(&["train", "--resume", s(&broken)]), &["metrics.csv", "line 2"]);
    let out = run(&["compare-runs", s(&straight), "--output", s(&straight.join("metrics.csv"))]);
    assert_refused(&out, &["metrics.csv", "is the input"]);
    let out = run(&["compare-runs", s(&dir.join("missing-run"))]);
    assert_refused(&out, &["missing-run", "no such run folder"]);
}
