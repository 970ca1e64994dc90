//! Shared test helpers: the deterministic tensor generator mirrored from tools/fixtures/make_fixtures.py,
//! fixture access, and comparisons.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};
use mobilenet::io::tensor_io::{read_tensors, write_tensors, HostTensor};
use mobilenet::io::weights;
use mobilenet::MobileNet;

pub use mobilenet_engine::testing::{fill, uniform, EVAL_CASES};

/// `model`'s parameter paths and shapes in torchvision's layout (Linear weights [out, in]).
pub fn torchvision_layout_keys(model: &MobileNet) -> Vec<(String, Vec<usize>)> {
    let plan = model.plan();
    mobilenet::io::params::parameter_paths(model)
        .into_iter()
        .map(|(k, mut s)| {
            if plan.is_linear_weight(&k) {
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

/// Writes a torchvision-layout safetensors file filled by [`fill`] for the given keys and shapes
/// and loads it into `model` through the normal loader.
pub fn load_filled(model: MobileNet, keys: &[(String, Vec<usize>)], dir: &Path) -> MobileNet {
    let tensors: Vec<(String, HostTensor)> =
        keys.iter().map(|(k, s)| (k.clone(), HostTensor { shape: s.clone(), data: fill(k, s) })).collect();
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
    HostTensor { shape: shape.to_vec(), data: uniform(name, shape.iter().product()) }.to_tensor::<4>(device).unwrap()
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

/// Runs the `mobilenet` binary: (success, stdout, stderr).
pub fn mobilenet(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mobilenet")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// [`mobilenet`] with the command line as one string, split on white space (the tests' paths
/// have none).
pub fn mobilenet_line(line: &str) -> (bool, String, String) {
    mobilenet(&line.split_whitespace().collect::<Vec<_>>())
}
