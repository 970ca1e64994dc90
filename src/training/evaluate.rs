//! Evaluation (loss, top-1, top-5, per-class accuracy), the loss function, BatchNorm
//! recalibration, and the train-mode/eval-mode loss probe behind the BN-lag warning.

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor};
use serde::Serialize;

use crate::data::augment::AugmentConfig;
use crate::data::loader::{self, Batch, Mode};
use crate::data::Dataset;
use crate::error::Result;
use crate::inference::backend::{Backend, Runner};
use crate::io::params;
use crate::models::MobileNet;
use crate::training::config::TrainBackend;
use crate::training::cpu;

/// Cross-entropy over logits with label smoothing ε (torch's definition):
/// (1 - ε) · NLL + ε · mean over classes of -log p. Mean over the batch.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>, smoothing: f64) -> Tensor<1> {
    let [n, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    let nll = logp.clone().gather(1, targets.reshape([n, 1])).mean().neg();
    if smoothing == 0.0 {
        return nll;
    }
    let uniform = logp.mean_dim(1).mean().neg();
    nll.mul_scalar(1.0 - smoothing) + uniform.mul_scalar(smoothing)
}

/// Top-1 and top-5 hits of a batch of logits (host side).
pub fn topk_hits(logits: &[f32], num_classes: usize, labels: &[i64]) -> Vec<(bool, bool)> {
    logits
        .chunks_exact(num_classes)
        .zip(labels)
        .map(|(row, &label)| {
            let target = row[label as usize];
            // Rank = number of classes scoring strictly higher (ties favour the target).
            let rank = row.iter().filter(|&&v| v > target).count();
            (rank == 0, rank < 5)
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassAccuracy {
    pub class: String,
    pub correct: usize,
    pub total: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    pub samples: usize,
    pub loss: f64,
    pub top1: f64,
    pub top5: f64,
    pub per_class: Vec<ClassAccuracy>,
}

/// Evaluates `model` (put in eval mode here) on `data` with the evaluation transform.
pub fn evaluate(
    model: &MobileNet,
    data: &Arc<Dataset>,
    augment: &AugmentConfig,
    batch_size: usize,
    device: &Device,
    on_batch: impl FnMut(usize),
) -> Result<EvalResult> {
    let runner = Runner::new(model.valid(), Backend::Burn, device, 0)?;
    evaluate_with(&runner, data, augment, batch_size, on_batch)
}

/// [`evaluate`] on any backend (the CLI's `eval` runs the CPU engine by default).
pub fn evaluate_with(
    runner: &Runner,
    data: &Arc<Dataset>,
    augment: &AugmentConfig,
    batch_size: usize,
    mut on_batch: impl FnMut(usize),
) -> Result<EvalResult> {
    let k = runner.num_classes();
    let order: Vec<usize> = (0..data.len()).collect();
    let rx = loader::spawn(data.clone(), *augment, order, batch_size, Mode::Eval);
    let mut loss_sum = 0.0;
    let (mut top1, mut top5) = (0usize, 0usize);
    let mut per_class: Vec<ClassAccuracy> =
        data.classes.iter().map(|c| ClassAccuracy { class: c.clone(), correct: 0, total: 0 }).collect();
    for batch in rx {
        let batch = batch?;
        let n = batch.len();
        let values = runner.logits(&batch.images, n, batch.size, batch.size)?;
        loss_sum +=
            values.chunks_exact(k).zip(&batch.labels).map(|(z, &y)| host_cross_entropy(z, y as usize)).sum::<f64>();
        for ((hit1, hit5), &label) in topk_hits(&values, k, &batch.labels).into_iter().zip(&batch.labels) {
            top1 += hit1 as usize;
            top5 += hit5 as usize;
            if let Some(c) = per_class.get_mut(label as usize) {
                c.total += 1;
                c.correct += hit1 as usize;
            }
        }
        on_batch(n);
    }
    let n = data.len().max(1) as f64;
    Ok(EvalResult { samples: data.len(), loss: loss_sum / n, top1: top1 as f64 / n, top5: top5 as f64 / n, per_class })
}

/// −log softmax(z)[label], in f64 (log-sum-exp with the max subtracted).
pub(crate) fn host_cross_entropy(z: &[f32], label: usize) -> f64 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    lse - z.get(label).copied().unwrap_or(f32::NAN) as f64
}

/// The batches BatchNorm recalibration averages over: `batches` of `batch_size` training
/// images with the evaluation transform, in a fixed order from `seed`.
pub fn recalibration_batches(
    data: &Arc<Dataset>,
    augment: &AugmentConfig,
    batches: usize,
    batch_size: usize,
    seed: u64,
) -> impl Iterator<Item = Result<Batch>> {
    let order = loader::epoch_order(data.len(), seed, usize::MAX);
    let take = (batches * batch_size).min(order.len());
    loader::spawn(data.clone(), *augment, order[..take].to_vec(), batch_size, Mode::Eval).into_iter()
}

/// Recomputes every BatchNorm's running statistics over `batches` training batches (evaluation
/// transform, fixed order from `seed`), with the weights frozen: the running mean and variance
/// become the plain average of the per-batch statistics, as `momentum=None` does in torch.
/// This removes the lag of slow running averages (V3's momentum 0.01) behind the weights.
/// On the CPU trainer ([`TrainBackend::Engine`]) or burn on `device`.
#[allow(clippy::too_many_arguments)]
pub fn recalibrate_bn(
    model: MobileNet,
    data: &Arc<Dataset>,
    augment: &AugmentConfig,
    batches: usize,
    batch_size: usize,
    seed: u64,
    backend: TrainBackend,
    device: &Device,
) -> Result<MobileNet> {
    let source = recalibration_batches(data, augment, batches, batch_size, seed);
    match backend {
        TrainBackend::Engine => cpu::recalibrate_bn(model, source, batch_size, augment.image_size),
        TrainBackend::Burn => recalibrate_bn_burn(model, source, device),
    }
}

/// [`recalibrate_bn`] on burn.
pub fn recalibrate_bn_burn(
    model: MobileNet,
    batches: impl Iterator<Item = Result<Batch>>,
    device: &Device,
) -> Result<MobileNet> {
    let model = model.valid();
    // A copy whose BatchNorms replace their statistics with each batch's (momentum 1).
    let mut config = *model.config();
    config.norm_momentum = 1.0;
    let values = params::collect(&model);
    let probe = MobileNet::new(&config, device)?;
    let probe = params::map(probe, |path, _| values.get(path).map(|f| f.value.clone())).train_mode();
    let mut sums: std::collections::BTreeMap<String, Tensor<1>> = Default::default();
    let mut count = 0usize;
    for batch in batches {
        let batch = batch?;
        if batch.len() < 2 {
            continue;
        }
        let (x, _) = batch.to_tensors(device);
        let _ = probe.forward_features(x);
        for (path, flat) in params::collect(&probe) {
            if params::is_running_stat(&path) {
                let entry = sums.entry(path).or_insert_with(|| flat.value.zeros_like());
                *entry = entry.clone() + flat.value;
            }
        }
        count += 1;
    }
    if count == 0 {
        return Ok(model);
    }
    Ok(params::map(model, |path, _| sums.get(path).map(|s| s.clone().div_scalar(count as f64))))
}

/// The loss on one batch in train mode (batch statistics) and in eval mode (running
/// statistics), without changing the model. A large gap means the running statistics do not
/// describe the current weights.
pub fn train_eval_gap(model: &MobileNet, batch: &Batch, device: &Device) -> (f64, f64) {
    let plain = model.valid();
    let (x, y) = batch.to_tensors(device);
    let eval_loss = cross_entropy(plain.clone().eval_mode().forward(x.clone()), y.clone(), 0.0).into_scalar::<f32>();
    // `valid()` gave this copy its own running statistics, so the train-mode pass updates only it.
    let train_loss = cross_entropy(plain.train_mode().forward(x), y, 0.0).into_scalar::<f32>();
    (train_loss as f64, eval_loss as f64)
}
