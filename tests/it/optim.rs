//! Optimizer updates against torch (SGD with Nesterov, AdamW) and timm's RMSpropTF, the LR
//! schedules, and the loss with label smoothing.

use crate::common::*;
use burn::tensor::{Device, Int, Tensor, TensorData};
use mobilenet::io::params::Flat;
use mobilenet::io::tensor_io::{read_tensors, HostTensor};
use mobilenet::training::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use mobilenet::training::schedule::{Schedule, ScheduleKind};

fn flat(t: &HostTensor, device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(t.data.clone(), [t.data.len()]), device)
}

#[test]
fn optimizers_match_torch() {
    let device = Device::flex();
    let fx = read_tensors(&fixture("optim.safetensors")).unwrap();
    for (kind, name) in
        [(OptimizerKind::Sgd, "sgd"), (OptimizerKind::Adamw, "adamw"), (OptimizerKind::Rmsproptf, "rmsproptf")]
    {
        let mut config = OptimizerConfig::new(kind);
        config.nesterov = true;
        config.weight_decay = 0.01;
        let mut opt = Optimizer::new(config);
        let mut w = flat(&fx["w0"], &device);
        let mut b = flat(&fx["b0"], &device);
        for (i, lr) in [0.1, 0.05, 0.02].into_iter().enumerate() {
            opt.steps += 1; // as `Optimizer::step` does once per batch
            let fw = Flat { dims: vec![3, 4], value: w.clone(), trainable: true };
            let fb = Flat { dims: vec![5], value: b.clone(), trainable: true };
            w = opt.update("w", &fw, flat(&fx[&format!("gw{i}")], &device), lr);
            b = opt.update("b", &fb, flat(&fx[&format!("gb{i}")], &device), lr);
        }
        let w = HostTensor::from_tensor(w);
        let b = HostTensor::from_tensor(b);
        let dw = max_abs_diff(&w.data, &fx[&format!("{name}.w")].data);
        let db = max_abs_diff(&b.data, &fx[&format!("{name}.b")].data);
        assert!(dw < 1e-5 && db < 1e-5, "{name}: |Δw| {dw}, |Δb| {db} (b is not decayed)");
    }
}

#[test]
fn schedules() {
    let s = Schedule {
        kind: ScheduleKind::Cosine,
        base_lr: 0.1,
        epochs: 10,
        warmup_epochs: 1.0,
        warmup_factor: 0.01,
        step_size: 3,
        gamma: 0.1,
        min_lr: 0.0,
    };
    assert!((s.lr(0.0) - 0.001).abs() < 1e-12);
    assert!((s.lr(0.5) - 0.1 * (0.01 + 0.99 * 0.5)).abs() < 1e-12);
    assert!((s.lr(1.0) - 0.1).abs() < 1e-12);
    assert!((s.lr(5.5) - 0.05).abs() < 1e-12); // half way through the cosine
    assert!(s.lr(10.0).abs() < 1e-12);
    let step = Schedule { kind: ScheduleKind::Step, warmup_epochs: 0.0, ..s };
    assert_eq!([step.lr(0.0), step.lr(2.9), step.lr(3.0)].map(|v| (v * 1e6).round()), [100000.0, 100000.0, 10000.0]);
    let exp = Schedule { kind: ScheduleKind::Exponential, warmup_epochs: 0.0, gamma: 0.5, ..s };
    assert!((exp.lr(2.5) - 0.025).abs() < 1e-12);
}

#[test]
fn cross_entropy_with_label_smoothing_matches_torch() {
    // torch.nn.functional.cross_entropy's definition, evaluated independently in f64 below.
    let device = Device::flex();
    let logits = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], &device);
    let targets = Tensor::<1, Int>::from_ints([2, 0], &device);
    let plain = mobilenet::training::evaluate::cross_entropy(logits.clone(), targets.clone(), 0.0).into_scalar::<f32>();
    let smooth = mobilenet::training::evaluate::cross_entropy(logits, targets, 0.1).into_scalar::<f32>();
    let expected_plain = python_reference(&[[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], &[2, 0], 0.0);
    let expected_smooth = python_reference(&[[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], &[2, 0], 0.1);
    assert!((plain - expected_plain).abs() < 1e-5, "{plain} vs {expected_plain}");
    assert!((smooth - expected_smooth).abs() < 1e-5, "{smooth} vs {expected_smooth}");
}

/// torch's formula, written out in f64: (1-ε)·NLL + ε·mean_k(-log p_k).
fn python_reference(logits: &[[f64; 3]], targets: &[usize], eps: f64) -> f32 {
    let mut total = 0.0;
    for (row, &t) in logits.iter().zip(targets) {
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let logp: Vec<f64> = row.iter().map(|v| v - lse).collect();
        total += (1.0 - eps) * -logp[t] + eps * -logp.iter().sum::<f64>() / 3.0;
    }
    (total / logits.len() as f64) as f32
}

/// The CPU trainer's fused in-place update (the rule over groups of elements) gives the same bits and keeps the same state as the rule over whole vectors, for
/// every optimizer, with and without momentum, with weight decay on a matrix and not on a
/// vector, and with a clipping scale.
#[test]
fn in_place_update_matches_the_vector_rule_bit_for_bit() {
    use mobilenet::training::optim::HostVector;
    let n = 37;
    let values = |seed: u32| -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    for kind in [OptimizerKind::Sgd, OptimizerKind::Rmsproptf, OptimizerKind::Adamw] {
        for (nesterov, momentum) in [(false, 0.9), (true, 0.9), (false, 0.0)] {
            let mut config = OptimizerConfig::new(kind);
            config.nesterov = nesterov && kind == OptimizerKind::Sgd;
            config.momentum = momentum;
            config.weight_decay = 0.01;
            let mut vector = Optimizer::<HostVector>::new(config);
            let mut fused = Optimizer::<HostVector>::new(config);
            for (rank, path) in [(4usize, "w"), (1, "b")] {
                let (mut a, mut b) = (values(1), values(1));
                for step in 0..4u32 {
                    let grad = values(10 + step);
                    let scale = if step == 2 { 0.3 } else { 1.0 };
                    vector.steps += 1;
                    fused.steps += 1;
                    let g = HostVector(grad.iter().map(|&g| if scale < 1.0 { g * scale as f32 } else { g }).collect());
                    a = vector.update_vector(path, HostVector(a), rank, g, 0.05).0;
                    fused.update_in_place(path, &mut b, rank, &grad, scale, 0.05);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&a),
                        bits(&b),
                        "{kind:?} nesterov {nesterov} momentum {momentum} {path} step {step}"
                    );
                }
                vector.steps = 0;
                fused.steps = 0;
            }
            let (sa, sb) = (vector.state_tensors(), fused.state_tensors());
            assert_eq!(sa.len(), sb.len());
            for ((ka, ta), (kb, tb)) in sa.iter().zip(&sb) {
                assert_eq!(ka, kb);
                assert_eq!(ta.data, tb.data, "{kind:?} state {ka}");
            }
        }
    }
}
