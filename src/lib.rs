//! # mobilenet
//!
//! MobileNet V1, V2, V3-Large and V3-Small on [burn](https://burn.dev), faithful to the papers
//! and weight-compatible with torchvision: module paths equal torchvision's `state_dict` keys,
//! so `.pth` and safetensors checkpoints load directly. The CPU inference engine (and the
//! architecture plan every consumer builds from) is the `mobilenet-engine` crate.
//!
//! ```no_run
//! use mobilenet::{Arch, MobileNet, ModelConfig};
//! let device = burn::tensor::Device::flex();
//! let config = ModelConfig::new(Arch::V3Small).with_num_classes(10);
//! let model = MobileNet::new(&config, &device).unwrap().eval_mode();
//! let logits = model.forward(burn::Tensor::zeros([1, 3, 224, 224], &device));
//! assert_eq!(logits.dims(), [1, 10]);
//! ```
//!
//! Where things live:
//! - [`models`]: the burn models, built from the engine crate's resolved plan: blocks, V1, V2,
//!   V3, the common [`MobileNet`] API, key numbering ([`models::sequential`]), the layer table
//!   ([`models::summary`]).
//! - [`io`]: weights in and out (`.pth`, safetensors), tensors by path, atomic writes.
//! - [`data`]: data sets (embedded, IDX, CIFAR, image folders), augmentation, the batch loader,
//!   torchvision's eval preprocessing, class labels.
//! - [`training`]: run configuration and metrics, the loop, checkpoints, optimizers, schedules,
//!   evaluation and BatchNorm recalibration, training curves, the per-op profile.
//! - [`inference`]: the backend choice (engine or burn) and classifying image files.
//! - `cli` (the `mobilenet` binary's commands; not part of the library API) and [`error`].

pub(crate) mod cli;
pub mod data;
pub mod error;
pub mod inference;
pub mod io;
pub mod models;
pub mod training;

pub use error::{Error, Result};
pub use models::{Arch, MobileNet, MobileNetV1, MobileNetV2, MobileNetV3, ModelConfig};

/// The command-line entry point (`src/main.rs` is this one call).
pub fn run_cli() -> anyhow::Result<()> {
    cli::run(cli::parse())
}
