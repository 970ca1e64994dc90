//! Inference on the CPU engine (crate `mobilenet-engine`), the default behind `predict`, `eval`
//! and `bench`, or on burn (`--backend burn`, and any GPU device).
//!
//! The engine is built from a loaded burn model, so every weight format `weights::load` reads
//! (ours, torchvision .pth, safetensors) runs on it; `mobilenet_engine::Engine::load` reads our
//! safetensors files directly, without burn.

use burn::tensor::{Device, Tensor, TensorData};
pub use mobilenet_engine::{Engine, EngineOptions, Images, Isa, Logits};

use crate::error::Result;
use crate::io::{params, weights};
use crate::models::{MobileNet, ModelConfig};

/// Which implementation runs inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// The fused NHWC CPU engine (mobilenet-engine).
    #[default]
    Engine,
    /// burn, on the chosen device.
    Burn,
}

/// An engine holding `model`'s current weights and BatchNorm statistics (eval mode).
pub fn from_model(model: &MobileNet, options: EngineOptions) -> Result<Engine> {
    Ok(Engine::from_tensors(&model.config().spec, params::torch_layout(model), options)?)
}

/// Loads any weight file `weights::load` reads onto the engine.
pub fn load(path: &std::path::Path, config: Option<&ModelConfig>, options: EngineOptions) -> Result<Engine> {
    let model = weights::load(path, config, &Device::flex())?;
    from_model(&model, options)
}

/// A model ready for inference on one backend. (One per command: boxing the larger variant
/// would buy nothing.)
#[allow(clippy::large_enum_variant)]
pub enum Runner {
    Engine { engine: Engine, config: ModelConfig },
    Burn { model: MobileNet, device: Device },
}

impl Runner {
    /// `model` on `backend`; the engine runs on the CPU with `threads` threads (0: all cores).
    pub fn new(model: MobileNet, backend: Backend, device: &Device, threads: usize) -> Result<Self> {
        match backend {
            Backend::Engine => {
                let mut options = EngineOptions::default();
                if threads > 0 {
                    options = options.with_threads(threads);
                }
                Ok(Runner::Engine { engine: from_model(&model, options)?, config: *model.config() })
            }
            Backend::Burn => Ok(Runner::Burn { model: model.eval_mode(), device: device.clone() }),
        }
    }

    /// An int8 model file (`mobilenet quantize`) on the engine, with `threads` threads (0: all
    /// cores).
    pub fn int8(path: &std::path::Path, threads: usize) -> Result<Self> {
        let mut options = EngineOptions::default();
        if threads > 0 {
            options = options.with_threads(threads);
        }
        let config = weights::read_config(path)?
            .ok_or_else(|| crate::error::Error::file(path, "no model configuration in the int8 file's metadata"))?;
        Ok(Runner::Engine { engine: Engine::load_with(path, options)?, config })
    }

    /// What runs: `engine (avx512)`, `engine int8 (avx512-vnni)`, `burn (flex)`.
    pub fn describe(&self) -> String {
        match self {
            Runner::Engine { engine, .. } => match engine.int8_isa() {
                Some(isa) => format!("engine int8 ({isa})"),
                None => format!("engine ({})", engine.isa()),
            },
            Runner::Burn { .. } => "burn (flex)".to_string(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        match self {
            Runner::Engine { config, .. } => config,
            Runner::Burn { model, .. } => model.config(),
        }
    }

    pub fn num_classes(&self) -> usize {
        self.config().spec.num_classes
    }

    /// Logits `[n][classes]` for `n` NCHW images of `h` x `w`. (Borrowed: the engine reads the
    /// pixels in place; only burn needs its own copy.)
    pub fn logits(&self, data: &[f32], n: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        match self {
            Runner::Engine { engine, .. } => {
                let images = Images::new(data, n, h, w)?;
                Ok(engine.run(&images)?.data)
            }
            Runner::Burn { model, device } => {
                let x = Tensor::<4>::from_data(TensorData::new(data.to_vec(), [n, 3, h, w]), device);
                Ok(model.forward(x).into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 logits"))
            }
        }
    }
}
