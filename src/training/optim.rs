//! Optimizers with torchvision's recipes in mind: SGD (momentum, Nesterov), RMSProp with
//! TensorFlow-style epsilon (inside the square root, square average starting at 1, as timm's
//! `RMSpropTF`, which torchvision's V3 recipe imitates with eps 0.0316 outside the root), and AdamW.
//!
//! They are written here rather than taken from burn-optim because the recipes need things it
//! does not give together: weight decay skipped for BatchNorm and bias tensors, state keyed by
//! parameter path (so checkpoints are plain safetensors and resume exactly), and TF-style RMSProp.
//!
//! Each rule is written once, over [`OptVector`]: burn tensors (the burn path, on any device) and
//! host vectors ([`HostVector`], the CPU trainer's parameters) both implement it, so the two
//! training paths update weights by the same code and keep the same state under the same keys.

use std::collections::BTreeMap;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::params::{self, Flat};
use crate::io::tensor_io::HostTensor;
use crate::models::MobileNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum (optionally Nesterov).
    Sgd,
    /// RMSProp, TensorFlow style (eps inside the square root).
    Rmsproptf,
    /// Adam with decoupled weight decay.
    Adamw,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    /// SGD and RMSProp momentum.
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Apply weight decay to BatchNorm weights and biases too (rank-1 tensors). torchvision's
    /// recipes turn this off (`--norm-weight-decay 0`); so do we by default.
    pub decay_norm_and_bias: bool,
    /// RMSProp smoothing constant; AdamW beta2.
    pub alpha: f64,
    /// AdamW beta1.
    pub beta1: f64,
    pub eps: f64,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f64>,
}

impl OptimizerConfig {
    /// The defaults of each kind: SGD momentum 0.9; RMSProp alpha 0.9, eps 1e-3 (inside the
    /// root; torch's 0.0316 outside), momentum 0.9; AdamW betas (0.9, 0.999), eps 1e-8.
    pub fn new(kind: OptimizerKind) -> Self {
        let (alpha, eps) = match kind {
            OptimizerKind::Sgd => (0.0, 0.0),
            OptimizerKind::Rmsproptf => (0.9, 1e-3),
            OptimizerKind::Adamw => (0.999, 1e-8),
        };
        Self {
            kind,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            decay_norm_and_bias: false,
            alpha,
            beta1: 0.9,
            eps,
            clip_grad_norm: None,
        }
    }
}

/// The element-wise algebra the update rules need (each op consumes its operands, as burn's do).
pub trait OptVector: Clone {
    fn add(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
    fn div(self, other: Self) -> Self;
    fn mul_scalar(self, a: f64) -> Self;
    fn div_scalar(self, a: f64) -> Self;
    fn add_scalar(self, a: f64) -> Self;
    fn square(self) -> Self;
    fn sqrt(self) -> Self;
    fn ones_like(&self) -> Self;
    fn to_host(&self) -> HostTensor;
}

impl OptVector for Tensor<1> {
    fn add(self, other: Self) -> Self {
        self + other
    }
    fn sub(self, other: Self) -> Self {
        self - other
    }
    fn div(self, other: Self) -> Self {
        Tensor::div(self, other)
    }
    fn mul_scalar(self, a: f64) -> Self {
        Tensor::mul_scalar(self, a)
    }
    fn div_scalar(self, a: f64) -> Self {
        Tensor::div_scalar(self, a)
    }
    fn add_scalar(self, a: f64) -> Self {
        Tensor::add_scalar(self, a)
    }
    fn square(self) -> Self {
        self.powi_scalar(2)
    }
    fn sqrt(self) -> Self {
        Tensor::sqrt(self)
    }
    fn ones_like(&self) -> Self {
        Tensor::ones_like(self)
    }
    fn to_host(&self) -> HostTensor {
        HostTensor::from_tensor(self.clone())
    }
}

/// A parameter, gradient or optimizer buffer in host memory (f32, as torch keeps them).
#[derive(Debug, Clone, PartialEq)]
pub struct HostVector(pub Vec<f32>);

impl HostVector {
    fn zip(mut self, other: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        self.0.iter_mut().zip(&other.0).for_each(|(a, &b)| *a = f(*a, b));
        self
    }
    fn map(mut self, f: impl Fn(f32) -> f32) -> Self {
        self.0.iter_mut().for_each(|a| *a = f(*a));
        self
    }
}

impl OptVector for HostVector {
    fn add(self, other: Self) -> Self {
        self.zip(other, |a, b| a + b)
    }
    fn sub(self, other: Self) -> Self {
        self.zip(other, |a, b| a - b)
    }
    fn div(self, other: Self) -> Self {
        self.zip(other, |a, b| a / b)
    }
    fn mul_scalar(self, s: f64) -> Self {
        let s = s as f32;
        self.map(|a| a * s)
    }
    fn div_scalar(self, s: f64) -> Self {
        let s = s as f32;
        self.map(|a| a / s)
    }
    fn add_scalar(self, s: f64) -> Self {
        let s = s as f32;
        self.map(|a| a + s)
    }
    fn square(self) -> Self {
        self.map(|a| a * a)
    }
    fn sqrt(self) -> Self {
        self.map(f32::sqrt)
    }
    fn ones_like(&self) -> Self {
        HostVector(vec![1.0; self.0.len()])
    }
    fn to_host(&self) -> HostTensor {
        HostTensor { shape: vec![self.0.len()], data: self.0.clone() }
    }
}

/// An optimizer and its state (one set of buffers per parameter path), over burn tensors or
/// host vectors.
#[derive(Debug, Clone)]
pub struct Optimizer<V = Tensor<1>> {
    pub config: OptimizerConfig,
    /// Steps taken (AdamW bias correction).
    pub steps: u64,
    state: BTreeMap<String, V>,
}

/// What one step did, for logging.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// Global gradient norm before clipping (computed only when clipping is on).
    pub grad_norm: Option<f64>,
}

