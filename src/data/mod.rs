//! Images in: data sets, augmentation, batching, eval preprocessing, class names.
//!
//! - [`datasets`]: the embedded default, IDX (Fashion-MNIST, MNIST), CIFAR, ImageFolder trees.
//! - [`augment`]: training crops and flips, the eval transform of a data set.
//! - [`loader`]: seeded epoch orders and batches prepared on background threads.
//! - [`preprocess`]: torchvision's eval transform (resize, centre crop, normalise) for photos.
//! - [`labels`]: class names (ImageNet's, or a file).

pub mod augment;
pub mod datasets;
pub mod labels;
pub mod loader;
pub mod preprocess;

pub use datasets::{load, load_embedded, load_spec, DataFormat, Dataset, Image, Splits, EMBEDDED};
