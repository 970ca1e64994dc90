//! Running trained models: the backend choice and classifying image files.
//!
//! - [`backend`]: the CPU engine (`mobilenet-engine`, the default) or burn on any device.
//! - [`predict`]: image files in, top-k classes out, with per-file errors.

pub mod backend;
pub mod predict;