impl<V: OptVector> Optimizer<V> {
    pub fn new(config: OptimizerConfig) -> Self {
        Self { config, steps: 0, state: BTreeMap::new() }
    }

    /// Whether a tensor of rank `rank` gets weight decay (BatchNorm and bias vectors do not,
    /// unless asked).
    fn decays(&self, rank: usize) -> bool {
        self.config.weight_decay > 0.0 && (self.config.decay_norm_and_bias || rank > 1)
    }

    /// The state as named host tensors (for checkpoints; the same keys on both paths).
    pub fn state_tensors(&self) -> Vec<(String, HostTensor)> {
        self.state.iter().map(|(k, v)| (k.clone(), v.to_host())).collect()
    }

    /// One update of the tensor at `path` (value `p`, of rank `rank` before flattening) given
    /// its gradient: [`rule`] with the tensor's buffers from the state.
    pub fn update_vector(&mut self, path: &str, p: V, rank: usize, grad: V, lr: f64) -> V {
        let decays = self.decays(rank);
        let names = buffer_names(self.config.kind);
        let key = |name: &str| format!("{path}/{name}");
        let buffers = names.map(|name| name.and_then(|n| self.state.remove(&key(n))));
        let (p, buffers) = rule(&self.config, self.steps, decays, p, grad, lr, buffers);
        for (name, buffer) in names.into_iter().zip(buffers) {
            if let (Some(name), Some(buffer)) = (name, buffer) {
                self.state.insert(key(name), buffer);
            }
        }
        p
    }
}

/// Which tensors the optimizer updates, by key: not BatchNorm's running statistics, not the
/// backbone under `--freeze-backbone`, not BatchNorm's affine parameters under `--freeze-bn`.
/// (Both step paths, and the checkpoint check of which tensors must have optimizer state.)
pub fn trainable_filter(model: &MobileNet, freeze_backbone: bool, freeze_bn: bool) -> impl Fn(&str) -> bool {
    let bn_prefixes: Vec<String> = params::collect(model)
        .keys()
        .filter_map(|k| k.strip_suffix(".running_mean").map(|p| format!("{p}.")))
        .collect();
    let plan = model.plan();
    move |key: &str| {
        let frozen_backbone = freeze_backbone && !plan.is_classifier_key(key);
        let frozen_bn = freeze_bn && bn_prefixes.iter().any(|p| key.starts_with(p.as_str()));
        !(params::is_running_stat(key) || frozen_backbone || frozen_bn)
    }
}

