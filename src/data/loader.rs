//! Batches produced on background threads while the model trains: a producer thread walks the
//! epoch's order and transforms each batch's images in parallel (rayon), a bounded channel keeps
//! a few batches ready.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::data::augment::AugmentConfig;
use crate::data::Dataset;
use crate::error::{Error, Result};

/// A batch of transformed images `[n, 3, size, size]` and their labels.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub size: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn to_tensors(&self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let n = self.len();
        let images = Tensor::from_data(TensorData::new(self.images.clone(), [n, 3, self.size, self.size]), device);
        let labels = Tensor::from_data(TensorData::new(self.labels.clone(), [n]), device);
        (images, labels)
    }
}

/// Training or evaluation transforms.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Random augmentation seeded by (seed, epoch, sample index).
    Train {
        seed: u64,
        epoch: usize,
    },
    Eval,
}

/// The epoch's sample order: a shuffle seeded by (seed, epoch).
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64)));
    order
}

/// Starts producing batches of `order` on a background thread. A panic while transforming a
/// batch (a bug, or a decoder's) arrives as an error in place of that batch, so the run stops
/// with a message instead of ending its epoch early or dying with a trace.
pub fn spawn(
    dataset: Arc<Dataset>,
    augment: AugmentConfig,
    order: Vec<usize>,
    batch_size: usize,
    mode: Mode,
) -> Receiver<Result<Batch>> {
    let (tx, rx) = sync_channel(4);
    std::thread::spawn(move || {
        for chunk in order.chunks(batch_size.max(1)) {
            let make = || -> Result<Batch> {
                let samples: Vec<Vec<f32>> = chunk
                    .par_iter()
                    .map(|&i| match mode {
                        Mode::Train { seed, epoch } => augment.train(&dataset.images[i], seed, epoch, i),
                        Mode::Eval => augment.eval(&dataset.images[i]),
                    })
                    .collect::<Result<_>>()?;
                Ok(Batch {
                    images: samples.concat(),
                    labels: chunk.iter().map(|&i| dataset.labels[i] as i64).collect(),
                    size: augment.image_size,
                })
            };
            let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)).unwrap_or_else(|panic| {
                Err(Error::InvalidConfig(format!(
                    "preparing a batch failed (images {:?}…): {}",
                    &chunk[..chunk.len().min(4)],
                    panic_message(&panic)
                )))
            });
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return; // The consumer stopped, or the error has been handed over.
            }
        }
    });
    rx
}

/// The message of a caught panic.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a worker thread panicked".into())
}
