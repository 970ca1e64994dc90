//! The CPU engine gives the burn model's eval-mode numbers: on the torchvision parity fixtures
//! of every model and width, at other (odd) input sizes and widths, with every instruction set
//! this CPU has; and it fails cleanly on bad files and inputs.

use crate::common::*;
use burn::tensor::Device;
use mobilenet::inference::backend::{self as engine, EngineOptions, Images, Isa};
use mobilenet::io::tensor_io::HostTensor;
use mobilenet::io::weights;
use mobilenet::{Arch, MobileNet, ModelConfig};

/// `model` with every tensor (BN statistics included) set by the fixtures' deterministic filler.
fn filled(config: &ModelConfig, dir: &std::path::Path) -> MobileNet {
    let model = MobileNet::new(config, &Device::flex()).unwrap();
    let keys = torchvision_layout_keys(&model);
    load_filled(model, &keys, dir).eval_mode()
}

fn burn_logits(model: &MobileNet, shape: &[usize], name: &str) -> Vec<f32> {
    HostTensor::from_tensor(model.forward(input(name, shape, &Device::flex()))).data
}

fn engine_logits(engine: &engine::Engine, shape: &[usize], name: &str) -> Vec<f32> {
    let data = uniform(name, shape.iter().product());
    engine.run(&Images::from_shape(&data, shape).unwrap()).unwrap().data
}

#[test]
fn engine_matches_burn_and_torchvision_on_parity_fixtures() {
    let fixtures = parity();
    let dir = temp_dir("engine-parity");
    let shape = [2, 3, 224, 224];
    for (arch, width) in EVAL_CASES {
        let name = format!("{arch}_w{width:.1}");
        let config = ModelConfig::new(arch.parse().unwrap()).with_width_mult(width);
        let model = filled(&config, &dir);
        let burn = burn_logits(&model, &shape, "input");
        let torch = &fixtures[&format!("{name}.logits")].data;
        for isa in Isa::all_available() {
            let options = EngineOptions::default().with_threads(2).with_isa(isa);
            let ours = engine_logits(&engine::from_model(&model, options).unwrap(), &shape, "input");
            let vs_burn = max_abs_diff(&ours, &burn);
            let vs_torch = max_abs_diff(&ours, torch);
            eprintln!("{name} {isa}: max |engine - burn| {vs_burn:.2e}, |engine - torchvision| {vs_torch:.2e}");
            assert!(vs_burn <= 1e-4, "{name} {isa}: engine vs burn eval logits differ by {vs_burn}");
            assert!(vs_torch <= 1e-4, "{name} {isa}: engine vs torchvision logits differ by {vs_torch}");
        }
    }
}

/// Odd and small inputs, other widths, both V1 activations, batches split over threads.
#[test]
fn engine_matches_burn_at_other_sizes_and_widths() {
    let dir = temp_dir("engine-sizes");
    let cases: [(Arch, f64, [usize; 4]); 8] = [
        (Arch::V1, 0.25, [3, 3, 97, 61]),
        (Arch::V1, 0.75, [1, 3, 33, 33]),
        (Arch::V2, 0.35, [2, 3, 65, 127]),
        (Arch::V2, 1.4, [1, 3, 31, 45]),
        (Arch::V3Large, 0.75, [3, 3, 57, 57]),
        (Arch::V3Large, 1.25, [1, 3, 1, 7]),
        (Arch::V3Small, 0.35, [5, 3, 45, 29]),
        (Arch::V3Small, 2.0, [2, 3, 19, 161]),
    ];
    for (i, (arch, width, shape)) in cases.into_iter().enumerate() {
        let mut config = ModelConfig::new(arch).with_width_mult(width).with_num_classes(10 + 7 * i);
        if i == 1 {
            config = config.with_v1_activation(mobilenet::models::blocks::Activation::Relu6);
        }
        let model = filled(&config, &dir);
        let name = format!("sizes{i}");
        let burn = burn_logits(&model, &shape, &name);
        let mut single = Vec::new();
        // 2 and 4 threads: whole images per thread, or (fewer images than threads) every layer
        // split over the threads; either way the numbers must not change at all.
        for threads in [1, 2, 4] {
            let options = EngineOptions::default().with_threads(threads);
            let ours = engine_logits(&engine::from_model(&model, options).unwrap(), &shape, &name);
            let diff = max_abs_diff(&ours, &burn);
            eprintln!("{arch} x{width} {shape:?} threads {threads}: max |engine - burn| {diff:.2e}");
            assert!(diff <= 1e-4, "{arch} x{width} {shape:?}: engine vs burn differ by {diff}");
            if threads == 1 {
                single = ours;
            } else {
                assert_eq!(ours, single, "{arch} x{width} {shape:?}: {threads} threads changed the logits");
            }
        }
    }
}

