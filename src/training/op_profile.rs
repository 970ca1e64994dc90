//! The per-op profile of a training step on burn: every layer of the plan run alone on a
//! training batch of its real input shape, forward and backward of its output's sum. The ops
//! are fresh layers of the plan's shapes (timing does not depend on the weights' values).

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};

use crate::models::blocks::{activate, global_avg_pool, init, BatchNorm2d, NormConfig, SqueezeExcitation};
use crate::models::summary::{walk, LayerOp};
use crate::models::Plan;

/// One layer's op timed alone: forward, and backward of its output's sum.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpTime {
    pub path: String,
    /// Op kind: `conv 1x1`, `depthwise 3x3`, `conv 3x3`, `BatchNorm2d`, `Hardswish`, ...
    pub kind: String,
    pub forward_ms: f64,
    pub backward_ms: f64,
}

/// Times every op of `plan` on a batch of `batch` `image_size` images on `device` (an
/// autodiff device): the median of `repeats` runs after one warm-up run. Dropout is not timed.
pub fn profile_ops(plan: &Plan, image_size: usize, batch: usize, repeats: usize, device: &Device) -> Vec<OpTime> {
    let norm = NormConfig::new(plan.spec.norm_eps, 0.1);
    let repeats = repeats.max(1);
    let mut times = Vec::new();
    for step in walk(plan, image_size) {
        let mut time = |kind: String, f: &dyn Fn(&[usize]) -> (f64, f64)| {
            let mut dims = vec![batch];
            dims.extend_from_slice(&step.input);
            let (forward_ms, backward_ms) = f(&dims);
            times.push(OpTime { path: step.path.clone(), kind, forward_ms, backward_ms });
        };
        match step.op {
            LayerOp::Conv(c) => {
                let conv = init::conv(c, device);
                let kind = if c.is_depthwise() { "depthwise" } else { "conv" };
                time(format!("{kind} {k}x{k}", k = c.kernel), &|d| {
                    median_run::<4, 4>(d, repeats, device, |x| conv.forward(x))
                });
            }
            LayerOp::BatchNorm(c) => {
                let bn = BatchNorm2d::new(c.out_channels, norm, device);
                time("BatchNorm2d".into(), &|d| median_run::<4, 4>(d, repeats, device, |x| bn.forward(x)));
            }
            LayerOp::Activation(act) if step.input.len() == 1 => {
                time(act.torch_name().into(), &|d| median_run::<2, 2>(d, repeats, device, |x| activate(act, x)));
            }
            LayerOp::Activation(act) => {
                time(act.torch_name().into(), &|d| median_run::<4, 4>(d, repeats, device, |x| activate(act, x)));
            }
            LayerOp::SqueezeExcite(se) => {
                let se = SqueezeExcitation::new(se, device);
                time("SqueezeExcitation".into(), &|d| median_run::<4, 4>(d, repeats, device, |x| se.forward(x)));
            }
            LayerOp::Residual => time("Add".into(), &|d| median_run::<4, 4>(d, repeats, device, |x| x.clone() + x)),
            LayerOp::Pool => {
                time("AdaptiveAvgPool2d".into(), &|d| median_run::<4, 4>(d, repeats, device, global_avg_pool))
            }
            LayerOp::Linear(l) => {
                let linear = init::linear(l.in_features, l.out_features, device);
                time("Linear".into(), &|d| median_run::<2, 2>(d, repeats, device, |x| linear.forward(x)));
            }
            LayerOp::Dropout => {}
        }
    }
    times
}

/// Median forward and backward milliseconds of `op` on a random input of shape `dims`.
fn median_run<const D: usize, const E: usize>(
    dims: &[usize],
    repeats: usize,
    device: &Device,
    op: impl Fn(Tensor<D>) -> Tensor<E>,
) -> (f64, f64) {
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for run in 0..=repeats {
        let x = Tensor::<D>::random(dims.to_vec(), Distribution::Normal(0.0, 1.0), device).require_grad();
        let t0 = Instant::now();
        let y = op(x.clone()).sum();
        let _ = y.clone().into_scalar::<f32>();
        let t1 = Instant::now();
        let grads = y.backward();
        let _ = x.grad(&grads).map(|g| g.sum().into_scalar::<f32>());
        let t2 = Instant::now();
        if run > 0 {
            fwd.push((t1 - t0).as_secs_f64() * 1e3);
            bwd.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut fwd), median(&mut bwd))
}
