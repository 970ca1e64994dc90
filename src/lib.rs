//! # mobilenet
//!
//! MobileNet V1, V2, V3-Large and V3-Small on [burn](https://burn.dev), faithful to the papers
//! and weight-compatible with torchvision: module paths equal torchvision's `state_dict` keys,
//! so `.pth` and safetensors checkpoints load directly.
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
//! Where things live: [`blocks`] (conv-BN-act, separable, inverted residuals, SE),
//! [`v1`], [`v2`], [`v3`] (one model each, its table at the top), [`zoo`] (names, config, the
//! common [`MobileNet`] API), [`weights`] (load/save), [`summary`] (layer table, params, MACs),
//! [`sequential`] (how module paths become torchvision keys), [`tensor_io`] (safetensors
//! tensors in and out), [`preprocess`] (image loading, torchvision's eval transform),
//! [`labels`] (class names), [`predict`] (classifying image files), [`cli`].

pub mod augment;
pub mod blocks;
pub mod chart;
pub mod checkpoint;
pub mod cli;
pub mod cli_train;
pub mod data;
pub mod engine;
pub mod error;
pub mod evaluate;
pub mod labels;
pub mod loader;
pub mod predict;
pub mod preprocess;
pub mod optim;
pub mod params;
pub mod schedule;
pub mod sequential;
pub mod summary;
pub mod tensor_io;
pub mod train;
pub mod v1;
pub mod v2;
pub mod v3;
pub mod weights;
pub mod zoo;

pub use error::{Error, Result};
pub use v1::MobileNetV1;
pub use v2::MobileNetV2;
pub use v3::MobileNetV3;
pub use zoo::{Arch, MobileNet, ModelConfig};
