//! A torchsummary-style table: each layer's path (its torchvision key prefix), type, output
//! shape, parameter count and multiply-accumulates, walked from the model's own structure.
//!
//! MACs count conv and linear layers as the papers do (BatchNorm, activations, pooling and the
//! SE gate's multiply are left out); parameters count trainable tensors only (BatchNorm running
//! statistics are buffers, as in torchsummary).

use std::time::Instant;

use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor};

use crate::blocks::{global_avg_pool, Activation, BatchNorm2d, SqueezeExcitation};

/// One line of the summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerRow {
    pub path: String,
    pub kind: String,
    /// Output shape without the batch dimension.
    pub output_shape: Vec<usize>,
    pub params: usize,
    pub macs: u64,
}

/// Follows the activation shape through a model, one layer at a time.
#[derive(Debug, Clone)]
pub struct ShapeTrace {
    shape: Vec<usize>,
    pub rows: Vec<LayerRow>,
    /// When set, every layer's op is also run and timed ([`ShapeTrace::with_op_timer`]).
    pub timer: Option<OpTimer>,
}

/// One layer's op timed alone on a training batch: forward, and backward of its output's sum.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpTime {
    pub path: String,
    /// Op kind: `conv 1x1`, `depthwise 3x3`, `conv 3x3`, `BatchNorm2d`, `Hardswish`, ...
    pub kind: String,
    pub forward_ms: f64,
    pub backward_ms: f64,
}

/// Times each layer's op in isolation with the traced input shape and a batch dimension: the
/// per-op profile of a training step (the model must be on an autodiff device, in train mode).
#[derive(Debug, Clone)]
pub struct OpTimer {
    /// Where the inputs are made: the model's (autodiff) device.
    pub device: Device,
    pub batch: usize,
    /// Timed runs per op (median), after one warm-up run.
    pub repeats: usize,
    pub times: Vec<OpTime>,
}

impl OpTimer {
    fn time<const D: usize, const E: usize>(
        &mut self,
        path: &str,
        kind: &str,
        shape: &[usize],
        op: impl Fn(Tensor<D>) -> Tensor<E>,
    ) {
        let device = self.device.clone();
        let mut dims = vec![self.batch];
        dims.extend_from_slice(shape);
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        for run in 0..=self.repeats {
            let x = Tensor::<D>::random(dims.clone(), Distribution::Normal(0.0, 1.0), &device).require_grad();
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
        self.times.push(OpTime { path: path.to_string(), kind: kind.to_string(), forward_ms: median(&mut fwd), backward_ms: median(&mut bwd) });
    }
}

impl ShapeTrace {
    pub fn new(input: [usize; 3]) -> Self {
        Self { shape: input.to_vec(), rows: Vec::new(), timer: None }
    }

    /// A trace that also times every op on a batch of `batch` on `device` ([`OpTimer`]).
    pub fn with_op_timer(input: [usize; 3], batch: usize, repeats: usize, device: &Device) -> Self {
        let timer = OpTimer { device: device.clone(), batch, repeats: repeats.max(1), times: Vec::new() };
        Self { timer: Some(timer), ..Self::new(input) }
    }

    /// The current activation shape (`[C, H, W]`, or `[C]` after the pool).
    pub fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    fn push(&mut self, path: &str, kind: &str, params: usize, macs: u64) {
        self.rows.push(LayerRow {
            path: path.to_string(),
            kind: kind.to_string(),
            output_shape: self.shape.clone(),
            params,
            macs,
        });
    }

    pub fn conv(&mut self, path: &str, conv: &Conv2d) {
        let [out_c, in_per_group, kh, kw] = conv.weight.dims();
        if let Some(timer) = &mut self.timer {
            let kind = if in_per_group == 1 && out_c == self.shape[0] && out_c > 1 {
                format!("depthwise {kh}x{kw}")
            } else {
                format!("conv {kh}x{kw}")
            };
            timer.time::<4, 4>(path, &kind, &self.shape, |x| conv.forward(x));
        }
        let (h, w) = (self.shape[1], self.shape[2]);
        let (pad_h, pad_w) = match conv.padding {
            burn::nn::PaddingConfig2d::Explicit(top, left, _, _) => (top, left),
            _ => (0, 0),
        };
        let out_h = (h + 2 * pad_h - kh) / conv.stride[0] + 1;
        let out_w = (w + 2 * pad_w - kw) / conv.stride[1] + 1;
        self.shape = vec![out_c, out_h, out_w];
        let bias = conv.bias.as_ref().map(|b| b.dims()[0]).unwrap_or(0);
        let params = out_c * in_per_group * kh * kw + bias;
        let macs = (out_h * out_w * out_c * in_per_group * kh * kw) as u64;
        self.push(path, "Conv2d", params, macs);
    }

