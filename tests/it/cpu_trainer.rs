//! The CPU trainer (mobilenet-engine, no burn) driven by the crate's optimizer, against the burn
//! path: the same weights, data and SGD-Nesterov rule give the same loss curve, and the weights
//! after several steps do not depend on the thread count.

use std::collections::HashMap;
use std::sync::Arc;

use burn::tensor::Device;
use mobilenet::data::augment::AugmentConfig;
use mobilenet::data::loader::{self, Batch, Mode};
use mobilenet::data::{self, DataFormat};
use mobilenet::io::params;
use mobilenet::training::evaluate::cross_entropy;
use mobilenet::training::optim::{HostVector, Optimizer, OptimizerConfig, OptimizerKind};
use mobilenet::{Arch, MobileNet, ModelConfig};
use mobilenet_engine::train::{TrainConfig, Trainer};
use mobilenet_engine::NamedTensors;

const BATCH: usize = 32;
const STEPS: usize = 20;
const LR: f64 = 0.01;
const SMOOTHING: f64 = 0.1;

/// The first `STEPS` batches of the embedded data set, eval transform (deterministic), 32x32.
fn batches() -> Vec<Batch> {
    let splits = data::load_embedded().unwrap();
    let augment = AugmentConfig::defaults_for(DataFormat::Idx, &splits.train, 32);
    let train = Arc::new(splits.train);
    let order: Vec<usize> = (0..BATCH * STEPS).collect();
    loader::spawn(train, augment, order, BATCH, Mode::Eval).into_iter().map(|b| b.unwrap()).collect()
}

fn sgd() -> OptimizerConfig {
    let mut config = OptimizerConfig::new(OptimizerKind::Sgd);
    config.nesterov = true;
    config.weight_decay = 4e-5;
    config
}

/// A trainer with `tensors`, stepped over `batches` with the crate's SGD: the loss of each step.
fn engine_losses(
    config: &ModelConfig,
    tensors: &NamedTensors,
    batches: &[Batch],
    threads: usize,
) -> (Vec<f32>, Trainer) {
    let train_config = TrainConfig::new(config.spec.arch, BATCH, 32, 32)
        .with_dropout(0.0)
        .with_label_smoothing(SMOOTHING)
        .with_bn_momentum(config.norm_momentum)
        .with_threads(threads);
    let mut trainer = Trainer::from_tensors(&config.spec, train_config, tensors).unwrap();
    let ranks: HashMap<String, usize> = trainer.params().map(|(k, s, _)| (k.to_string(), s.len())).collect();
    let mut optimizer = Optimizer::<HostVector>::new(sgd());
    let mut losses = Vec::new();
    for batch in batches {
        let labels: Vec<usize> = batch.labels.iter().map(|&l| l as usize).collect();
        losses.push(trainer.step(&batch.images, &labels).unwrap());
        optimizer.steps += 1;
        trainer.update(|key, value, grad| {
            let next =
                optimizer.update_vector(key, HostVector(value.to_vec()), ranks[key], HostVector(grad.to_vec()), LR);
            value.copy_from_slice(&next.0);
        });
    }
    (losses, trainer)
}

#[test]
fn engine_and_burn_paths_give_the_same_loss_curve() {
    let batches = batches();
    let config = ModelConfig::new(Arch::V3Small).with_num_classes(10).with_width_mult(0.5).with_dropout(0.0);
    let device = Device::flex().autodiff();
    device.seed(3);
    let mut model = MobileNet::new(&config, &device).unwrap().train_mode();
    let tensors = params::torch_layout(&model);
    let (engine, _) = engine_losses(&config, &tensors, &batches, 2);

    let mut optimizer = Optimizer::new(sgd());
    let mut burn = Vec::new();
    for batch in &batches {
        let (x, y) = batch.to_tensors(&device);
        let loss = cross_entropy(model.forward(x), y, SMOOTHING);
        burn.push(loss.clone().into_scalar::<f32>());
        let grads = loss.backward();
        let (next, _) = optimizer.step(model, &grads, LR, |_| true);
        model = next;
    }
    for (step, (e, b)) in engine.iter().zip(&burn).enumerate() {
        assert!((e - b).abs() <= 1e-3, "step {step}: engine loss {e}, burn loss {b}\nengine {engine:?}\nburn {burn:?}");
    }
    assert!(engine[STEPS - 1] < engine[0], "the loss falls: {engine:?}");
    let worst = engine.iter().zip(&burn).map(|(e, b)| (e - b).abs()).fold(0.0, f32::max);
    eprintln!("engine and burn loss curves: worst difference {worst:.1e} over {STEPS} steps");
}

#[test]
fn weights_after_five_steps_do_not_depend_on_threads() {
    let batches = &batches()[..5];
    let config = ModelConfig::new(Arch::V2).with_num_classes(10).with_width_mult(0.35).with_dropout(0.0);
    let device = Device::flex();
    device.seed(5);
    let tensors = params::torch_layout(&MobileNet::new(&config, &device).unwrap());
    let runs: Vec<(Vec<f32>, Trainer)> =
        [1, 2, 3].iter().map(|&t| engine_losses(&config, &tensors, batches, t)).collect();
    let (base_losses, base) = &runs[0];
    for (threads, (losses, trainer)) in [2, 3].iter().zip(&runs[1..]) {
        assert_eq!(losses, base_losses, "{threads} threads: losses");
        for ((key, _, a), (_, _, b)) in base.params().zip(trainer.params()) {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "{threads} threads: {key} differs");
        }
    }
}
