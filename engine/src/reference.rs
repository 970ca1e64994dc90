//! Plain, obviously-correct NCHW implementations of each layer, for tests to compare the
//! kernels against. Not fast; not used by the engine.

use crate::arch::Activation;

pub fn activate(x: f32, act: Option<Activation>) -> f32 {
    match act {
        None => x,
        Some(Activation::Relu) => x.max(0.0),
        Some(Activation::Relu6) => x.clamp(0.0, 6.0),
        Some(Activation::Hardswish) => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Some(Activation::Hardsigmoid) => (x + 3.0).clamp(0.0, 6.0) / 6.0,
    }
}

/// An NCHW tensor of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Chw {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

impl Chw {
    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.h + y) * self.w + x]
    }
}

/// torch's `conv2d` with padding `(k - 1) / 2`, weights `[cout, cin / groups, k, k]`, then
/// BatchNorm in eval mode (`bn` = γ, β, mean, var, ε), then the activation.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_act(
    x: &Chw,
    weights: &[f32],
    cout: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    bn: (&[f32], &[f32], &[f32], &[f32], f64),
    act: Option<Activation>,
) -> Chw {
    let pad = (kernel - 1) / 2;
    let oh = (x.h + 2 * pad - kernel) / stride + 1;
    let ow = (x.w + 2 * pad - kernel) / stride + 1;
    let cin_g = x.c / groups;
    let cout_g = cout / groups;
    let mut out = vec![0.0f32; cout * oh * ow];
    for o in 0..cout {
        let g = o / cout_g;
        let (gamma, beta, mean, var, eps) = bn;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0.0f64;
                for i in 0..cin_g {
                    let ci = g * cin_g + i;
                    for ky in 0..kernel {
                        for kx in 0..kernel {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                                continue;
                            }
                            let wv = weights[((o * cin_g + i) * kernel + ky) * kernel + kx];
                            acc += wv as f64 * x.at(ci, iy as usize, ix as usize) as f64;
                        }
                    }
                }
                let y = (acc - mean[o] as f64) / (var[o] as f64 + eps).sqrt() * gamma[o] as f64 + beta[o] as f64;
                out[(o * oh + oy) * ow + ox] = activate(y as f32, act);
            }
        }
    }
    Chw { c: cout, h: oh, w: ow, data: out }
}

/// torchvision's `SqueezeExcitation` (fc1/fc2 weights `[out, in]`).
pub fn squeeze_excite(x: &Chw, fc1: &[f32], b1: &[f32], fc2: &[f32], b2: &[f32]) -> Chw {
    let squeeze = b1.len();
    let plane = x.h * x.w;
    let mean: Vec<f64> = (0..x.c)
        .map(|c| x.data[c * plane..(c + 1) * plane].iter().map(|&v| v as f64).sum::<f64>() / plane as f64)
        .collect();
    let hidden: Vec<f64> = (0..squeeze)
        .map(|s| (b1[s] as f64 + (0..x.c).map(|c| fc1[s * x.c + c] as f64 * mean[c]).sum::<f64>()).max(0.0))
        .collect();
    let gate: Vec<f32> = (0..x.c)
        .map(|c| {
            let v = b2[c] as f64 + (0..squeeze).map(|s| fc2[c * squeeze + s] as f64 * hidden[s]).sum::<f64>();
            activate(v as f32, Some(Activation::Hardsigmoid))
        })
        .collect();
    let data = x.data.iter().enumerate().map(|(i, &v)| v * gate[i / plane]).collect();
    Chw { data, ..*x }
}

/// `y = act(W x + b)` for `W` `[n, k]`.
pub fn linear(x: &[f32], weights: &[f32], bias: &[f32], act: Option<Activation>) -> Vec<f32> {
    let k = x.len();
    (0..bias.len())
        .map(|o| {
            activate(
                (bias[o] as f64 + (0..k).map(|i| weights[o * k + i] as f64 * x[i] as f64).sum::<f64>()) as f32,
                act,
            )
        })
        .collect()
}

pub fn mean_pool(x: &Chw) -> Vec<f32> {
    let plane = x.h * x.w;
    (0..x.c)
        .map(|c| (x.data[c * plane..(c + 1) * plane].iter().map(|&v| v as f64).sum::<f64>() / plane as f64) as f32)
        .collect()
}
