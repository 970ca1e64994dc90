//! The training loop's steps on the hand-written CPU trainer (`mobilenet_engine::train`) instead
//! of burn: `train --train-backend engine`, the default on the CPU.
//!
//! Everything around the steps is the loop's own: data, schedule, evaluation, metrics,
//! checkpoints. The trainer holds the weights during an epoch (and the EMA a host copy); at its
//! end they are written back into the run's burn models and the optimizer state into its burn
//! optimizer, so evaluation and checkpoints (in the one format both paths read) see exactly what
//! the trainer has. The update rules are the crate's optimizer ([`Optimizer`] over host
//! vectors) and EMA ([`ema::blend`]), the same code the burn path runs. BatchNorm recalibration
//! and the train/eval-mode probe run on the trainer too.

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use mobilenet_engine::train::{TrainConfig as EngineTrainConfig, Trainer};

use crate::data::loader::Batch;
use crate::error::{Error, Result};
use crate::io::params;
use crate::models::MobileNet;
use crate::training::config::TrainConfig;
use crate::training::ema::{self, Ema};
use crate::training::evaluate::host_cross_entropy;
use crate::training::optim::{HostVector, Optimizer};

/// The trainer and the optimizer state of a run on the engine path.
pub struct CpuSteps {
    trainer: Trainer,
    optimizer: Optimizer<HostVector>,
    /// Each tensor's rank (weight decay skips vectors).
    ranks: HashMap<String, usize>,
    /// The EMA's host copy, in the trainer's tensor order (parameters and running statistics).
    ema: Option<Vec<Vec<f32>>>,
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A trainer for `model`'s weights and statistics (torch layouts).
fn trainer_for(model: &MobileNet, config: EngineTrainConfig) -> Result<Trainer> {
    Ok(Trainer::from_tensors(&model.config().spec, config, &params::torch_layout(model))?)
}

/// `model` with every tensor the trainer holds (weights and running statistics) replaced by the
/// values `value(key)` gives (torch layouts; Linear weights transposed back to burn's).
fn with_values<'a>(model: MobileNet, value: impl Fn(&str) -> Option<&'a [f32]>) -> MobileNet {
    let plan = model.plan();
    params::map(model, |key, flat| {
        let values = value(key)?;
        let values = if plan.is_linear_weight(key) {
            let (inp, out) = (flat.dims[0], flat.dims[1]);
            params::transpose(values, out, inp)
        } else {
            values.to_vec()
        };
        let n = values.len();
        Some(Tensor::from_data(TensorData::new(values, [n]), &flat.value.device()))
    })
}

impl CpuSteps {
    /// A trainer holding `model`'s weights and running statistics, `optimizer`'s state and the
    /// EMA's weights.
    pub fn new(config: &TrainConfig, model: &MobileNet, optimizer: &Optimizer, ema: Option<&Ema>) -> Result<Self> {
        let size = config.augment.image_size;
        let engine_config = EngineTrainConfig::new(config.model.spec.arch, config.batch_size, size, size)
            .with_threads(threads())
            .with_dropout(config.model.dropout as f32)
            .with_label_smoothing(config.label_smoothing)
            .with_bn_momentum(config.model.norm_momentum)
            .with_frozen_bn(config.freeze_bn)
            .with_seed(config.seed);
        let trainer = trainer_for(model, engine_config)?;
        let ranks = trainer.params().map(|(k, shape, _)| (k.to_string(), shape.len())).collect();
        let mut host = Optimizer::<HostVector>::new(optimizer.config);
        host.load_host_state(optimizer.steps, optimizer.state_tensors());
        let ema = match ema.and_then(|e| e.model.as_ref()) {
            Some(m) => {
                let mut stored = params::torch_layout(m);
                let mut values = Vec::new();
                for (key, _, _) in trainer.params() {
                    let (_, data) = stored
                        .remove(key)
                        .ok_or_else(|| Error::InvalidConfig(format!("the EMA has no tensor '{key}'")))?;
                    values.push(data);
                }
                Some(values)
            }
            None => None,
        };
        Ok(Self { trainer, optimizer: host, ranks, ema })
    }

    /// Before an epoch: dropout masks drawn from (seed, epoch), so a resumed run repeats them.
    pub fn start_epoch(&mut self, seed: u64, epoch: usize) {
        self.trainer.reseed_dropout(seed.wrapping_add(epoch as u64));
    }

