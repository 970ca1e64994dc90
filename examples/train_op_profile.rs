//! Per-op profile of a training step: every layer's op run alone on a training batch of its
//! real input shape, forward and backward, summed by op kind. Compare the total with
//! `examples/train_step.rs`, which times the whole step.
//! Usage: cargo run --release --example train_op_profile -- [MODEL] [SIZE] [BATCH] [REPEATS]
use burn::tensor::Device;
use mobilenet::training::op_profile::profile_ops;
use mobilenet::ModelConfig;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arch = args.get(1).map(String::as_str).unwrap_or("mobilenet_v3_small").parse()?;
    let size: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let repeats: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let device = Device::flex().autodiff();
    let plan = ModelConfig::new(arch).with_num_classes(10).plan()?;
    let times = profile_ops(&plan, size, batch, repeats, &device);
    let mut kinds: Vec<(String, f64, f64, usize)> = Vec::new();
    for t in &times {
        match kinds.iter_mut().find(|k| k.0 == t.kind) {
            Some(k) => {
                k.1 += t.forward_ms;
                k.2 += t.backward_ms;
                k.3 += 1;
            }
            None => kinds.push((t.kind.clone(), t.forward_ms, t.backward_ms, 1)),
        }
    }
    kinds.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
    let (fwd, bwd): (f64, f64) = (kinds.iter().map(|k| k.1).sum(), kinds.iter().map(|k| k.2).sum());
    println!("{arch}, batch {batch}, {size}x{size}, each op alone (median of {repeats}):");
    println!("| op kind | layers | forward ms | backward ms | share of fwd+bwd |");
    println!("|---|---:|---:|---:|---:|");
    for (kind, f, b, n) in &kinds {
        println!("| {kind} | {n} | {f:.1} | {b:.1} | {:.0}% |", 100.0 * (f + b) / (fwd + bwd));
    }
    println!("| **sum** | {} | {fwd:.1} | {bwd:.1} | |", times.len());
    Ok(())
}