impl OptimizerConfig {
    /// The buffers a tensor holds after its first update (`optim/<key>/<buffer>` in
    /// checkpoints): the rule's slots that it writes with this configuration.
    pub fn state_buffers(&self) -> Vec<&'static str> {
        let [first, second] = buffer_names(self.kind);
        let momentum_free = self.momentum <= 0.0;
        [first, second].into_iter().flatten().filter(|&b| !(momentum_free && b == "momentum_buffer")).collect()
    }
}

/// The optimizer buffers each rule keeps per tensor (torch's and timm's names).
fn buffer_names(kind: OptimizerKind) -> [Option<&'static str>; 2] {
    match kind {
        OptimizerKind::Sgd => [Some("momentum_buffer"), None],
        OptimizerKind::Rmsproptf => [Some("square_avg"), Some("momentum_buffer")],
        OptimizerKind::Adamw => [Some("exp_avg"), Some("exp_avg_sq")],
    }
}

/// One update by the rules of torch's SGD and AdamW and timm's RMSpropTF, written once over
/// [`OptVector`]: whole burn tensors on the burn path, groups of elements ([`Lanes`]) in the CPU
/// trainer's fused loop. `buffers` are the tensor's state as [`buffer_names`] lists it (`None`
/// before its first update); `t` is the step count (AdamW's bias correction). Returns the new
/// value and buffers.
#[inline(always)]
fn rule<V: OptVector>(
    c: &OptimizerConfig,
    t: u64,
    decays: bool,
    p: V,
    grad: V,
    lr: f64,
    buffers: [Option<V>; 2],
) -> (V, [Option<V>; 2]) {
    let [b0, b1] = buffers;
    match c.kind {
        OptimizerKind::Sgd => {
            // torch.optim.SGD: d = g + wd·p; buf = μ·buf + d (buf = d at first);
            // step = d + μ·buf (Nesterov) or buf.
            let d = if decays { grad.add(p.clone().mul_scalar(c.weight_decay)) } else { grad };
            if c.momentum > 0.0 {
                let buf = match b0 {
                    Some(buf) => buf.mul_scalar(c.momentum).add(d.clone()),
                    None => d.clone(),
                };
                let step = if c.nesterov { d.add(buf.clone().mul_scalar(c.momentum)) } else { buf.clone() };
                (p.sub(step.mul_scalar(lr)), [Some(buf), None])
            } else {
                (p.sub(d.mul_scalar(lr)), [None, None])
            }
        }
        OptimizerKind::Rmsproptf => {
            // timm RMSpropTF: ms starts at 1; ms = α·ms + (1-α)·g²;
            // buf = μ·buf + lr·g / sqrt(ms + eps); p -= buf.
            let g = if decays { grad.add(p.clone().mul_scalar(c.weight_decay)) } else { grad };
            let ms = b0.unwrap_or_else(|| p.ones_like());
            let ms = ms.mul_scalar(c.alpha).add(g.clone().square().mul_scalar(1.0 - c.alpha));
            let step = g.div(ms.clone().add_scalar(c.eps).sqrt()).mul_scalar(lr);
            if c.momentum > 0.0 {
                let buf = match b1 {
                    Some(buf) => buf.mul_scalar(c.momentum).add(step),
                    None => step,
                };
                (p.sub(buf.clone()), [Some(ms), Some(buf)])
            } else {
                (p.sub(step), [Some(ms), None])
            }
        }
        OptimizerKind::Adamw => {
            // torch.optim.AdamW: p -= lr·wd·p; m, v moments with bias correction.
            let p = if decays { p.clone().sub(p.mul_scalar(lr * c.weight_decay)) } else { p };
            let m = match b0 {
                Some(m) => m.mul_scalar(c.beta1).add(grad.clone().mul_scalar(1.0 - c.beta1)),
                None => grad.clone().mul_scalar(1.0 - c.beta1),
            };
            let v = match b1 {
                Some(v) => v.mul_scalar(c.alpha).add(grad.square().mul_scalar(1.0 - c.alpha)),
                None => grad.square().mul_scalar(1.0 - c.alpha),
            };
            let t = t as i32;
            let bc1 = 1.0 - c.beta1.powi(t);
            let bc2 = 1.0 - c.alpha.powi(t);
            let denom = v.clone().div_scalar(bc2).sqrt().add_scalar(c.eps);
            let step = m.clone().div(denom).mul_scalar(lr / bc1);
            (p.sub(step), [Some(m), Some(v)])
        }
    }
}

