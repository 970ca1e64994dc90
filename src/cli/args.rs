//! Arguments shared by several commands: the model flags, the device and backend, the data
//! and its transforms, and the eval preprocessing.

use anyhow::bail;
use burn::tensor::Device;
use clap::Args;

use crate::data::augment::AugmentConfig;
use crate::data::preprocess::Preprocess;
use crate::data::{self, DataFormat};
use crate::inference::backend::{Backend, Runner};
use crate::io::weights;
use crate::models::{Arch, MobileNet, ModelConfig};

/// Options that choose and shape a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// mobilenet_v1, mobilenet_v2, mobilenet_v3_large or mobilenet_v3_small (short: v1, v2, v3_large, v3_small).
    #[arg(long)]
    pub model: Option<String>,
    /// Width multiplier α (channels go through _make_divisible(c·α, 8)).
    #[arg(long)]
    pub width_mult: Option<f64>,
    /// Number of output classes.
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// BatchNorm epsilon (default: 1e-5 for V1/V2, 1e-3 for V3).
    #[arg(long)]
    pub bn_eps: Option<f64>,
    /// BatchNorm momentum, PyTorch convention (default: 0.1 for V1/V2, 0.01 for V3).
    #[arg(long)]
    pub bn_momentum: Option<f64>,
}

impl ModelArgs {
    /// The configuration these flags describe: the model's defaults with the flags applied, or,
    /// with `base` (what a weight file's metadata says), that configuration, which the flags
    /// must agree with: the file's weights have that shape, so a flag that differs is an error
    /// rather than silently ignored.
    pub fn config(&self, base: Option<ModelConfig>) -> anyhow::Result<Option<ModelConfig>> {
        if let Some(base) = base {
            let differs = |flag: &str, given: Option<String>, stored: String| -> anyhow::Result<()> {
                match given {
                    Some(given) if given != stored => bail!(
                        "{flag} {given} disagrees with the weights, which hold {stored} (from their metadata); \
                         drop the flag"
                    ),
                    _ => Ok(()),
                }
            };
            if let Some(name) = &self.model {
                let arch: Arch = name.parse()?;
                differs("--model", Some(arch.to_string()), base.spec.arch.to_string())?;
            }
            differs("--width-mult", self.width_mult.map(|v| v.to_string()), base.spec.width_mult.to_string())?;
            differs("--num-classes", self.num_classes.map(|v| v.to_string()), base.spec.num_classes.to_string())?;
            differs("--bn-eps", self.bn_eps.map(|v| v.to_string()), base.spec.norm_eps.to_string())?;
            differs("--bn-momentum", self.bn_momentum.map(|v| v.to_string()), base.norm_momentum.to_string())?;
            base.validate()?;
            return Ok(Some(base));
        }
        let Some(name) = &self.model else {
            return Ok(None);
        };
        let mut config = ModelConfig::new(name.parse()?);
        if let Some(w) = self.width_mult {
            config.spec.width_mult = w;
        }
        if let Some(k) = self.num_classes {
            config.spec.num_classes = k;
        }
        if let Some(eps) = self.bn_eps {
            config.spec.norm_eps = eps;
        }
        if let Some(m) = self.bn_momentum {
            config.norm_momentum = m;
        }
        config.validate()?;
        Ok(Some(config))
    }
}

/// The most threads an option may ask for: a few per core (more only adds overhead; an
/// unbounded number can take the machine down).
pub fn max_threads() -> usize {
    8 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Checks a thread-count option (`--threads`): at least 1, at most [`max_threads`].
pub fn check_threads(option: &str, threads: usize) -> anyhow::Result<()> {
    let max = max_threads();
    if threads == 0 || threads > max {
        bail!("{option} must be in [1, {max}] (8 per core on this machine), got {threads}");
    }
    Ok(())
}

/// The eval transform's settings; each flag overrides the weight file's metadata, which
/// overrides torchvision's ImageNet defaults.
#[derive(Args, Debug, Clone)]
pub struct PreprocessArgs {
    /// Resize the shorter side to this many pixels [default: 256].
    #[arg(long)]
    pub resize_size: Option<u32>,
    /// Centre-crop a square of this side (the network's input size) [default: 224].
    #[arg(long)]
    pub crop_size: Option<u32>,
    /// Per-channel mean on the [0, 1] scale, R,G,B [default: 0.485,0.456,0.406].
    #[arg(long, value_parser = parse_triple)]
    pub mean: Option<[f32; 3]>,
    /// Per-channel standard deviation, R,G,B [default: 0.229,0.224,0.225].
    #[arg(long, value_parser = parse_triple)]
    pub std: Option<[f32; 3]>,
}

impl PreprocessArgs {
    /// These flags on top of `base`.
    pub fn apply(&self, base: Preprocess) -> anyhow::Result<Preprocess> {
        let mut p = base;
        if let Some(v) = self.resize_size {
            p.resize_size = v;
        }
        if let Some(v) = self.crop_size {
            p.crop_size = v;
        }
        if let Some(v) = self.mean {
            p.mean = v;
        }
        if let Some(v) = self.std {
            p.std = v;
        }
        p.validate()?;
        Ok(p)
    }
}

fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let values: Vec<f32> =
        s.split(',').map(|v| v.trim().parse::<f32>().map_err(|e| format!("'{v}': {e}"))).collect::<Result<_, _>>()?;
    values.try_into().map_err(|v: Vec<f32>| format!("expected three comma-separated numbers (R,G,B), got {}", v.len()))
}

