//! The `mobilenet` command line.

use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};

use crate::tensor_io::{read_tensor, write_tensors, HostTensor};
use crate::{weights, Arch, MobileNet, ModelConfig};

#[derive(Parser, Debug)]
#[command(name = "mobilenet", version, about = "MobileNet V1/V2/V3 on burn: build, inspect, run, weight-compatible with torchvision")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a layer table (path, type, output shape, params, MACs) and totals.
    Summary(SummaryArgs),
    /// Run a model in eval mode on a tensor read from a safetensors file.
    Infer(InferArgs),
}

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
    /// The configuration these flags describe, on top of `base` (or the model's defaults).
    pub fn config(&self, base: Option<ModelConfig>) -> anyhow::Result<Option<ModelConfig>> {
        let mut config = match (&self.model, base) {
            (Some(name), base) => {
                let arch: Arch = name.parse()?;
                match base {
                    Some(b) if b.arch == arch => b,
                    Some(b) => bail!("--model {arch} disagrees with the weights, which hold {}", b.arch),
                    None => ModelConfig::new(arch),
                }
            }
            (None, Some(base)) => base,
            (None, None) => return Ok(None),
        };
        if let Some(w) = self.width_mult {
            config.width_mult = w;
        }
        if let Some(k) = self.num_classes {
            config.num_classes = k;
        }
        if let Some(eps) = self.bn_eps {
            config.norm_eps = eps;
        }
        if let Some(m) = self.bn_momentum {
            config.norm_momentum = m;
        }
        config.validate()?;
        Ok(Some(config))
    }
}

#[derive(Args, Debug)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input image side in pixels.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
}

#[derive(Args, Debug)]
pub struct InferArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weights: .safetensors (ours or torchvision's keys) or a torch .pth/.pt state dict.
    #[arg(long)]
    pub weights: PathBuf,
    /// safetensors file holding tensor `input`, f32, shape [N, 3, H, W].
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write tensor `logits`, f32, shape [N, num_classes].
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let device = Device::flex();
    match cli.command {
        Command::Summary(args) => summary(args, &device),
        Command::Infer(args) => infer(args, &device),
    }
}

fn summary(args: SummaryArgs, device: &Device) -> anyhow::Result<()> {
    let Some(config) = args.model.config(None)? else {
        bail!("--model is required (one of {})", Arch::ALL.map(|a| a.name()).join(", "));
    };
    if args.image_size < crate::zoo::MIN_INPUT_SIZE {
        bail!("--image-size must be at least {}", crate::zoo::MIN_INPUT_SIZE);
    }
    let model = MobileNet::new(&config, device)?;
    let title = format!(
        "{} (width {}, {} classes, input 3x{}x{})",
        config.arch, config.width_mult, config.num_classes, args.image_size, args.image_size
    );
    print!("{}", model.trace(args.image_size).render(&title));
    Ok(())
}

fn infer(args: InferArgs, device: &Device) -> anyhow::Result<()> {
    let stored = weights::read_config(&args.weights)?;
    let config = args.model.config(stored)?;
    if config.is_none() {
        bail!("{}: the file does not say which model it holds; pass --model", args.weights.display());
    }
    let input = read_tensor(&args.input, "input")?;
    let model = weights::load(&args.weights, config.as_ref(), device)?.eval_mode();
    model
        .check_input(&input.shape)
        .with_context(|| format!("{}: tensor 'input'", args.input.display()))?;
    let logits = model.forward(input.to_tensor::<4>(device)?);
    let logits = HostTensor::from_tensor(logits);
    write_tensors(&args.output, &[("logits", &logits)])?;
    eprintln!("wrote logits {:?} to {}", logits.shape, args.output.display());
    Ok(())
}
