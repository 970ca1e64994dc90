//! Training: exact resume after kill -9, the NaN stop, data-layout errors, eval and
//! recalibrate-bn on a trained run. Small data (a slice of the embedded Fashion-MNIST subset)
//! and a narrow model keep these fast.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use mobilenet::data::{self, Dataset};
use mobilenet::io::tensor_io::read_tensors;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mobilenet"))
}

/// Writes an idx data set (train/t10k) with the first `n_train`/`n_val` images of the
/// embedded subset, plus classes.txt.
pub(crate) fn small_idx(dir: &Path, n_train: usize, n_val: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let splits = data::load_embedded().unwrap();
    let write = |prefix: &str, set: &Dataset, n: usize| {
        // Take every k-th image so that all classes appear.
        let step = set.len() / n;
        let pick: Vec<usize> = (0..n).map(|i| i * step).collect();
        let mut images = vec![0, 0, 8, 3];
        for d in [n as u32, 28, 28] {
            images.extend(d.to_be_bytes());
        }
        let mut labels = vec![0, 0, 8, 1];
        labels.extend((n as u32).to_be_bytes());
        for &i in &pick {
            images.extend(&set.images[i].pixels);
            labels.push(set.labels[i] as u8);
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    };
    write("train", &splits.train, n_train);
    write("t10k", &splits.val, n_val);
    std::fs::write(dir.join("classes.txt"), splits.train.classes.join("\n")).unwrap();
}

const TINY: [&str; 10] =
    ["--model", "v3_small", "--width-mult", "0.25", "--batch-size", "32", "--image-size", "32", "--ema-decay", "0.9"];

fn train_args(data: &Path, out: &Path, epochs: usize) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--data", data.to_str().unwrap(), "--output", out.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(TINY.iter().map(|s| s.to_string()));
    args.extend(["--epochs".to_string(), epochs.to_string(), "--seed".into(), "7".into()]);
    args
}

