//! Learning-rate schedules, evaluated per iteration at a fractional epoch: a linear warmup from
//! `warmup_factor · lr`, then step, exponential, cosine (to `min_lr`) or constant, as in
//! torchvision's classification reference (`--lr-warmup-method linear`, `--lr-scheduler`).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    /// lr · gamma^floor(epoch / step_size)
    Step,
    /// lr · gamma^floor(epoch)
    Exponential,
    /// Half a cosine from lr to min_lr over the epochs after warmup.
    Cosine,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub epochs: usize,
    pub warmup_epochs: f64,
    pub warmup_factor: f64,
    pub step_size: usize,
    pub gamma: f64,
    pub min_lr: f64,
}

impl Schedule {
    /// The learning rate at fractional epoch `t` (epoch + batch / batches_per_epoch).
    pub fn lr(&self, t: f64) -> f64 {
        if t < self.warmup_epochs {
            let f = self.warmup_factor + (1.0 - self.warmup_factor) * t / self.warmup_epochs;
            return self.base_lr * f;
        }
        let after = t - self.warmup_epochs;
        match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Step => self.base_lr * self.gamma.powi((after / self.step_size.max(1) as f64).floor() as i32),
            ScheduleKind::Exponential => self.base_lr * self.gamma.powi(after.floor() as i32),
            ScheduleKind::Cosine => {
                let span = (self.epochs as f64 - self.warmup_epochs).max(1e-9);
                let progress = (after / span).clamp(0.0, 1.0);
                self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}
