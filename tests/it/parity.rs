//! Numerical parity with torchvision (fixtures from tools/fixtures/make_fixtures.py).

use crate::common::*;
use burn::tensor::{Device, Tensor};
use mobilenet::io::tensor_io::HostTensor;
use mobilenet::{Arch, MobileNet, ModelConfig};

fn case(arch: &str, width: f64) -> String {
    format!("{arch}_w{width:.1}")
}

/// Every case's parameter paths equal torchvision's state_dict keys, in order, with equal
/// shapes (burn's Linear is [in, out]; torch's [out, in]).
#[test]
fn module_paths_are_torchvision_keys() {
    let device = Device::flex();
    let keys = torchvision_keys();
    for (arch, width) in EVAL_CASES {
        let config = ModelConfig::new(arch.parse().unwrap()).with_width_mult(width);
        let model = MobileNet::new(&config, &device).unwrap();
        let ours = torchvision_layout_keys(&model);
        let theirs = &keys[&case(arch, width)];
        assert_eq!(&ours, theirs, "{arch} width {width}: keys or shapes differ from torchvision");
    }
}

#[test]
fn eval_logits_match_torchvision() {
    let device = Device::flex();
    let fixtures = parity();
    let keys = torchvision_keys();
    let dir = temp_dir("eval");
    let x = input("input", &[2, 3, 224, 224], &device);
    for (arch, width) in EVAL_CASES {
        let name = case(arch, width);
        let config = ModelConfig::new(arch.parse().unwrap()).with_width_mult(width);
        let model = MobileNet::new(&config, &device).unwrap();
        let model = load_filled(model, &keys[&name], &dir).eval_mode();
        let logits = HostTensor::from_tensor(model.forward(x.clone()));
        let expected = &fixtures[&format!("{name}.logits")];
        assert_eq!(logits.shape, expected.shape, "{name}");
        let diff = max_abs_diff(&logits.data, &expected.data);
        eprintln!("{name}: max |logit diff| = {diff:.3e} (logit scale {:.3})", max_abs(&expected.data));
        assert!(diff <= 1e-4, "{name}: max |logit diff| {diff} > 1e-4");
    }
}

fn rel_err(ours: &[f32], theirs: &[f32]) -> f32 {
    max_abs_diff(ours, theirs) / max_abs(theirs).max(1e-12)
}

/// Train mode, V3-Small with dropout 0: loss, three gradients and the BN running-stat update
/// agree with torchvision (which tracks the *unbiased* batch variance).
#[test]
fn train_step_matches_torchvision() {
    let device = Device::flex().autodiff();
    let fixtures = parity();
    let keys = torchvision_keys();
    let dir = temp_dir("train");
    let config = ModelConfig::new(Arch::V3Small).with_num_classes(10).with_dropout(0.0);
    let model = MobileNet::new(&config, &device).unwrap();
    let model = load_filled(model, &keys["train_v3_small_10"], &dir).train_mode();
    assert!(model.is_training());

    let x = input("train_input", &[4, 3, 96, 96], &device);
    let logits = model.forward(x);
    let expected_logits = &fixtures["train.logits"];
    let ours_logits = HostTensor::from_tensor(logits.clone());
    assert!(rel_err(&ours_logits.data, &expected_logits.data) < 1e-4, "train-mode logits differ");

    let targets = Tensor::<1, burn::tensor::Int>::from_ints([3, 7, 0, 9], &device);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new().init(&device).forward(logits, targets);
    let loss_value = HostTensor::from_tensor(loss.clone()).data[0];
    let expected_loss = fixtures["train.loss"].data[0];
    assert!(
        ((loss_value - expected_loss) / expected_loss).abs() < 1e-4,
        "loss {loss_value} vs torchvision {expected_loss}"
    );

    let grads = loss.backward();
    let grad_of = |key: &str| -> Vec<f32> {
        let parts: Vec<&str> = key.split('.').collect();
        let MobileNet::V3(m) = &model else { unreachable!() };
        let g: HostTensor = match parts.as_slice() {
            ["features", "0", "0", "weight"] => {
                HostTensor::from_tensor(m.features.stem.conv.weight.grad(&grads).unwrap())
            }
            ["features", "1", "block", "0", "0", "weight"] => {
                HostTensor::from_tensor(m.features.blocks[0].block.depthwise.conv.weight.grad(&grads).unwrap())
            }
            ["features", "4", "block", "1", "0", "weight"] => {
                HostTensor::from_tensor(m.features.blocks[3].block.depthwise.conv.weight.grad(&grads).unwrap())
            }
            ["classifier", "3", "weight"] => {
                // burn [in, out] -> torch [out, in]
                HostTensor::from_tensor(m.classifier.output.weight.grad(&grads).unwrap().transpose())
            }
            _ => unreachable!(),
        };
        g.data
    };
    for key in
        ["features.0.0.weight", "features.1.block.0.0.weight", "features.4.block.1.0.weight", "classifier.3.weight"]
    {
        let expected = &fixtures[&format!("train.grad.{key}")];
        let err = rel_err(&grad_of(key), &expected.data);
        eprintln!("grad {key}: max rel err {err:.2e}");
        assert!(err < 1e-4, "gradient of {key}: relative error {err}");
    }

    let MobileNet::V3(m) = &model else { unreachable!() };
    let bns = [
        ("features.0.1", &m.features.stem.norm),
        ("features.1.block.0.1", &m.features.blocks[0].block.depthwise.norm),
        ("features.12.1", &m.features.last.norm),
    ];
    for (key, bn) in bns {
        for (stat, value) in [("running_mean", bn.running_mean.value()), ("running_var", bn.running_var.value())] {
            let expected = &fixtures[&format!("train.{key}.{stat}")];
            let ours = HostTensor::from_tensor(value);
            let err = rel_err(&ours.data, &expected.data);
            assert!(err < 1e-5, "{key}.{stat}: relative error {err}");
        }
    }
}