fn run_ok(args: &[String]) -> String {
    let out = bin().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "mobilenet {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).to_string() + &stderr
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn checkpoint_epochs(path: &Path) -> Option<usize> {
    let meta = mobilenet::io::weights::read_metadata(path).ok()?;
    let state: serde_json::Value = serde_json::from_str(meta.get("mobilenet.train_state")?).ok()?;
    state["progress"]["epochs_done"].as_u64().map(|v| v as usize)
}

#[test]
fn resume_after_kill_is_exact() {
    let dir = temp_dir("resume");
    let data_dir = dir.join("data");
    small_idx(&data_dir, 640, 64);
    // On burn (the CPU trainer has its own test below); then resumed on the other path.
    let train_args = |data: &Path, out: &Path, epochs: usize| {
        let mut args = train_args(data, out, epochs);
        args.extend(["--train-backend".to_string(), "burn".to_string()]);
        args
    };

    // The reference: three epochs without interruption.
    let straight = dir.join("straight");
    let log = run_ok(&train_args(&data_dir, &straight, 3));
    assert!(log.contains("test top-1:"), "{log}");

    // The same run, killed with SIGKILL during its second epoch, then resumed.
    let killed = dir.join("killed");
    let mut child =
        bin().args(train_args(&data_dir, &killed, 3)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while checkpoint_epochs(&killed.join("last.ckpt")) != Some(1) {
        assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint after epoch 1");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300)); // well into epoch 2
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(checkpoint_epochs(&killed.join("last.ckpt")), Some(1), "the kill came after epoch 2 ended");
    let metrics = std::fs::read_to_string(killed.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    let switched = dir.join("switched");
    copy_dir(&killed, &switched);

    let log = run_ok(&["train".into(), "--resume".into(), killed.to_str().unwrap().into()]);
    assert!(log.contains("resuming after epoch 1 of 3"), "{log}");

    // The same checkpoint resumed on the CPU trainer: the same run within float rounding (the
    // two paths sum in different orders; dropout masks differ, so compare with a tolerance).
    let log = run_ok(&[
        "train".into(),
        "--resume".into(),
        switched.to_str().unwrap().into(),
        "--train-backend".into(),
        "engine".into(),
    ]);
    assert!(log.contains("resuming on the CPU trainer step path"), "{log}");
    let a = mobilenet::training::metrics::read_metrics(&straight.join("metrics.csv")).unwrap();
    let b = mobilenet::training::metrics::read_metrics(&switched.join("metrics.csv")).unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3);
    assert_eq!(a[0].train_loss, b[0].train_loss, "epoch 1 is the burn run's own");
    for (ra, rb) in a.iter().zip(&b).skip(1) {
        assert!(
            (ra.train_loss - rb.train_loss).abs() <= 0.05 * ra.train_loss,
            "epoch {}: train loss {} on burn, {} resumed on the CPU trainer",
            ra.epoch + 1,
            ra.train_loss,
            rb.train_loss
        );
    }

    // Same weights, same EMA, same metrics.
    assert_same_weights(&straight, &killed);
    let rows = |p: PathBuf| -> Vec<Vec<String>> {
        std::fs::read_to_string(p).unwrap().lines().map(|l| l.split(',').take(10).map(String::from).collect()).collect()
    };
    assert_eq!(rows(straight.join("metrics.csv")), rows(killed.join("metrics.csv")));
    assert!(straight.join("curves.png").exists() && straight.join("best.ckpt").exists());
}

#[test]
fn non_finite_loss_stops_with_the_last_good_checkpoint() {
    let dir = temp_dir("nan");
    let data_dir = dir.join("data");
    small_idx(&data_dir, 128, 32);
    let out_dir = dir.join("run");
    let mut args = train_args(&data_dir, &out_dir, 3);
    // Epoch 1 at lr 0.01, then lr 1e12: the loss overflows in epoch 2.
    args.extend(
        ["--lr", "0.01", "--lr-scheduler", "step", "--lr-step-size", "1", "--lr-gamma", "1e14", "--warmup-epochs", "0"]
            .map(String::from),
    );
    let out = bin().args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("the loss became NaN or infinite at epoch 2"), "{stderr}");
    assert!(stderr.contains("last.ckpt"), "{stderr}");
    assert_eq!(checkpoint_epochs(&out_dir.join("last.ckpt")), Some(1));
    // The checkpoint is whole: it loads.
    mobilenet::training::checkpoint::load(&out_dir.join("last.ckpt"), &burn::tensor::Device::flex().autodiff())
        .unwrap();
}

#[test]
fn eval_and_recalibrate_on_a_trained_run() {
    let dir = temp_dir("eval");
    let data_dir = dir.join("data");
    small_idx(&data_dir, 320, 100);
    let run = dir.join("run");
    run_ok(&train_args(&data_dir, &run, 2));
    let weights = run.join("last.safetensors");

    // The table, with one row per class.
    let out = run_ok(&[
        "eval".into(),
        "--weights".into(),
        weights.to_str().unwrap().into(),
        "--data".into(),
        data_dir.to_str().unwrap().into(),
    ]);
    assert!(out.contains("top-1:") && out.contains("top-5:") && out.contains("Ankle boot"), "{out}");
    // JSON agrees with the last epoch's val metrics (same weights, same transform).
    let json = run_ok(&[
        "eval".into(),
        "--json".into(),
        "--weights".into(),
        weights.to_str().unwrap().into(),
        "--data".into(),
        data_dir.to_str().unwrap().into(),
    ]);
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    let rows = mobilenet::training::metrics::read_metrics(&run.join("metrics.csv")).unwrap();
    let last = rows.last().unwrap();
    assert!((v["top1"].as_f64().unwrap() - last.val_top1).abs() < 1e-9, "{v} vs {last:?}");
    assert_eq!(v["per_class"].as_array().unwrap().len(), 10);
    let per_class_total: u64 = v["per_class"].as_array().unwrap().iter().map(|c| c["total"].as_u64().unwrap()).sum();
    assert_eq!(per_class_total, 100);

    // recalibrate-bn writes weights whose running statistics changed and that still load.
    let recal = dir.join("recal.safetensors");
    run_ok(&[
        "recalibrate-bn".into(),
        "--weights".into(),
        weights.to_str().unwrap().into(),
        "--data".into(),
        data_dir.to_str().unwrap().into(),
        "--batches".into(),
        "5".into(),
        "--batch-size".into(),
        "32".into(),
        "--output".into(),
        recal.to_str().unwrap().into(),
    ]);
    let before = read_tensors(&weights).unwrap();
    let after = read_tensors(&recal).unwrap();
    let key = "features.0.1.running_mean";
    assert!(max_abs_diff(&before[key].data, &after[key].data) > 1e-6);
    assert_eq!(before["features.0.0.weight"], after["features.0.0.weight"], "weights must stay frozen");
    let out = run_ok(&[
        "eval".into(),
        "--weights".into(),
        recal.to_str().unwrap().into(),
        "--data".into(),
        data_dir.to_str().unwrap().into(),
    ]);
    assert!(out.contains("top-1:"));
}

#[test]
fn bad_data_is_a_clear_error() {
    let dir = temp_dir("baddata");
    // Unrecognised layout.
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let err = data::load(&dir.join("empty")).unwrap_err().to_string();
    assert!(err.contains("unrecognised data layout"), "{err}");
    // Missing folder.
    let err = data::load(&dir.join("nope")).unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("not found"), "{err}");
    // idx with more labels than images.
    let idx = dir.join("idx");
    small_idx(&idx, 40, 20);
    let mut labels = std::fs::read(idx.join("t10k-labels-idx1-ubyte")).unwrap();
    labels[7] = 21; // header says 21 labels
    labels.push(0);
    std::fs::write(idx.join("t10k-labels-idx1-ubyte"), labels).unwrap();
    let err = data::load(&idx).unwrap_err().to_string();
    assert!(err.contains("t10k-labels-idx1-ubyte") && err.contains("21 labels for 20 images"), "{err}");
    // Truncated idx images.
    let images = std::fs::read(idx.join("train-images-idx3-ubyte")).unwrap();
    std::fs::write(idx.join("train-images-idx3-ubyte"), &images[..images.len() - 100]).unwrap();
    let err = data::load(&idx).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("truncated"), "{err}");
    // ImageFolder with an empty class folder, then an unreadable image.
    let folder = dir.join("folder");
    for split in ["train", "val"] {
        for class in ["cat", "dog"] {
            let d = folder.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            image::RgbImage::from_pixel(40, 30, image::Rgb([200, 10, 10])).save(d.join("a.png")).unwrap();
        }
    }
    std::fs::create_dir_all(folder.join("train/empty_class")).unwrap();
    let err = data::load(&folder).unwrap_err().to_string();
    assert!(err.contains("empty_class") && err.contains("empty class folder"), "{err}");
    std::fs::remove_dir(folder.join("train/empty_class")).unwrap();
    std::fs::write(folder.join("train/dog/broken.jpg"), b"not a jpeg at all").unwrap();
    let err = data::load(&folder).unwrap_err().to_string();
    assert!(err.contains("broken.jpg"), "{err}");
    std::fs::remove_file(folder.join("train/dog/broken.jpg")).unwrap();
    // And the repaired folder loads, grey-free RGB, classes sorted.
    let splits = data::load(&folder).unwrap();
    assert_eq!(splits.train.classes, vec!["cat", "dog"]);
    assert_eq!(splits.val.len(), 2);
}

