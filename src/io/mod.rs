//! Weights and tensors in and out.
//!
//! - [`weights`]: load (ours, torchvision `.pth` zip or legacy, safetensors) and save, strict.
//! - [`tensor_io`]: host tensors in safetensors files.
//! - [`atomic`]: the one way files are written (atomic, refusing special files and inputs).
//! - [`params`]: a module's parameters and gradients by torchvision key.

pub mod atomic;
pub mod params;
pub mod tensor_io;
pub mod weights;
