//! A bounded mutational fuzzer for every parser of user files we own: the `.pth` readers (zip
//! and legacy) and the safetensors weights/metadata reader, training checkpoints, idx and CIFAR
//! data, label files, `metrics.csv`, and the image decoder. Valid files are mutated (bit flips,
//! random bytes, truncation, duplicated chunks, extreme 4-byte fields) and each parser must
//! return `Ok` or `Err`, never panic. Each target runs for `MOBILENET_FUZZ_SECONDS` seconds
//! (default 0.5 in CI; docs/RELIABILITY.md records longer runs); a panicking input is kept in the temp
//! folder and named in the failure.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use burn::tensor::Device;
use mobilenet::{Arch, ModelConfig};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random mutation of `input`.
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = out.len().max(1);
        match rng.below(6) {
            0 => {
                let i = rng.below(len);
                if let Some(b) = out.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(out.len());
                for b in out.get_mut(start..end).unwrap_or_default() {
                    *b = rng.next() as u8;
                }
            }
            2 => out.truncate(rng.below(len)),
            3 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(out.len());
                let chunk = out.get(start..end).unwrap_or_default().to_vec();
                let at = rng.below(len);
                out.splice(at.min(out.len())..at.min(out.len()), chunk);
            }
            4 => {
                let i = rng.below(len);
                let value: [u8; 4] = [[0xFF; 4], [0; 4], [0x7F, 0xFF, 0xFF, 0xFF], [0, 0, 0, 1]][rng.below(4)];
                for (k, v) in value.iter().enumerate() {
                    if let Some(b) = out.get_mut(i + k) {
                        *b = *v;
                    }
                }
            }
            _ => {
                // Near the start, where headers are.
                let i = rng.below(len.min(64));
                if let Some(b) = out.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
        }
    }
    out
}

