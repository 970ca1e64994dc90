//! CPU training: a hand-written forward and backward pass of MobileNet V1/V2/V3 in train mode,
//! with torchvision's semantics, and no framework.
//!
//! A [`Trainer`] is built from a [`ModelSpec`] for batches of up to `batch` images of one
//! size ([`TrainConfig`]): it resolves the [`Plan`] (every layer with its torchvision key)
//! and lays the network out as a loop over it ([`network`]); it holds the parameters by key in
//! torch's layouts ([`params`]), and one arena with every activation the backward pass needs
//! ([`arena`]), allocated once. A [`Trainer::step`] on an NCHW batch with integer labels runs
//! the forward pass with batch statistics (updating the running statistics as torch does), the
//! loss (softmax cross-entropy with label smoothing, mean over the batch), and the backward
//! pass, and leaves every parameter's gradient readable by key ([`Trainer::grad`],
//! [`Trainer::grads`]) and the logits ([`Trainer::logits`]). [`Trainer::eval`] is the
//! eval-mode forward (running statistics, no dropout). Optimizers update the values through
//! [`Trainer::update`] (or [`Trainer::sgd`]); the layers' packed weight copies (GEMM panels,
//! depthwise taps) are rebuilt from the store before the next pass whenever a value changed (a
//! repack per optimizer step: O(parameters), small next to a step, and no allocation).
//!
//! # Semantics (torchvision, train mode)
//! - conv: padding `(k - 1) / 2`, no bias; depthwise k = 3 or 5, stride 1 or 2.
//! - BatchNorm2d: normalises with the batch mean and biased variance (`eps` from the spec);
//!   `running = (1 - m) · running + m · batch` with the unbiased variance (`n / (n - 1)`) for
//!   `running_var`; `m` is [`TrainConfig::bn_momentum`] (torchvision: 0.1 for V1/V2, 0.01 for V3).
//! - ReLU, ReLU6, Hardswish, Hardsigmoid with torch's derivatives at the kinks
//!   ([`activation`]); squeeze-excite; residual add; global average pool; the classifier's
//!   Linears, Hardswish and Dropout (Bernoulli keep mask scaled by `1 / (1 - p)` from a seeded
//!   generator; `p = 0` disables it).
//! - loss: `(1 - ε) · NLL + ε · mean_k(-log p_k)`, mean over the batch.
//!
//! # Layout and kernels
//! Maps are NHWC `[images][h][w][c_p]`, channels innermost and padded to 16 with zeros. The
//! stem (im2col), every 1x1 conv, the squeeze-excite FCs and the Linears are one SIMD GEMM
//! ([`gemm`]) in its three products; depthwise convs have their own kernels ([`depthwise`]);
//! BatchNorm with its activation is two passes forward and two backward ([`batch_norm`]). Every
//! kernel is generic over the [`Simd`](crate::simd::Simd) trait and dispatched per ISA by
//! `multiversion!`, and each has a plain f64 reference test beside it.
//!
//! # Memory
//! One arena per trainer, sized at construction for (plan, batch, image size); no step
//! allocates. Per conv the arena keeps its output `z` (BatchNorm's backward needs it) and `y =
//! act(bn(z))` (the next layer's input, which its weight gradient needs); the BatchNorm output
//! and the activation's input are recomputed from `z` in backward rather than stored.
//! Squeeze-excite keeps its output; the stem its im2col patches. Three gradient buffers as
//! large as the largest map are reused by every layer. (V2, batch 128 at 32x32: 183 MB; batch
//! 32 at 224x224: 2.2 GB. Recomputing `y` from `z` instead of storing it would halve that.)
//!
//! # Speed: where a step's time goes, and what comes next
//! [`Trainer::start_profile`] (`PROFILE=1` in `examples/train_step.rs`) times every layer in
//! four phases. At batch 128, 32x32, one thread (AVX-512), V2 spends about half its step in
//! the pointwise GEMMs (70-110 GFLOP/s, near this core's practical peak; the small-K expand
//! convs are bound by writing their output), a quarter in the BatchNorm + activation passes
//! (memory-bound), a fifth in the depthwise kernels, and ~4% repacking weights after the
//! optimizer step. The next gains are fusions that remove passes over the maps: BatchNorm
//! statistics in the producing kernel's epilogue (GEMM or depthwise, with row tasks aligned to
//! the reduction chunks so the order stays fixed); the normalise + activation applied while the
//! consuming GEMM loads its A operand (then `y` need not be stored, halving the arena, with the
//! weight-gradient GEMM recomputing it as it loads B); the BatchNorm backward sums fused into
//! the kernel that produces `dy`. Then: per-thread image slices for the depthwise and
//! squeeze-excite layers at small maps (fewer barriers), and a stride-2 input-gradient kernel
//! that visits only the taps of its parity.
//!
//! # Determinism
//! Every sum over the batch (BatchNorm statistics and gradients, depthwise weight gradients)
//! is split into a fixed number of image chunks ([`forward::REDUCE_CHUNKS`], not the thread
//! count) whose partials are added in chunk order; every GEMM output element is accumulated by
//! one task in a fixed order. So a step gives bit-identical results on any number of threads.