#[test]
fn fine_tune_from_torchvision_weights_with_frozen_backbone() {
    let dir = temp_dir("finetune");
    let data_dir = dir.join("data");
    small_idx(&data_dir, 96, 32);
    let run = dir.join("run");
    // tiny_v3_small.pth is a torchvision state dict with 5 classes; the data has 10.
    let init = fixture("tiny_v3_small.pth");
    let line = format!(
        "train --data {} --output {} --model v3_small --width-mult 0.25 --batch-size 32 --epochs 1 --init {} \
         --freeze-backbone --freeze-bn --lr 0.05",
        data_dir.display(),
        run.display(),
        init.display()
    );
    let args: Vec<String> = line.split_whitespace().map(String::from).collect();
    run_ok(&args);
    let after = read_tensors(&run.join("last.safetensors")).unwrap();
    assert_eq!(after["classifier.3.weight"].shape, vec![10, 1024 / 4]);
    // The backbone, BN statistics included, is exactly the pretrained one; the head moved.
    let pretrained = mobilenet::io::weights::load(
        &init,
        Some(&mobilenet::ModelConfig::new(mobilenet::Arch::V3Small).with_width_mult(0.25).with_num_classes(5)),
        &burn::tensor::Device::flex(),
    )
    .unwrap();
    let pre = mobilenet::io::params::collect(&pretrained);
    for key in [
        "features.0.0.weight",
        "features.5.block.2.fc1.weight",
        "features.3.block.0.1.running_var",
        "classifier.0.weight",
    ] {
        let p = HostTensorExt::of(&pre[key]);
        let mut a = after[key].data.clone();
        if key == "classifier.0.weight" {
            // burn keeps Linear weights as [in, out]; the file has torch's [out, in].
            let (o, i) = (after[key].shape[0], after[key].shape[1]);
            a = (0..i).flat_map(|c| (0..o).map(move |r| (r, c))).map(|(r, c)| after[key].data[r * i + c]).collect();
        }
        let classifier = key.starts_with("classifier");
        let diff = max_abs_diff(&p, &a);
        assert!(if classifier { diff > 0.0 } else { diff == 0.0 }, "{key}: diff {diff}");
    }
}