fn budget() -> Duration {
    let seconds = std::env::var("MOBILENET_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0.5);
    Duration::from_secs_f64(seconds)
}

/// Mutates `seed_file`'s bytes, writes each mutant to `target` and runs `parse` on it until
/// the time budget is spent. Returns (inputs tried, how many parsed without error).
fn fuzz(name: &str, seed_file: &[u8], target: &Path, mut parse: impl FnMut(&Path) -> bool) -> (usize, usize) {
    let mut rng = Rng(0x9E3779B97F4A7C15 ^ name.len() as u64 ^ seed_file.len() as u64);
    let start = Instant::now();
    let (mut tried, mut accepted) = (0, 0);
    while start.elapsed() < budget() || tried < 20 {
        let input = mutate(seed_file, &mut rng);
        std::fs::write(target, &input).unwrap();
        match catch_unwind(AssertUnwindSafe(|| parse(target))) {
            Ok(ok) => accepted += ok as usize,
            Err(_) => {
                let kept = target.with_extension(format!("panic-{tried}"));
                std::fs::write(&kept, &input).unwrap();
                panic!("{name}: the parser panicked on a mutated input, kept as {}", kept.display());
            }
        }
        tried += 1;
    }
    eprintln!("fuzz {name}: {tried} inputs in {:.1} s, {accepted} accepted, no panic", start.elapsed().as_secs_f64());
    (tried, accepted)
}

fn tiny_config() -> ModelConfig {
    ModelConfig::new(Arch::V3Small).with_width_mult(0.25).with_num_classes(5)
}

#[test]
fn fuzz_weight_readers() {
    let dir = temp_dir("fuzz-weights");
    let device = Device::flex();
    let config = tiny_config();
    for (name, file) in [
        ("pth-zip", "tiny_v3_small.pth"),
        ("pth-legacy", "tiny_v3_small_legacy.pth"),
        ("safetensors", "tiny_v3_small.safetensors"),
    ] {
        let seed = std::fs::read(fixture(file)).unwrap();
        let target = dir.join(file);
        fuzz(name, &seed, &target, |p| {
            let meta = mobilenet::io::weights::read_metadata(p).is_ok();
            let _ = mobilenet_engine::read_safetensors(p);
            meta && mobilenet::io::weights::load(p, Some(&config), &device).is_ok()
        });
    }
}

#[test]
fn fuzz_checkpoint_metrics_and_labels() {
    let dir = temp_dir("fuzz-ckpt");
    let data = dir.join("data");
    write_idx(&data, 32, 8);
    let run = dir.join("run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mobilenet"))
        .args(["train", "--data", data.to_str().unwrap(), "--output", run.to_str().unwrap()])
        .args(["--width-mult", "0.25", "--batch-size", "16", "--image-size", "32", "--epochs", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let device = Device::flex().autodiff();
    let ckpt = std::fs::read(run.join("last.ckpt")).unwrap();
    fuzz("checkpoint", &ckpt, &dir.join("last.ckpt"), |p| mobilenet::training::checkpoint::load(p, &device).is_ok());
    let metrics = std::fs::read(run.join("metrics.csv")).unwrap();
    fuzz("metrics.csv", &metrics, &dir.join("metrics.csv"), |p| mobilenet::training::metrics::read_metrics(p).is_ok());
    let labels = b"tench\ngoldfish\ngreat white shark\ntiger shark\nhammerhead\n";
    fuzz("labels", labels, &dir.join("labels.txt"), |p| mobilenet::data::labels::Labels::for_model(5, Some(p)).is_ok());
}

/// An idx data set (train and t10k) of `n` random 28x28 images each, 3 classes.
fn write_idx(dir: &Path, n_train: usize, n_val: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, n) in [("train", n_train), ("t10k", n_val)] {
        let mut images = vec![0, 0, 8, 3];
        for d in [n as u32, 28, 28] {
            images.extend(d.to_be_bytes());
        }
        images.extend((0..n * 784).map(|i| ((i * 2654435761usize) >> 13) as u8));
        let mut labels = vec![0, 0, 8, 1];
        labels.extend((n as u32).to_be_bytes());
        labels.extend((0..n).map(|i| (i % 3) as u8));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

#[test]
fn fuzz_data_readers() {
    let dir = temp_dir("fuzz-data");
    let idx = dir.join("idx");
    write_idx(&idx, 6, 4);
    std::fs::write(idx.join("classes.txt"), "a\nb\nc\n").unwrap();
    for file in ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "classes.txt"] {
        let path: PathBuf = idx.join(file);
        let seed = std::fs::read(&path).unwrap();
        fuzz(&format!("idx {file}"), &seed, &path, |_| mobilenet::data::load(&idx).is_ok());
        std::fs::write(&path, &seed).unwrap();
    }
    let cifar = dir.join("cifar");
    std::fs::create_dir_all(&cifar).unwrap();
    let record = |label: u8| -> Vec<u8> { std::iter::once(label).chain((0..3072).map(|i| (i % 251) as u8)).collect() };
    for i in 1..=5 {
        std::fs::write(cifar.join(format!("data_batch_{i}.bin")), [record(1), record(2)].concat()).unwrap();
    }
    std::fs::write(cifar.join("test_batch.bin"), record(3)).unwrap();
    std::fs::write(cifar.join("batches.meta.txt"), (0..10).map(|i| format!("c{i}\n")).collect::<String>()).unwrap();
    for file in ["data_batch_1.bin", "batches.meta.txt"] {
        let path = cifar.join(file);
        let seed = std::fs::read(&path).unwrap();
        fuzz(&format!("cifar {file}"), &seed, &path, |_| mobilenet::data::load(&cifar).is_ok());
        std::fs::write(&path, &seed).unwrap();
    }
}

#[test]
fn fuzz_image_decoder() {
    let dir = temp_dir("fuzz-images");
    let image = image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([x as u8 * 9, y as u8 * 13, 77]));
    for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg, image::ImageFormat::Bmp] {
        let mut seed = Vec::new();
        image.write_to(&mut std::io::Cursor::new(&mut seed), format).unwrap();
        let target = dir.join(format!("image.{}", format.extensions_str()[0]));
        fuzz(&format!("image {format:?}"), &seed, &target, |p| mobilenet::data::preprocess::load_rgb(p).is_ok());
    }
    let webp = std::fs::read(fixture("photos/coffee.png")).unwrap();
    fuzz("image photo png", &webp, &dir.join("photo.png"), |p| mobilenet::data::preprocess::load_rgb(p).is_ok());
}
