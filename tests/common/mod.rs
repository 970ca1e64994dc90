//! Shared test helpers: the deterministic tensor generator mirrored from tools/make_fixtures.py,
//! fixture access, and comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use mobilenet::tensor_io::{read_tensors, write_tensors, HostTensor};
use mobilenet::{weights, MobileNet};

/// The torchvision parity fixtures' models: (torchvision constructor, width).
pub const EVAL_CASES: [(&str, f64); 7] = [
    ("mobilenet_v1", 1.0),
    ("mobilenet_v2", 1.0),
    ("mobilenet_v3_large", 1.0),
    ("mobilenet_v3_small", 1.0),
    ("mobilenet_v2", 0.5),
    ("mobilenet_v3_large", 0.5),
    ("mobilenet_v3_small", 0.5),
];

/// `model`'s parameter paths and shapes in torchvision's layout (Linear weights [out, in]).
pub fn torchvision_layout_keys(model: &MobileNet) -> Vec<(String, Vec<usize>)> {
    mobilenet::sequential::parameter_paths(model)
        .into_iter()
        .map(|(k, mut s)| {
            if k.starts_with("classifier") && s.len() == 2 {
                s.reverse();
            }
            (k, s)
        })
        .collect()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

pub fn parity() -> HashMap<String, HostTensor> {
    read_tensors(&fixture("parity.safetensors")).expect("parity fixture")
}

fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xCBF29CE484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001B3);
    }
    h
}

/// n floats in [-1, 1): splitmix64 keyed by FNV-1a(name), as in make_fixtures.py.
pub fn uniform(name: &str, n: usize) -> Vec<f32> {
    let seed = fnv1a64(name);
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E3779B97F4A7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            let u = (z >> 40) as f64 / (1u64 << 24) as f64;
            (u * 2.0 - 1.0) as f32
        })
        .collect()
}

/// The deterministic value of a state_dict tensor (torch layout), as in make_fixtures.py.
pub fn fill(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let u = uniform(name, n);
    let leaf = name.rsplit('.').next().unwrap();
    match leaf {
        "running_var" => u.iter().map(|v| 1.0f32 + 0.5f32 * v).collect(),
        "running_mean" | "bias" => u.iter().map(|v| 0.1f32 * v).collect(),
        "weight" if shape.len() == 1 => u.iter().map(|v| 1.0f32 + 0.25f32 * v).collect(),
        _ => {
            let fan_in: usize = shape[1..].iter().product();
            let a = (3.0f64 / fan_in as f64).sqrt() as f32;
            u.iter().map(|v| v * a).collect()
        }
    }
}

/// Writes a torchvision-layout safetensors file filled by [`fill`] for the given keys and shapes
/// and loads it into `model` through the normal loader.
pub fn load_filled(model: MobileNet, keys: &[(String, Vec<usize>)], dir: &Path) -> MobileNet {
    let tensors: Vec<(String, HostTensor)> = keys
        .iter()
        .map(|(k, s)| (k.clone(), HostTensor { shape: s.clone(), data: fill(k, s) }))
        .collect();
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let path = dir.join("filled.safetensors");
    write_tensors(&path, &refs).unwrap();
    weights::load_into(model, &path).expect("filled weights load")
}

pub fn torchvision_keys() -> HashMap<String, Vec<(String, Vec<usize>)>> {
    let text = std::fs::read_to_string(fixture("torchvision_keys.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn input(name: &str, shape: &[usize], device: &Device) -> Tensor<4> {
    HostTensor { shape: shape.to_vec(), data: uniform(name, shape.iter().product()) }
        .to_tensor::<4>(device)
        .unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mobilenet-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