/// `Engine::load` reads our safetensors files directly (no burn), with the same numbers.
#[test]
fn engine_loads_saved_weights_without_burn() {
    let dir = temp_dir("engine-load");
    let config = ModelConfig::new(Arch::V3Small).with_width_mult(0.75).with_num_classes(17);
    let model = filled(&config, &dir);
    let path = dir.join("v3s.safetensors");
    weights::save(&model, &path).unwrap();
    let direct = mobilenet_engine::Engine::load_with(&path, EngineOptions::default().with_threads(1)).unwrap();
    assert_eq!(direct.num_classes(), 17);
    let shape = [2, 3, 64, 80];
    let diff = max_abs_diff(&engine_logits(&direct, &shape, "load"), &burn_logits(&model, &shape, "load"));
    assert!(diff <= 1e-4, "Engine::load vs burn: {diff}");
}

#[test]
fn engine_errors_name_the_problem() {
    let dir = temp_dir("engine-errors");
    let config = ModelConfig::new(Arch::V3Small).with_num_classes(5);
    let model = filled(&config, &dir);
    let good = dir.join("good.safetensors");
    weights::save(&model, &good).unwrap();

    let missing = dir.join("nope.safetensors");
    let err = mobilenet_engine::Engine::load(&missing).unwrap_err().to_string();
    assert!(err.contains("nope.safetensors") && err.contains("cannot read"), "{err}");

    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = mobilenet_engine::Engine::load(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated.safetensors") && err.contains("truncated"), "{err}");

    // torchvision keys but no config metadata: the engine cannot know the architecture.
    let bare = dir.join("bare.safetensors");
    let tensors = mobilenet::io::tensor_io::read_tensors(&good).unwrap();
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    mobilenet::io::tensor_io::write_tensors(&bare, &refs).unwrap();
    let err = mobilenet_engine::Engine::load(&bare).unwrap_err().to_string();
    assert!(err.contains("bare.safetensors") && err.contains("mobilenet.config"), "{err}");

    // Weights of another width under the same metadata: a shape error naming the tensor.
    let other = filled(&ModelConfig::new(Arch::V3Small).with_num_classes(5).with_width_mult(0.5), &dir);
    let wrong = dir.join("wrong.safetensors");
    weights::save_with_metadata(&other, &wrong, &[]).unwrap();
    let spec = config.spec;
    let tensors = mobilenet_engine::read_safetensors(&wrong).unwrap().1;
    let err = mobilenet_engine::Engine::from_tensors(&spec, tensors, EngineOptions::default()).unwrap_err().to_string();
    assert!(err.contains("features.0.0.weight") && err.contains("shape"), "{err}");

    let engine = mobilenet_engine::Engine::load(&good).unwrap();
    let data = vec![0.0; 2 * 3 * 8 * 8];
    let err = Images::from_shape(&data, &[2, 1, 8, 8]).unwrap_err().to_string();
    assert!(err.contains("[N, 3, H, W]"), "{err}");
    let err = Images::new(&data, 2, 8, 9).unwrap_err().to_string();
    assert!(err.contains("needs 432 values, got 384"), "{err}");
    assert!(engine.run(&Images::new(&data, 2, 8, 8).unwrap()).is_ok());
}