// Kernels take their operands as raw pointers and sizes (as `crate::kernels` do); their safety
// contract is the one `multiversion!` states: pointers valid for the rows and channels named.
#![allow(clippy::too_many_arguments, clippy::missing_safety_doc)]

pub mod activation;
pub mod arena;
pub mod backward;
pub mod batch_norm;
pub mod conv;
pub mod depthwise;
pub mod forward;
pub mod gemm;
pub mod kernel_bench;
pub mod lanes;
pub mod network;
pub mod params;
pub mod rng;
pub mod rows;
#[cfg(test)]
mod tests;

use crate::arch::{Arch, ModelSpec, Plan};
use crate::error::{EngineError, Result};
use crate::network::NamedTensors;
use crate::simd::Isa;
use arena::{Arena, Buf};
use forward::{BnStats, Ctx, REDUCE_CHUNKS};
use lanes::Ptr;
use network::{ConvKind, HeadNode, Node};
use params::{ParamKind, ParamStore};
use rayon::prelude::*;
use rng::Rng;

/// One layer's accumulated time while profiling ([`Trainer::start_profile`]): a conv with its
/// BatchNorm and activation, a squeeze-excite, or the head; forward or backward.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerTime {
    pub key: String,
    /// `stem`, `pointwise`, `depthwise`, `squeeze-excite` or `head`.
    pub kind: &'static str,
    /// `forward`, `backward`, or for convs `forward conv`, `forward bn+act`, `backward bn+act`,
    /// `backward conv`.
    pub phase: &'static str,
    pub seconds: f64,
}

/// How a [`Trainer`] runs: the batch it is laid out for and the training settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Largest batch (steps may use fewer images, at least 2).
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    /// Worker threads (results do not depend on it).
    pub threads: usize,
    /// Instruction set; `None` picks the best this CPU has.
    pub isa: Option<Isa>,
    /// BatchNorm momentum (torch's convention: the weight of the new batch).
    pub bn_momentum: f64,
    /// Dropout probability of every Dropout in the classifier.
    pub dropout: f32,
    /// Label smoothing ε of the cross-entropy.
    pub label_smoothing: f64,
    /// Seed of the initialisation and of the dropout masks.
    pub seed: u64,
    /// BatchNorm frozen (`--freeze-bn`): steps normalise with the running statistics and leave
    /// them unchanged, as torch does for a BatchNorm in eval mode inside a training model.
    pub frozen_bn: bool,
}

impl TrainConfig {
    /// torchvision's settings for `arch`: BatchNorm momentum 0.1 (V1, V2) or 0.01 (V3),
    /// dropout 0.2, no label smoothing; one thread.
    pub fn new(arch: Arch, batch: usize, height: usize, width: usize) -> TrainConfig {
        let bn_momentum = arch.default_norm_momentum();
        TrainConfig {
            batch,
            height,
            width,
            threads: 1,
            isa: None,
            bn_momentum,
            dropout: 0.2,
            label_smoothing: 0.0,
            seed: 0,
            frozen_bn: false,
        }
    }
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = Some(isa);
        self
    }
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }
    pub fn with_label_smoothing(mut self, eps: f64) -> Self {
        self.label_smoothing = eps;
        self
    }
    pub fn with_bn_momentum(mut self, m: f64) -> Self {
        self.bn_momentum = m;
        self
    }
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn with_frozen_bn(mut self, frozen: bool) -> Self {
        self.frozen_bn = frozen;
        self
    }
}

