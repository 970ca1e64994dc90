//! The training loop's steps on the hand-written CPU trainer (`mobilenet_engine::train`) instead
//! of burn: `train --train-backend engine`.
//!
//! Everything around the steps is the loop's own: data, schedule, evaluation, metrics,
//! checkpoints. The trainer holds the weights during an epoch; at its end they are written back
//! into the run's burn model and the optimizer state into its burn optimizer, so evaluation and
//! checkpoints (in the one format both paths read) see exactly what the trainer has. The update
//! rules are the crate's optimizer ([`Optimizer`] over host vectors), the same code the burn path
//! runs.

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};
use mobilenet_engine::train::{TrainConfig as EngineTrainConfig, Trainer};

use crate::data::loader::Batch;
use crate::error::{Error, Result};
use crate::io::params;
use crate::models::MobileNet;
use crate::training::config::TrainConfig;
use crate::training::optim::{HostVector, Optimizer};

/// The trainer and the optimizer state of a run on the engine path.
pub struct CpuSteps {
    trainer: Trainer,
    optimizer: Optimizer<HostVector>,
    /// Each tensor's rank (weight decay skips vectors).
    ranks: HashMap<String, usize>,
}

impl CpuSteps {
    /// A trainer holding `model`'s weights and running statistics, and `optimizer`'s state.
    pub fn new(config: &TrainConfig, model: &MobileNet, optimizer: &Optimizer) -> Result<Self> {
        if config.ema_decay.is_some() || config.freeze_bn {
            return Err(Error::InvalidConfig(
                "--train-backend engine does not support --ema-decay or --freeze-bn yet; use --train-backend burn"
                    .into(),
            ));
        }
        let size = config.augment.image_size;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let engine_config = EngineTrainConfig::new(config.model.spec.arch, config.batch_size, size, size)
            .with_threads(threads)
            .with_dropout(config.model.dropout as f32)
            .with_label_smoothing(config.label_smoothing)
            .with_bn_momentum(config.model.norm_momentum)
            .with_seed(config.seed);
        let trainer = Trainer::from_tensors(&config.model.spec, engine_config, &params::torch_layout(model))?;
        let ranks = trainer.params().map(|(k, shape, _)| (k.to_string(), shape.len())).collect();
        let mut host = Optimizer::<HostVector>::new(optimizer.config);
        host.load_host_state(optimizer.steps, optimizer.state_tensors());
        Ok(Self { trainer, optimizer: host, ranks })
    }

    /// Before an epoch: dropout masks drawn from (seed, epoch), so a resumed run repeats them.
    pub fn start_epoch(&mut self, seed: u64, epoch: usize) {
        self.trainer.reseed_dropout(seed.wrapping_add(epoch as u64));
    }

    /// One step: forward, loss, backward, gradient clipping, and the update of every trainable
    /// tensor. Returns the loss and the number of correct top-1 predictions (a non-finite loss
    /// alone, with no update).
    pub fn step(&mut self, batch: &Batch, lr: f64, trainable: &dyn Fn(&str) -> bool) -> Result<(f64, usize)> {
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
            if !trainable(key) {
                return;
            }
            let mut grad = HostVector(grad.to_vec());
            if scale < 1.0 {
                grad = crate::training::optim::OptVector::mul_scalar(grad, scale);
            }
            let next = optimizer.update_vector(key, HostVector(value.to_vec()), ranks[key], grad, lr);
            value.copy_from_slice(&next.0);
        });
        Ok((loss, hits))
    }

    /// The trainer's weights and statistics written into `model`, and its optimizer state into
    /// `optimizer` (for evaluation and checkpoints).
    pub fn write_back(&self, model: MobileNet, optimizer: &mut Optimizer, device: &Device) -> Result<MobileNet> {
        let plan = model.plan();
        let model = params::map(model, |key, flat| {
            let values = self.trainer.param(key)?;
            let values = if plan.is_linear_weight(key) {
                let (inp, out) = (flat.dims[0], flat.dims[1]);
                params::transpose(values, out, inp)
            } else {
                values.to_vec()
            };
            let n = values.len();
            Some(Tensor::from_data(TensorData::new(values, [n]), &flat.value.device()))
        });
        optimizer.load_state(self.optimizer.steps, self.optimizer.state_tensors(), device)?;
        Ok(model)
    }
}