/// Elements per group of the CPU trainer's fused update.
const LANES: usize = 16;

/// A group of elements, for running [`rule`] group by group (the CPU trainer's fused update):
/// every operation is the f32 operation of each element, as on whole vectors.
#[derive(Debug, Clone, Copy)]
struct Lanes([f32; LANES]);

impl Lanes {
    #[inline(always)]
    fn zip(mut self, other: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = f(*a, b);
        }
        self
    }
    #[inline(always)]
    fn map(mut self, f: impl Fn(f32) -> f32) -> Self {
        for a in self.0.iter_mut() {
            *a = f(*a);
        }
        self
    }
}

impl OptVector for Lanes {
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self.zip(other, |a, b| a + b)
    }
    #[inline(always)]
    fn sub(self, other: Self) -> Self {
        self.zip(other, |a, b| a - b)
    }
    #[inline(always)]
    fn div(self, other: Self) -> Self {
        self.zip(other, |a, b| a / b)
    }
    #[inline(always)]
    fn mul_scalar(self, s: f64) -> Self {
        let s = s as f32;
        self.map(|a| a * s)
    }
    #[inline(always)]
    fn div_scalar(self, s: f64) -> Self {
        let s = s as f32;
        self.map(|a| a / s)
    }
    #[inline(always)]
    fn add_scalar(self, s: f64) -> Self {
        let s = s as f32;
        self.map(|a| a + s)
    }
    #[inline(always)]
    fn square(self) -> Self {
        self.map(|a| a * a)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        self.map(f32::sqrt)
    }
    #[inline(always)]
    fn ones_like(&self) -> Self {
        Lanes([1.0; LANES])
    }
    fn to_host(&self) -> HostTensor {
        HostTensor { shape: vec![LANES], data: self.0.to_vec() }
    }
}

/// [`rule`] over one tensor in place, [`LANES`] elements at a time: the rule's branches are
/// taken once per group and each of its operations is a loop over the group, which the compiler
/// turns into vector instructions. `buffers`: the tensor's state and whether it existed before
/// (else it is read as absent and written from scratch); on return, whether it holds state.
#[allow(clippy::too_many_arguments)]
fn fused_update(
    c: &OptimizerConfig,
    t: u64,
    decays: bool,
    p: &mut [f32],
    grad: &[f32],
    grad_scale: f64,
    lr: f64,
    buffers: &mut [Option<(Vec<f32>, bool)>; 2],
) {
    let existed = buffers.each_ref().map(|b| b.as_ref().is_some_and(|b| b.1));
    let mut wrote = [false; 2];
    let [b0, b1] = buffers;
    let (mut b0, mut b1) = (b0.as_mut().map(|b| b.0.as_mut_slice()), b1.as_mut().map(|b| b.0.as_mut_slice()));
    let n = p.len();
    let mut i = 0;
    while i < n {
        let len = LANES.min(n - i);
        let load = |src: &[f32]| {
            let mut v = [0.0f32; LANES];
            v[..len].copy_from_slice(&src[i..i + len]);
            Lanes(v)
        };
        let mut g = load(grad);
        if grad_scale < 1.0 {
            g = g.mul_scalar(grad_scale);
        }
        let state = [b0.as_deref().filter(|_| existed[0]).map(load), b1.as_deref().filter(|_| existed[1]).map(load)];
        let (value, [n0, n1]) = rule(c, t, decays, load(p), g, lr, state);
        p[i..i + len].copy_from_slice(&value.0[..len]);
        if let (Some(b), Some(v)) = (b0.as_deref_mut(), n0) {
            b[i..i + len].copy_from_slice(&v.0[..len]);
            wrote[0] = true;
        }
        if let (Some(b), Some(v)) = (b1.as_deref_mut(), n1) {
            b[i..i + len].copy_from_slice(&v.0[..len]);
            wrote[1] = true;
        }
        i += len;
    }
    // A buffer is state from now on if it was, or if the rule wrote it.
    for (b, wrote) in buffers.iter_mut().zip(wrote) {
        if let Some(b) = b {
            b.1 |= wrote;
        }
    }
}

