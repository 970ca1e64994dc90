//! Weights and tensors in and out.
//!
//! - [`weights`]: load (ours, torchvision `.pth` zip or legacy, safetensors) and save, strict.
//! - [`tensor_io`]: host tensors in safetensors files, and atomic writes.
//! - [`params`]: a module's parameters and gradients by torchvision key.

pub mod params;
pub mod tensor_io;
pub mod weights;
