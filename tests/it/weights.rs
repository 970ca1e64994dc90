//! Saving and loading: round trip with metadata, strictness, torchvision files.
// burn's `slice` takes one range per dimension: `[0..1]` is a one-dimension slice, not a typo.
#![allow(clippy::single_range_in_vec_init)]

use crate::common::*;
use burn::tensor::{Device, Tensor};
use mobilenet::io::tensor_io::{read_tensors, HostTensor};
use mobilenet::io::weights;
use mobilenet::{Arch, Error, MobileNet, ModelConfig};

#[test]
fn saved_file_reloads_without_flags_and_gives_same_logits() {
    let device = Device::flex();
    let dir = temp_dir("roundtrip");
    let config = ModelConfig::new(Arch::V2).with_width_mult(0.35).with_num_classes(3).with_norm(1e-4, 0.05);
    let model = MobileNet::new(&config, &device).unwrap();
    // Move the running statistics away from their initial values first.
    let model = model.train_mode();
    let _ = model.forward(input("rt", &[4, 3, 48, 48], &device));
    let model = model.eval_mode();
    let path = dir.join("m.safetensors");
    weights::save(&model, &path).unwrap();

    let loaded = weights::load(&path, None, &device).unwrap().eval_mode();
    assert_eq!(loaded.config(), &config);
    let x = input("rt2", &[2, 3, 64, 64], &device);
    let a = HostTensor::from_tensor(model.forward(x.clone()));
    let b = HostTensor::from_tensor(loaded.forward(x));
    assert_eq!(a, b);

    // The file is a torchvision state dict: torch keys, Linear weights as [out, in].
    let tensors = read_tensors(&path).unwrap();
    assert_eq!(tensors["classifier.1.weight"].shape, vec![3, 1280]);
    assert!(tensors.contains_key("features.1.conv.0.0.weight"));
    assert!(tensors.contains_key("features.2.conv.3.running_var"));
}

#[test]
fn torchvision_state_dict_loads_in_every_format() {
    let device = Device::flex();
    let config = ModelConfig::new(Arch::V3Small).with_width_mult(0.25).with_num_classes(5);
    let io = read_tensors(&fixture("tiny_v3_small_io.safetensors")).unwrap();
    let x: Tensor<4> = io["input"].to_tensor(&device).unwrap();
    for file in ["tiny_v3_small.pth", "tiny_v3_small_legacy.pth", "tiny_v3_small.safetensors"] {
        let model = weights::load(&fixture(file), Some(&config), &device).unwrap().eval_mode();
        let logits = HostTensor::from_tensor(model.forward(x.clone()));
        let diff = max_abs_diff(&logits.data, &io["logits"].data);
        assert!(diff < 1e-4, "{file}: {diff}");
    }
}

#[test]
fn loading_is_strict() {
    let device = Device::flex();
    let dir = temp_dir("strict");
    let pth = fixture("tiny_v3_small.pth");
    // Wrong class count: the classifier shape mismatch names the key and both shapes.
    let config = ModelConfig::new(Arch::V3Small).with_width_mult(0.25).with_num_classes(6);
    let err = weights::load(&pth, Some(&config), &device).unwrap_err().to_string();
    assert!(err.contains("classifier.3.bias: shape mismatch: the model has [6], the file has [5]"), "{err}");
    // Wrong architecture: keys are missing and unexpected.
    let config = ModelConfig::new(Arch::V2).with_width_mult(0.25).with_num_classes(5);
    let err = weights::load(&pth, Some(&config), &device).unwrap_err().to_string();
    assert!(err.contains("missing from the file") && err.contains("unexpected key"), "{err}");
    // A missing key alone: drop one tensor from a valid file.
    let config = ModelConfig::new(Arch::V3Small).with_width_mult(0.25).with_num_classes(5);
    let full = dir.join("full.safetensors");
    weights::save(&weights::load(&pth, Some(&config), &device).unwrap(), &full).unwrap();
    let mut tensors = read_tensors(&full).unwrap();
    tensors.remove("features.4.block.2.fc1.bias").unwrap();
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let partial = dir.join("partial.safetensors");
    mobilenet::io::tensor_io::write_tensors(&partial, &refs).unwrap();
    let err = weights::load(&partial, Some(&config), &device).unwrap_err().to_string();
    assert!(err.contains("features.4.block.2.fc1.bias: missing from the file"), "{err}");
    assert!(err.contains("partial.safetensors"), "{err}");
    // No model given and no metadata in the file.
    let err = weights::load(&pth, None, &device).unwrap_err().to_string();
    assert!(err.contains("does not say which model"), "{err}");
    // Missing file.
    match weights::load(&dir.join("absent.pth"), Some(&config), &device) {
        Err(Error::NotFound { path }) => assert!(path.ends_with("absent.pth")),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[test]
fn mode_switches_are_explicit() {
    let device = Device::flex();
    let config = ModelConfig::new(Arch::V3Small).with_width_mult(0.25);
    let model = MobileNet::new(&config, &device).unwrap();
    assert!(model.is_training(), "a new model is in train mode, as in torch");
    let model = model.eval_mode();
    assert!(!model.is_training());
    // In eval mode the output does not depend on the rest of the batch.
    let x = input("mode", &[2, 3, 40, 40], &device);
    let both = HostTensor::from_tensor(model.forward(x.clone()));
    let first = HostTensor::from_tensor(model.forward(x.clone().slice([0..1])));
    assert!(max_abs_diff(&both.data[..1000], &first.data) < 1e-5);
    // In train mode it does (batch statistics), even without autodiff.
    let model = model.train_mode();
    let both = HostTensor::from_tensor(model.forward(x.clone()));
    let first = HostTensor::from_tensor(model.forward(x.slice([0..1])));
    assert!(max_abs_diff(&both.data[..1000], &first.data) > 1e-3);
}

#[test]
fn reset_classifier_changes_only_the_head() {
    let device = Device::flex();
    for arch in Arch::ALL {
        let config = ModelConfig::new(arch).with_width_mult(0.25);
        let model = MobileNet::new(&config, &device).unwrap();
        let features = model.num_features();
        let model = model.reset_classifier(17, &device).unwrap().eval_mode();
        assert_eq!(model.num_classes(), 17);
        assert_eq!(model.num_features(), features);
        let out = model.forward(Tensor::zeros([2, 3, 64, 64], &device));
        assert_eq!(out.dims(), [2, 17], "{arch}");
    }
}