    /// One step: forward, loss, backward, gradient clipping, the update of every trainable
    /// tensor, and the EMA's. Returns the loss and the number of correct top-1 predictions (a
    /// non-finite loss alone, with no update).
    pub fn step(
        &mut self,
        batch: &Batch,
        lr: f64,
        trainable: &dyn Fn(&str) -> bool,
        ema: Option<&mut Ema>,
    ) -> Result<(f64, usize)> {
        let labels: Vec<usize> = batch.labels.iter().map(|&l| l as usize).collect();
        let loss = self.trainer.step(&batch.images, &labels)? as f64;
        if !loss.is_finite() {
            return Ok((loss, 0)); // the loop stops; nothing is updated
        }
        let classes = self.trainer.plan().spec.num_classes;
        let hits = self
            .trainer
            .logits()
            .chunks_exact(classes)
            .zip(&labels)
            .filter(|(row, &label)| (0..classes).fold(0, |best, j| if row[j] > row[best] { j } else { best }) == label)
            .count();
        // Global-norm clipping over the trainable tensors, as the burn path's optimizer does.
        let scale = match self.optimizer.config.clip_grad_norm {
            Some(max_norm) => {
                let total: f64 = self
                    .trainer
                    .grads()
                    .filter(|(k, _, _)| trainable(k))
                    .map(|(_, _, g)| g.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
                    .sum::<f64>()
                    .sqrt();
                (max_norm / (total + 1e-6)).min(1.0)
            }
            None => 1.0,
        };
        self.optimizer.steps += 1;
        let (optimizer, ranks) = (&mut self.optimizer, &self.ranks);
        self.trainer.update(|key, value, grad| {
            if trainable(key) {
                optimizer.update_in_place(key, value, ranks[key], grad, scale, lr);
            }
        });
        if let (Some(values), Some(ema)) = (self.ema.as_mut(), ema) {
            let d = ema.next_decay();
            for ((_, _, current), e) in self.trainer.params().zip(values.iter_mut()) {
                ema::blend(e, current, d);
            }
        }
        Ok((loss, hits))
    }

    /// The trainer's weights and statistics written into `model`, its optimizer state into
    /// `optimizer` and its EMA into `ema` (for evaluation and checkpoints).
    pub fn write_back(
        &self,
        model: MobileNet,
        optimizer: &mut Optimizer,
        ema: Option<&mut Ema>,
        device: &Device,
    ) -> Result<MobileNet> {
        let model = with_values(model, |key| self.trainer.param(key));
        optimizer.load_state(self.optimizer.steps, self.optimizer.state_tensors(), device)?;
        if let (Some(values), Some(ema)) = (self.ema.as_ref(), ema) {
            let by_key: HashMap<&str, &[f32]> =
                self.trainer.params().map(|(k, _, _)| k).zip(values.iter().map(Vec::as_slice)).collect();
            let stored = ema.model.take().expect("the EMA model");
            ema.set_model(with_values(stored, |key| by_key.get(key).copied()));
        }
        Ok(model)
    }

    /// `model` (the run's current weights, as written back) with its BatchNorm statistics
    /// recalibrated on the trainer over `batches`; the trainer's own statistics are kept.
    pub fn recalibrated(
        &mut self,
        model: MobileNet,
        batches: impl Iterator<Item = Result<Batch>>,
    ) -> Result<MobileNet> {
        let saved: Vec<(String, Vec<f32>)> = self
            .trainer
            .params()
            .filter(|(k, _, _)| params::is_running_stat(k))
            .map(|(k, _, v)| (k.to_string(), v.to_vec()))
            .collect();
        let result = recalibrate_on(&mut self.trainer, batches);
        let model =
            result.map(|_| with_values(model, |key| self.trainer.param(key).filter(|_| params::is_running_stat(key))));
        for (key, values) in &saved {
            self.trainer.load(key, values)?;
        }
        model
    }

    /// The BatchNorm-lag probe on one batch: the loss (no smoothing) with batch statistics and
    /// with the running statistics, the trainer's state unchanged.
    pub fn train_eval_gap(&mut self, batch: &Batch) -> Result<(f64, f64)> {
        let classes = self.trainer.plan().spec.num_classes;
        let mean_loss = |logits: &[f32]| {
            logits
                .chunks_exact(classes)
                .zip(&batch.labels)
                .map(|(z, &y)| host_cross_entropy(z, y as usize))
                .sum::<f64>()
                / batch.len() as f64
        };
        let train = mean_loss(self.trainer.forward_batch_stats(&batch.images, None)?);
        let eval = mean_loss(self.trainer.eval(&batch.images)?);
        Ok((train, eval))
    }
}

/// Recalibrates `trainer`'s BatchNorm statistics over `batches` (those of fewer than two images
/// are skipped); returns how many were used.
fn recalibrate_on(trainer: &mut Trainer, batches: impl Iterator<Item = Result<Batch>>) -> Result<usize> {
    let mut average = trainer.start_bn_average();
    for batch in batches {
        let batch = batch?;
        if batch.len() >= 2 {
            trainer.add_bn_batch(&mut average, &batch.images)?;
        }
    }
    Ok(trainer.finish_bn_average(average))
}

/// BatchNorm recalibration of `model` on a CPU trainer of its own (`recalibrate-bn`, `eval
/// --recalibrate-bn`): batches of up to `batch_size` images of one size.
pub fn recalibrate_bn(
    model: MobileNet,
    batches: impl Iterator<Item = Result<Batch>>,
    batch_size: usize,
    size: usize,
) -> Result<MobileNet> {
    let config =
        EngineTrainConfig::new(model.config().spec.arch, batch_size.max(2), size, size).with_threads(threads());
    let mut trainer = trainer_for(&model.valid(), config)?;
    recalibrate_on(&mut trainer, batches)?;
    Ok(with_values(model, |key| trainer.param(key).filter(|_| params::is_running_stat(key))))
}