/// A BatchNorm recalibration in progress: the sums of the batches' statistics.
#[derive(Debug)]
pub struct BnAverage {
    ids: Vec<usize>,
    sums: Vec<Vec<f64>>,
    count: usize,
}

/// A model being trained: see the module documentation.
pub struct Trainer {
    plan: Plan,
    config: TrainConfig,
    isa: Isa,
    pool: rayon::ThreadPool,
    params: ParamStore,
    /// The layers' packed copies are out of date.
    dirty: bool,
    nodes: Vec<Node>,
    head: Vec<HeadNode>,
    head_widths: Vec<usize>,
    head_x: Vec<Vec<f32>>,
    head_g: Vec<Vec<f32>>,
    masks: Vec<Vec<f32>>,
    arena: Arena,
    grad_bufs: [Buf; 3],
    bn_partials: Vec<f64>,
    dw_partials: Vec<f32>,
    pool_sums: Vec<f64>,
    logits: Vec<f32>,
    /// Images in the last pass.
    last_n: usize,
    rng: Rng,
    /// Per-layer times accumulated while profiling.
    profile: Option<Vec<LayerTime>>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("spec", &self.plan.spec)
            .field("config", &self.config)
            .field("isa", &self.isa)
            .finish()
    }
}

impl Trainer {
    /// A trainer with torchvision's initialisation (seeded by `config.seed`).
    pub fn new(spec: &ModelSpec, config: TrainConfig) -> Result<Trainer> {
        let plan = Plan::new(spec)?;
        if config.batch < 2 {
            return Err(EngineError::Spec("training needs a batch of at least 2 (BatchNorm statistics)".into()));
        }
        ModelSpec::check_input(&[config.batch, 3, config.height, config.width])?;
        if !(0.0..1.0).contains(&config.dropout) || !(0.0..=1.0).contains(&config.label_smoothing) {
            return Err(EngineError::Spec(format!(
                "dropout {} / label smoothing {} out of range",
                config.dropout, config.label_smoothing
            )));
        }
        let isa = config.isa.unwrap_or_else(Isa::detect);
        if !Isa::all_available().contains(&isa) {
            return Err(EngineError::Spec(format!("this CPU cannot run the {isa} kernels")));
        }
        let threads = config.threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("mobilenet-train-{i}"))
            .build()
            .map_err(|e| EngineError::Spec(format!("cannot start {threads} threads: {e}")))?;
        let mut params = ParamStore::default();
        let built = network::build(&plan, config.batch, config.height, config.width, &mut params)?;
        let b = config.batch;
        let head_x: Vec<Vec<f32>> = built.head_widths.iter().map(|w| vec![0.0; b * w]).collect();
        let head_g = head_x.clone();
        let masks = head_x[1..].iter().map(|v| vec![1.0; v.len()]).chain(std::iter::once(Vec::new())).collect();
        let max_taps = 25 * built.max_cp;
        let arena = Arena::new(&built.arena);
        let mut trainer = Trainer {
            isa,
            pool,
            params,
            dirty: true,
            nodes: built.nodes,
            head: built.head,
            head_widths: built.head_widths,
            head_x,
            head_g,
            masks,
            arena,
            grad_bufs: built.grads,
            bn_partials: vec![0.0; REDUCE_CHUNKS * 2 * built.max_cp],
            dw_partials: vec![0.0; REDUCE_CHUNKS * max_taps],
            pool_sums: vec![0.0; b * built.max_cp],
            logits: vec![0.0; b * plan.spec.num_classes],
            last_n: 0,
            rng: Rng::new(config.seed ^ 0xD809_0F7E),
            profile: None,
            plan,
            config,
        };
        trainer.init_torchvision(trainer.config.seed);
        Ok(trainer)
    }

    /// A trainer whose every parameter and running statistic comes from `tensors` (torchvision
    /// keys and layouts; `num_batches_tracked` and other extra keys are ignored).
    pub fn from_tensors(spec: &ModelSpec, config: TrainConfig, tensors: &NamedTensors) -> Result<Trainer> {
        let mut trainer = Trainer::new(spec, config)?;
        let keys: Vec<String> = trainer.params.entries().iter().map(|e| e.key.clone()).collect();
        for key in keys {
            let (shape, data) =
                tensors.get(&key).ok_or_else(|| EngineError::Spec(format!("missing tensor '{key}'")))?;
            trainer.params.load(&key, Some(shape), data)?;
        }
        trainer.dirty = true;
        Ok(trainer)
    }

    /// torchvision's initialisation: convs (and the SE's 1x1 convs) Kaiming-normal with
    /// fan-out, Linears normal(0, 0.01), biases 0, BatchNorm weight 1, bias 0, running mean 0,
    /// running var 1.
    pub fn init_torchvision(&mut self, seed: u64) {
        let mut rng = Rng::new(seed);
        let entries = self.params.entries().to_vec();
        for (id, e) in entries.iter().enumerate() {
            let values = self.params.value_mut(id);
            match e.shape.len() {
                4 => {
                    let fan_out = (e.shape[0] * e.shape[2] * e.shape[3]) as f32;
                    let std = (2.0 / fan_out).sqrt();
                    values.iter_mut().for_each(|v| *v = rng.normal() * std);
                }
                2 => values.iter_mut().for_each(|v| *v = rng.normal() * 0.01),
                _ => {
                    let fill = if e.key.ends_with(".running_var")
                        || (e.key.ends_with(".weight") && e.kind == ParamKind::Weight)
                    {
                        1.0
                    } else {
                        0.0
                    };
                    values.fill(fill);
                }
            }
        }
        self.dirty = true;
    }

    /// Restarts the dropout masks' generator from `seed` (a training loop reseeds it every epoch
    /// from (seed, epoch), so that a resumed run draws the same masks).
    pub fn reseed_dropout(&mut self, seed: u64) {
        self.rng = Rng::new(seed ^ 0xD809_0F7E);
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// Bytes of activation memory (the arena).
    pub fn arena_bytes(&self) -> usize {
        self.arena.bytes()
    }

    /// Every tensor (parameters and running statistics) by key, in plan order, torch layouts.
    pub fn params(&self) -> impl Iterator<Item = (&str, &[usize], &[f32])> {
        self.params
            .entries()
            .iter()
            .enumerate()
            .map(|(id, e)| (e.key.as_str(), e.shape.as_slice(), self.params.value(id)))
    }

    pub fn param(&self, key: &str) -> Option<&[f32]> {
        self.params.id(key).map(|id| self.params.value(id))
    }

    /// The gradient of every trained parameter (not the running statistics) from the last
    /// step, by key.
    pub fn grads(&self) -> impl Iterator<Item = (&str, &[usize], &[f32])> {
        self.params
            .entries()
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == ParamKind::Weight)
            .map(|(id, e)| (e.key.as_str(), e.shape.as_slice(), self.params.grad(id)))
    }

    pub fn grad(&self, key: &str) -> Option<&[f32]> {
        self.params
            .id(key)
            .filter(|&id| self.params.entries()[id].kind == ParamKind::Weight)
            .map(|id| self.params.grad(id))
    }

    /// Sets one tensor (a parameter or a running statistic), torch's layout.
    pub fn load(&mut self, key: &str, data: &[f32]) -> Result<()> {
        self.params.load(key, None, data)?;
        self.dirty = true;
        Ok(())
    }

    /// Lets an optimizer change every trained parameter: `f(key, values, gradient)`.
    pub fn update(&mut self, mut f: impl FnMut(&str, &mut [f32], &[f32])) {
        for id in 0..self.params.entries().len() {
            let (entry, v, g) = self.params.value_and_grad_mut(id);
            if entry.kind == ParamKind::Weight {
                f(&entry.key, v, g);
            }
        }
        self.dirty = true;
    }

    /// Plain SGD: `w -= lr · grad`.
    pub fn sgd(&mut self, lr: f32) {
        self.update(|_, v, g| v.iter_mut().zip(g).for_each(|(v, g)| *v -= lr * g));
    }

    /// The logits of the last pass, `[n][classes]`.
    pub fn logits(&self) -> &[f32] {
        &self.logits[..self.last_n * self.plan.spec.num_classes]
    }

    /// The dropout masks of the last training step (one per classifier Dropout, `[n][width]`).
    pub fn dropout_masks(&self) -> Vec<&[f32]> {
        let n = self.last_n;
        self.head
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l, HeadNode::Dropout))
            .map(|(i, _)| &self.masks[i][..n * self.head_widths[i + 1]])
            .collect()
    }

    /// Starts accumulating per-layer times over the following passes (for speed work).
    pub fn start_profile(&mut self) {
        self.profile = Some(Vec::new());
    }

    /// The accumulated times, and stops profiling.
    pub fn take_profile(&mut self) -> Vec<LayerTime> {
        self.profile.take().unwrap_or_default()
    }

    fn check_batch(&self, images: &[f32], min: usize) -> Result<usize> {
        let per = 3 * self.config.height * self.config.width;
        let n = images.len() / per;
        if !images.len().is_multiple_of(per) || n < min || n > self.config.batch {
            return Err(EngineError::Input(format!(
                "expected [N, 3, {}, {}] with {min} <= N <= {}, got {} values",
                self.config.height,
                self.config.width,
                self.config.batch,
                images.len()
            )));
        }
        Ok(n)
    }

    /// One training step on `images` (NCHW, `[n, 3, height, width]`, 2 ≤ n ≤ batch) with
    /// `labels` (`[n]`): forward in train mode (running statistics updated), loss, backward.
    /// Returns the loss; gradients by [`Trainer::grad`], logits by [`Trainer::logits`].
    pub fn step(&mut self, images: &[f32], labels: &[usize]) -> Result<f32> {
        let n = self.check_batch(images, 2)?;
        let classes = self.plan.spec.num_classes;
        if labels.len() != n || labels.iter().any(|&l| l >= classes) {
            return Err(EngineError::Input(format!(
                "{} labels for {n} images, each below {classes} expected",
                labels.len()
            )));
        }
        let bn = if self.config.frozen_bn {
            BnStats::Running
        } else {
            BnStats::Batch { momentum: Some(self.config.bn_momentum) }
        };
        Ok(self.pass(images, n, Some(labels), bn) as f32)
    }

    /// Eval-mode forward (running statistics, no dropout): the logits `[n][classes]`. (It
    /// overwrites the activations the last step kept; its gradients stay readable.)
    pub fn eval(&mut self, images: &[f32]) -> Result<&[f32]> {
        let n = self.check_batch(images, 1)?;
        self.pass(images, n, None, BnStats::Running);
        Ok(self.logits())
    }

    /// Train-mode forward without dropout or backward: BatchNorm normalises with the batch's
    /// statistics, and the running statistics move towards them by `momentum` (`None`: they stay
    /// as they are; `Some(1.0)`: they become the batch's). The logits `[n][classes]`.
    pub fn forward_batch_stats(&mut self, images: &[f32], momentum: Option<f64>) -> Result<&[f32]> {
        let n = self.check_batch(images, 2)?;
        self.pass(images, n, None, BnStats::Batch { momentum });
        Ok(self.logits())
    }

    /// BatchNorm recalibration: every running mean and variance becomes the plain average of
    /// the batch statistics over `batches` (NCHW, at least 2 images each), weights untouched,
    /// as torch does with `momentum=None`. Returns the number of batches used (none: the
    /// statistics are unchanged). [`Trainer::start_bn_average`] does the same one batch at a time.
    pub fn recalibrate_bn<'a>(&mut self, batches: impl IntoIterator<Item = &'a [f32]>) -> Result<usize> {
        let mut average = self.start_bn_average();
        for images in batches {
            self.add_bn_batch(&mut average, images)?;
        }
        Ok(self.finish_bn_average(average))
    }

    /// Starts a BatchNorm recalibration fed batch by batch ([`Trainer::add_bn_batch`],
    /// [`Trainer::finish_bn_average`]).
    pub fn start_bn_average(&self) -> BnAverage {
        let ids: Vec<usize> = (0..self.params.entries().len())
            .filter(|&id| self.params.entries()[id].kind == ParamKind::Buffer)
            .collect();
        let sums = ids.iter().map(|&id| vec![0.0; self.params.value(id).len()]).collect();
        BnAverage { ids, sums, count: 0 }
    }

    /// Adds one batch's statistics to the average (the running statistics hold this batch's
    /// until [`Trainer::finish_bn_average`]).
    pub fn add_bn_batch(&mut self, average: &mut BnAverage, images: &[f32]) -> Result<()> {
        self.forward_batch_stats(images, Some(1.0))?;
        for (&id, sum) in average.ids.iter().zip(&mut average.sums) {
            sum.iter_mut().zip(self.params.value(id)).for_each(|(s, &v)| *s += v as f64);
        }
        average.count += 1;
        Ok(())
    }

    /// Sets the running statistics to the average (unless no batch was added) and returns the
    /// number of batches.
    pub fn finish_bn_average(&mut self, average: BnAverage) -> usize {
        if average.count > 0 {
            for (&id, sum) in average.ids.iter().zip(&average.sums) {
                let values = self.params.value_mut(id);
                values.iter_mut().zip(sum).for_each(|(v, s)| *v = (s / average.count as f64) as f32);
            }
        }
        average.count
    }

    /// Rebuilds the layers' packed weights from the store if a value changed.
    fn sync(&mut self) {
        if !self.dirty {
            return;
        }
        let start = std::time::Instant::now();
        let params = &self.params;
        let lanes = self.isa.lanes();
        let nodes = &mut self.nodes;
        self.pool.install(|| {
            nodes.par_iter_mut().for_each(|node| match node {
                Node::Conv(c) => {
                    let w = params.value(c.weight);
                    if let Some(d) = c.dense.as_mut() {
                        d.pack(w, None, lanes);
                    } else {
                        let kk = c.layer.kernel * c.layer.kernel;
                        for ch in 0..c.layer.out_channels {
                            for t in 0..kk {
                                c.taps[t * c.cout_p + ch] = w[ch * kk + t];
                            }
                        }
                    }
                }
                Node::Se(se) => {
                    for fc in [&mut se.fc1, &mut se.fc2] {
                        let b = fc.bias.map(|b| params.value(b));
                        fc.pack(params.value(fc.weight), b, lanes);
                    }
                }
            })
        });
        for layer in &mut self.head {
            if let HeadNode::Linear(d) = layer {
                let b = d.bias.map(|b| params.value(b));
                d.pack(params.value(d.weight), b, lanes);
            }
        }
        self.dirty = false;
        if let Some(p) = self.profile.as_mut() {
            let seconds = start.elapsed().as_secs_f64();
            match p.iter_mut().find(|e| e.kind == "sync") {
                Some(e) => e.seconds += seconds,
                None => p.push(LayerTime { key: "repack weights".into(), kind: "sync", phase: "forward", seconds }),
            }
        }
    }

    /// Forward (and with labels: dropout, loss and backward). Returns the loss (0 without
    /// labels).
    fn pass(&mut self, images: &[f32], n: usize, labels: Option<&[usize]>, bn: BnStats) -> f64 {
        self.sync();
        let train = labels.is_some();
        let ctx = Ctx {
            isa: self.isa,
            base: Ptr::new(self.arena.ptr(Buf::default())),
            n,
            chunks: n.min(REDUCE_CHUNKS),
            bn,
            eps: self.plan.spec.norm_eps,
        };
        self.last_n = n;
        let classes = self.plan.spec.num_classes;
        let Trainer {
            pool,
            nodes,
            params,
            head,
            head_widths,
            head_x,
            head_g,
            masks,
            bn_partials,
            dw_partials,
            pool_sums,
            logits,
            rng,
            grad_bufs,
            config,
            profile,
            ..
        } = self;
        let mut clock = profile.as_mut().map(|p| (p, std::time::Instant::now()));
        let mut lap = |kind: &'static str, key: &str, phase: &'static str| {
            if let Some((p, t)) = clock.as_mut() {
                let dt = t.elapsed().as_secs_f64();
                *t = std::time::Instant::now();
                match p.iter_mut().find(|e| e.key == key && e.phase == phase) {
                    Some(e) => e.seconds += dt,
                    None => p.push(LayerTime { key: key.to_string(), kind, phase, seconds: dt }),
                }
            }
        };
        pool.install(|| {
            let isa = ctx.isa;
            for node in nodes.iter_mut() {
                match node {
                    Node::Conv(c) => {
                        forward::conv_forward(&ctx, c, images);
                        lap(c.kind.name(), &c.layer.conv_key, "forward conv");
                        forward::bn_forward(&ctx, c, params, bn_partials);
                        lap(c.kind.name(), &c.layer.conv_key, "forward bn+act");
                    }
                    Node::Se(se) => {
                        forward::se_forward(&ctx, se);
                        lap("squeeze-excite", &se.se.key, "forward");
                    }
                }
            }
            let (out_map, rows, cp) = match nodes.last().expect("a model has layers") {
                Node::Conv(c) => (c.y, c.out_rows_per_image(), c.cout_p),
                Node::Se(se) => (se.output, se.h * se.w, se.cp),
            };
            forward::pool_forward(isa, Ptr::new(ctx.base.at(out_map.offset)), n, rows, cp, pool_sums, &mut head_x[0]);
            forward::head_forward(
                isa,
                head,
                head_widths,
                head_x,
                masks,
                n,
                config.dropout,
                if train { Some(&mut *rng) } else { None },
            );
            let ld = *head_widths.last().expect("a classifier");
            let out = head_x.last().expect("a classifier");
            for r in 0..n {
                logits[r * classes..(r + 1) * classes].copy_from_slice(&out[r * ld..r * ld + classes]);
            }
            let Some(labels) = labels else { return 0.0 };
            let last = head_g.len() - 1;
            let loss = forward::cross_entropy(out, n, classes, ld, labels, config.label_smoothing, &mut head_g[last]);
            lap("head", "pool+classifier+loss", "forward");
            // Backward.
            backward::head_backward(isa, head, head_widths, head_x, head_g, masks, n, params);
            let buf = |i: usize| Ptr::new(ctx.base.at(grad_bufs[i].offset));
            backward::pool_backward(isa, &head_g[0], n, rows, cp, buf(0));
            lap("head", "pool+classifier", "backward");
            let free = |a: usize, b: Option<usize>| (0..3).find(|&i| i != a && Some(i) != b).expect("three buffers");
            let mut cur = 0usize;
            let mut skip: Option<usize> = None;
            for node in nodes.iter_mut().rev() {
                match node {
                    Node::Conv(c) => {
                        let dz = if c.residual.is_some() {
                            skip = Some(cur);
                            free(cur, skip)
                        } else {
                            cur
                        };
                        backward::bn_backward(&ctx, c, params, bn_partials, buf(cur), buf(dz));
                        lap(c.kind.name(), &c.layer.conv_key, "backward bn+act");
                        let dx = (c.kind != ConvKind::Stem).then(|| free(dz, skip));
                        backward::conv_backward(&ctx, c, params, dw_partials, buf(dz), dx.map(buf));
                        if let Some(dx) = dx {
                            if c.opens_residual {
                                let s = skip.take().expect("a residual block's skip gradient");
                                let len = n * c.h_in * c.w_in * c.cin_p;
                                let (d, sp) = (buf(dx), buf(s));
                                forward::par_ranges(len / 16, 256, |a, b| unsafe {
                                    rows::add_into(isa, d.at(a * 16), sp.at(a * 16), (b - a) * 16)
                                });
                            }
                            cur = dx;
                        }
                        lap(c.kind.name(), &c.layer.conv_key, "backward conv");
                    }
                    Node::Se(se) => {
                        let dx = free(cur, skip);
                        backward::se_backward(&ctx, se, params, buf(cur), buf(dx));
                        cur = dx;
                        lap("squeeze-excite", &se.se.key, "backward");
                    }
                }
            }
            loss
        })
    }
}