struct HostTensorExt;
impl HostTensorExt {
    fn of(flat: &mobilenet::io::params::Flat) -> Vec<f32> {
        mobilenet::io::tensor_io::HostTensor::from_tensor(flat.value.clone()).data
    }
}

#[test]
fn cifar_binary_batches_load() {
    let dir = temp_dir("cifar");
    // CIFAR-10: record = label byte + 3x32x32 CHW bytes. Pixel (c, y, x) = label*10 + c.
    let record = |label: u8| -> Vec<u8> {
        let mut r = vec![label];
        for c in 0..3u8 {
            r.extend(std::iter::repeat_n(label * 10 + c, 1024));
        }
        r
    };
    for i in 1..=5 {
        let bytes: Vec<u8> = (0..4).flat_map(|j| record(((i + j) % 10) as u8)).collect();
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), [record(3), record(9)].concat()).unwrap();
    let names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    std::fs::write(dir.join("batches.meta.txt"), names.join("\n")).unwrap();
    let splits = data::load(&dir).unwrap();
    assert_eq!(splits.format, data::DataFormat::Cifar10);
    assert_eq!((splits.train.len(), splits.val.len()), (20, 2));
    assert_eq!(splits.val.labels, vec![3, 9]);
    assert_eq!(splits.val.classes[3], "cat");
    // HWC after loading: the first pixel's three channels.
    assert_eq!(&splits.val.images[1].pixels[..3], &[90, 91, 92]);
    // A truncated batch is named.
    std::fs::write(dir.join("test_batch.bin"), &record(1)[..100]).unwrap();
    let err = data::load(&dir).unwrap_err().to_string();
    assert!(err.contains("test_batch.bin") && err.contains("CIFAR records"), "{err}");
}

#[test]
fn engine_backend_resumes_exactly_after_kill() {
    let dir = temp_dir("resume-engine");
    let data_dir = dir.join("data");
    small_idx(&data_dir, 4800, 64);
    let args = |out: &Path| -> Vec<String> {
        let mut args = train_args(&data_dir, out, 3); // with TINY's EMA
        args.extend(["--train-backend".to_string(), "engine".to_string(), "--dropout".into(), "0.2".into()]);
        args
    };

    let straight = dir.join("straight");
    let log = run_ok(&args(&straight));
    assert!(log.contains("test top-1:"), "{log}");

    let killed = dir.join("killed");
    let mut child = bin().args(args(&killed)).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while checkpoint_epochs(&killed.join("last.ckpt")) != Some(1) {
        assert!(start.elapsed() < Duration::from_secs(300), "no checkpoint after epoch 1");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100)); // into epoch 2
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(checkpoint_epochs(&killed.join("last.ckpt")), Some(1), "the kill came after epoch 2 ended");
    let log = run_ok(&["train".into(), "--resume".into(), killed.to_str().unwrap().into()]);
    assert!(log.contains("resuming after epoch 1 of 3"), "{log}");

    assert_same_weights(&straight, &killed);
}

/// The two run folders hold bit-identical weights and EMA.
fn assert_same_weights(straight: &Path, resumed: &Path) {
    for file in ["last.safetensors", "ema.safetensors"] {
        let a = read_tensors(&straight.join(file)).unwrap();
        let b = read_tensors(&resumed.join(file)).unwrap();
        assert_eq!(a.len(), b.len());
        for (key, ta) in &a {
            let diff = max_abs_diff(&ta.data, &b[key].data);
            assert!(diff == 0.0, "{file} {key}: the resumed run differs by {diff}");
        }
    }
}