/// `--device`: where to compute.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// cpu (burn's pure-Rust flex backend) or wgpu (GPU; needs the `wgpu` cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Which implementation runs inference, and with how many threads.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// engine: the fused CPU engine (default on --device cpu); burn: burn on --device.
    #[arg(long, value_enum, default_value_t = Backend::Engine)]
    pub backend: Backend,
    /// Engine threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

impl BackendArgs {
    /// The model on the chosen backend. A GPU device always runs burn: the engine is CPU-only.
    pub fn runner(
        &self,
        model: MobileNet,
        device: &Device,
        device_args: Option<&DeviceArgs>,
    ) -> anyhow::Result<Runner> {
        let on_cpu = device_args.is_none_or(|d| matches!(d.device.as_str(), "cpu" | "flex"));
        let backend = if on_cpu { self.backend } else { Backend::Burn };
        if let Some(threads) = self.threads {
            check_threads("--threads", threads)?;
        }
        Ok(Runner::new(model, backend, device, self.threads.unwrap_or(0))?)
    }
}

impl BackendArgs {
    /// An int8 model file (`mobilenet quantize`) on the CPU engine, the only backend that runs
    /// one.
    pub fn int8_runner(&self, path: &std::path::Path, device_args: Option<&DeviceArgs>) -> anyhow::Result<Runner> {
        let on_cpu = device_args.is_none_or(|d| matches!(d.device.as_str(), "cpu" | "flex"));
        if !on_cpu || self.backend != Backend::Engine {
            bail!(
                "{}: an int8 model runs on the CPU engine only (drop --backend burn and --device); burn needs the f32 weights it was quantised from",
                path.display()
            );
        }
        if let Some(threads) = self.threads {
            check_threads("--threads", threads)?;
        }
        Ok(Runner::int8(path, self.threads.unwrap_or(0))?)
    }
}

impl DeviceArgs {
    pub fn device(&self) -> anyhow::Result<Device> {
        match self.device.as_str() {
            "cpu" | "flex" => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            "wgpu" | "gpu" => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            "wgpu" | "gpu" => {
                bail!("--device wgpu needs a build with the GPU backend: cargo run --release --features wgpu -- ...")
            }
            other => bail!("unknown --device '{other}': expected cpu or wgpu"),
        }
    }
}

/// Data and its transforms.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// An ImageFolder tree (train/<class>/*, val/<class>/*), MNIST-style idx files or CIFAR
    /// binary batches; or `fashion-mnist-small`, the embedded default.
    #[arg(long, default_value = data::EMBEDDED)]
    pub data: String,
    /// Network input side (default: 32 for idx and CIFAR data, 224 for ImageFolder).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Evaluation: resize the shorter side to this before the centre crop (default: image size
    /// for idx/CIFAR, image size / 0.875 for ImageFolder).
    #[arg(long)]
    pub eval_resize: Option<usize>,
    /// Normalisation mean, three comma-separated values (default: ImageNet's for ImageFolder,
    /// the training set's own for idx/CIFAR).
    #[arg(long, value_delimiter = ',', num_args = 3)]
    pub mean: Option<Vec<f32>>,
    /// Normalisation standard deviation, three comma-separated values.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    pub std: Option<Vec<f32>>,
}

impl DataArgs {
    pub(crate) fn augment(&self, format: DataFormat, train: &data::Dataset) -> AugmentConfig {
        let size = self.image_size.unwrap_or(if format == DataFormat::ImageFolder { 224 } else { 32 });
        let mut a = AugmentConfig::defaults_for(format, train, size);
        if let Some(r) = self.eval_resize {
            a.eval_resize = r;
        } else if format != DataFormat::ImageFolder {
            a.eval_resize = size;
        }
        if let Some(m) = &self.mean {
            a.mean = [m[0], m[1], m[2]];
        }
        if let Some(s) = &self.std {
            a.std = [s[0], s[1], s[2]];
        }
        a
    }
}

/// The model a weight file holds on the chosen backend (an int8 file on the engine), with the
/// preprocessing that goes with it: [`load_weights`], then [`BackendArgs::runner`].
pub(crate) fn load_runner(
    model: &ModelArgs,
    preprocess: &PreprocessArgs,
    backend: &BackendArgs,
    path: &std::path::Path,
    device: &Device,
) -> anyhow::Result<(Runner, Preprocess)> {
    if weights::is_int8(path)? {
        let stored = Preprocess::from_metadata(path)?;
        let preprocess = preprocess.apply(stored.unwrap_or_default())?;
        return Ok((backend.int8_runner(path, None)?, preprocess));
    }
    let (model, preprocess) = load_weights(model, preprocess, path, device)?;
    Ok((backend.runner(model, device, None)?, preprocess))
}

/// The model a weight file holds, built from its metadata and the flags, with its weights loaded
/// strictly, and the preprocessing that goes with it.
pub(crate) fn load_weights(
    model: &ModelArgs,
    preprocess: &PreprocessArgs,
    path: &std::path::Path,
    device: &Device,
) -> anyhow::Result<(MobileNet, Preprocess)> {
    let Some(config) = model.config(weights::read_config(path)?)? else {
        bail!(
            "{}: the file does not say which model it holds; pass --model (and --width-mult/--num-classes if not the defaults)",
            path.display()
        );
    };
    let stored = Preprocess::from_metadata(path)?;
    let preprocess = preprocess.apply(stored.unwrap_or_default())?;
    let model = weights::load_into(MobileNet::new(&config, device)?, path)?;
    Ok((model, preprocess))
}