impl Optimizer<Tensor<1>> {
    /// Applies one update to every parameter that has a gradient and for which `trainable`
    /// says yes (frozen parameters keep their value and their optimizer state).
    pub fn step(
        &mut self,
        model: MobileNet,
        grads: &burn::tensor::Gradients,
        lr: f64,
        trainable: impl Fn(&str) -> bool,
    ) -> (MobileNet, StepInfo) {
        let mut grads = params::gradients(&model, grads);
        grads.retain(|path, _| trainable(path));
        let mut info = StepInfo { grad_norm: None };
        if let Some(max_norm) = self.config.clip_grad_norm {
            let total = grads
                .values()
                .map(|g| g.clone().powi_scalar(2).sum())
                .reduce(|a, b| a + b)
                .map(|t| t.into_scalar::<f32>() as f64)
                .unwrap_or(0.0)
                .sqrt();
            info.grad_norm = Some(total);
            let scale = max_norm / (total + 1e-6);
            if scale < 1.0 {
                for g in grads.values_mut() {
                    *g = g.clone().mul_scalar(scale);
                }
            }
        }
        self.steps += 1;
        let model = params::map(model, |path, flat| {
            let grad = grads.remove(path)?;
            Some(self.update(path, flat, grad, lr))
        });
        (model, info)
    }

    /// One update of the burn tensor at `path` (value and shape in `flat`) given its gradient.
    pub fn update(&mut self, path: &str, flat: &Flat, grad: Tensor<1>, lr: f64) -> Tensor<1> {
        self.update_vector(path, flat.value.clone(), flat.dims.len(), grad, lr)
    }

    /// Restores state saved by [`Optimizer::state_tensors`].
    pub fn load_state(
        &mut self,
        steps: u64,
        tensors: impl IntoIterator<Item = (String, HostTensor)>,
        device: &burn::tensor::Device,
    ) -> Result<()> {
        self.steps = steps;
        self.state.clear();
        for (k, t) in tensors {
            let value =
                t.to_tensor::<1>(device).map_err(|e| Error::InvalidConfig(format!("optimizer state '{k}': {e}")))?;
            self.state.insert(k, value);
        }
        Ok(())
    }
}

impl Optimizer<HostVector> {
    /// One update of the tensor at `path` in place: `p` (rank `rank` before flattening) from
    /// `grad` times `grad_scale` (gradient clipping). [`rule`] group by group in one pass,
    /// the buffers updated in place: the same arithmetic as [`Optimizer::update_vector`] (the
    /// same bits), without a temporary per operation.
    pub fn update_in_place(&mut self, path: &str, p: &mut [f32], rank: usize, grad: &[f32], grad_scale: f64, lr: f64) {
        let mut buffers = self.take_buffers(path, p.len());
        fused_update(&self.config, self.steps, self.decays(rank), p, grad, grad_scale, lr, &mut buffers);
        self.put_buffers(path, buffers);
    }

    /// The state buffers of the tensor at `path`, taken out of the state; a buffer the rule keeps
    /// but the tensor does not have yet is `(zeros, false)`.
    fn take_buffers(&mut self, path: &str, len: usize) -> [Option<(Vec<f32>, bool)>; 2] {
        buffer_names(self.config.kind).map(|name| {
            let name = name?;
            Some(match self.state.remove(&format!("{path}/{name}")) {
                Some(b) => (b.0, true),
                None => (vec![0.0; len], false),
            })
        })
    }

    /// Returns the buffers that hold state (as [`fused_update`] marks them) to the state.
    fn put_buffers(&mut self, path: &str, buffers: [Option<(Vec<f32>, bool)>; 2]) {
        for (name, buffer) in buffer_names(self.config.kind).into_iter().zip(buffers) {
            if let (Some(name), Some((buffer, true))) = (name, buffer) {
                self.state.insert(format!("{path}/{name}"), HostVector(buffer));
            }
        }
    }

    /// Restores state saved by [`Optimizer::state_tensors`] (by either path) into host vectors.
    pub fn load_host_state(&mut self, steps: u64, tensors: impl IntoIterator<Item = (String, HostTensor)>) {
        self.steps = steps;
        self.state = tensors.into_iter().map(|(k, t)| (k, HostVector(t.data))).collect();
    }
}