    pub fn batch_norm(&mut self, path: &str, bn: &BatchNorm2d) {
        if let Some(timer) = &mut self.timer {
            timer.time::<4, 4>(path, "BatchNorm2d", &self.shape, |x| bn.forward(x));
        }
        self.push(path, "BatchNorm2d", 2 * bn.num_features(), 0);
    }

    pub fn activation(&mut self, path: &str, act: &Activation) {
        if let Some(timer) = &mut self.timer {
            if self.shape.len() == 1 {
                timer.time::<2, 2>(path, act.torch_name(), &self.shape, |x| act.forward(x));
            } else {
                timer.time::<4, 4>(path, act.torch_name(), &self.shape, |x| act.forward(x));
            }
        }
        self.push(path, act.torch_name(), 0, 0);
    }

    pub fn squeeze_excite(&mut self, path: &str, se: &SqueezeExcitation) {
        if let Some(timer) = &mut self.timer {
            timer.time::<4, 4>(path, "SqueezeExcitation", &self.shape, |x| se.forward(x));
        }
        let [squeeze, channels, _, _] = se.fc1.weight.dims();
        let params = 2 * squeeze * channels + squeeze + channels;
        let macs = (2 * squeeze * channels) as u64;
        self.push(path, "SqueezeExcitation", params, macs);
    }

    pub fn residual(&mut self, path: &str, input: Vec<usize>) {
        if let Some(timer) = &mut self.timer {
            timer.time::<4, 4>(path, "Add", &self.shape, |x| x.clone() + x);
        }
        debug_assert_eq!(input, self.shape);
        self.push(&format!("{path} (+input)"), "Add", 0, 0);
    }

    pub fn global_pool(&mut self, path: &str) {
        if let Some(timer) = &mut self.timer {
            timer.time::<4, 4>(path, "AdaptiveAvgPool2d", &self.shape, global_avg_pool);
        }
        self.shape = vec![self.shape[0]];
        self.push(path, "AdaptiveAvgPool2d", 0, 0);
    }

    pub fn dropout(&mut self, path: &str) {
        self.push(path, "Dropout", 0, 0);
    }

    pub fn linear(&mut self, path: &str, linear: &Linear) {
        // burn stores Linear weights as [in, out].
        let [d_in, d_out] = linear.weight.dims();
        if let Some(timer) = &mut self.timer {
            timer.time::<2, 2>(path, "Linear", &self.shape, |x| linear.forward(x));
        }
        self.shape = vec![d_out];
        let bias = linear.bias.as_ref().map(|b| b.dims()[0]).unwrap_or(0);
        self.push(path, "Linear", d_in * d_out + bias, (d_in * d_out) as u64);
    }

    pub fn total_params(&self) -> usize {
        self.rows.iter().map(|r| r.params).sum()
    }

    pub fn total_macs(&self) -> u64 {
        self.rows.iter().map(|r| r.macs).sum()
    }

    /// The table as text, with `params:` and `MACs:` total lines at the end.
    pub fn render(&self, title: &str) -> String {
        use std::fmt::Write;
        let shape = |s: &[usize]| {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("[-1, {}]", dims.join(", "))
        };
        let path_w = self.rows.iter().map(|r| r.path.len()).max().unwrap_or(5).max(5);
        let kind_w = self.rows.iter().map(|r| r.kind.len()).max().unwrap_or(4).max(4);
        let shape_w = self.rows.iter().map(|r| shape(&r.output_shape).len()).max().unwrap_or(12).max(12);
        let width = path_w + kind_w + shape_w + 12 + 16 + 8;
        let mut out = String::new();
        let rule = "-".repeat(width);
        let _ = writeln!(out, "{title}\n{rule}");
        let _ = writeln!(
            out,
            "{:<path_w$}  {:<kind_w$}  {:>shape_w$}  {:>12}  {:>14}",
            "Layer", "Type", "Output Shape", "Param #", "MACs"
        );
        let _ = writeln!(out, "{}", "=".repeat(width));
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<path_w$}  {:<kind_w$}  {:>shape_w$}  {:>12}  {:>14}",
                r.path,
                r.kind,
                shape(&r.output_shape),
                group_thousands(r.params as u64),
                group_thousands(r.macs)
            );
        }
        let _ = writeln!(out, "{}", "=".repeat(width));
        let _ = writeln!(out, "Total params: {}", group_thousands(self.total_params() as u64));
        let _ = writeln!(out, "Total MACs: {} ({:.1}M)", group_thousands(self.total_macs()), self.total_macs() as f64 / 1e6);
        let _ = writeln!(out, "{rule}");
        let _ = writeln!(out, "params: {}", self.total_params());
        let _ = writeln!(out, "MACs: {}", self.total_macs());
        out
    }
}

/// 1234567 -> "1,234,567".
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
