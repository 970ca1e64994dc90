//! Training-step microbenchmark (no data pipeline): forward, backward and optimizer step timed
//! separately. Its torch twin is tools/bench/torch_step_bench.py; tools/bench/bench_train_step.sh runs both.
//! Usage: cargo run --release --example train_step -- [MODEL] [SIZE] [BATCH] [STEPS]
use std::time::Instant;

use burn::tensor::{Device, Distribution, Int, Tensor};
use mobilenet::training::evaluate::cross_entropy;
use mobilenet::training::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use mobilenet::{MobileNet, ModelConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arch = args.get(1).map(String::as_str).unwrap_or("mobilenet_v3_small").parse()?;
    let size: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let steps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let device = Device::flex().autodiff();
    device.seed(0);
    let mut model = MobileNet::new(&ModelConfig::new(arch).with_num_classes(10), &device)?.train_mode();
    let mut config = OptimizerConfig::new(OptimizerKind::Sgd);
    config.nesterov = true;
    config.weight_decay = 4e-5;
    let mut optimizer = Optimizer::new(config);
    let x = Tensor::<4>::random([batch, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<1, Int>::from_data(
        burn::tensor::TensorData::new((0..batch as i64).map(|i| i % 10).collect::<Vec<_>>(), [batch]),
        &device,
    );
    let (mut fwd, mut bwd, mut opt) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..steps + 3 {
        let t0 = Instant::now();
        let loss = cross_entropy(model.forward(x.clone()), y.clone(), 0.1);
        let _ = loss.clone().into_scalar::<f32>(); // wait for the forward pass
        let t1 = Instant::now();
        let grads = loss.backward();
        let t2 = Instant::now();
        let (next, _) = optimizer.step(model, &grads, 0.1, |_| true);
        model = next;
        let _ = mobilenet::io::params::collect(&model).values().next().map(|f| f.value.clone().into_data());
        let t3 = Instant::now();
        if step >= 3 {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            opt.push((t3 - t2).as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2] * 1e3
    };
    let (f, b, o) = (median(&mut fwd), median(&mut bwd), median(&mut opt));
    println!("forward_ms: {f:.1}");
    println!("backward_ms: {b:.1}");
    println!("optimizer_ms: {o:.1}");
    println!("images_per_s: {:.0}", batch as f64 / ((f + b + o) / 1e3));
    Ok(())
}
