//! Training on burn (CPU or GPU): the loop and everything it is made of.
//!
//! - [`config`]: [`TrainConfig`], what defines a run (stored in every checkpoint).
//! - [`metrics`]: per-epoch metrics and `metrics.csv`.
//! - [`trainer`]: the loop, started fresh or resumed ([`trainer::Start`]).
//! - [`cpu`]: the loop's steps on the CPU trainer (`--train-backend engine`) instead of burn.
//! - [`ema`]: the weight EMA, one rule for both step paths.
//! - [`checkpoint`]: atomic checkpoints (weights, optimizer state, EMA, progress).
//! - [`optim`]: SGD-Nesterov, RMSProp-TF, AdamW, weight-decay exclusions, clipping.
//! - [`schedule`]: learning-rate schedules with warmup.
//! - [`evaluate`]: loss and accuracy, BatchNorm recalibration, the train/eval probe.
//! - [`curves`]: training curves and run comparisons as PNG charts.
//! - [`op_profile`]: each op of a training step timed alone.

pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod curves;
pub mod ema;
pub mod evaluate;
pub mod metrics;
pub mod op_profile;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use config::{TrainBackend, TrainConfig};
pub use trainer::{run, Start};
