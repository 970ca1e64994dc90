//! `summary`, `infer` and `import`: looking at a model and converting weights.

use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::tensor::Device;
use clap::Args;

use crate::cli::args::{load_weights, ModelArgs, PreprocessArgs};
use crate::data::preprocess::MAX_INPUT_SIZE;
use crate::io::tensor_io::{read_tensor, write_tensors, HostTensor};
use crate::io::weights;
use crate::models::{Arch, MobileNet, MIN_INPUT_SIZE};

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

#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The checkpoint to convert: torchvision .pth/.pt (zip or legacy) or safetensors.
    #[arg(long = "from")]
    pub from: PathBuf,
    /// Where to write our safetensors file.
    #[arg(long)]
    pub output: PathBuf,
    /// Preprocessing to record with the weights (default: the source's metadata, else
    /// torchvision's ImageNet transform).
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

pub(super) fn import(args: ImportArgs, device: &Device) -> anyhow::Result<()> {
    crate::io::atomic::check_output("--output", &args.output, &[&args.from])?;
    let (model, preprocess) = load_weights(&args.model, &args.preprocess, &args.from, device)?;
    weights::save_with_metadata(&model, &args.output, &[preprocess.to_metadata()])?;
    let config = model.config();
    eprintln!(
        "wrote {}: {} (width {}, {} classes), preprocessing resize {} crop {} mean {:?} std {:?}",
        args.output.display(),
        config.spec.arch,
        config.spec.width_mult,
        config.spec.num_classes,
        preprocess.resize_size,
        preprocess.crop_size,
        preprocess.mean,
        preprocess.std
    );
    Ok(())
}

pub(super) fn summary(args: SummaryArgs, device: &Device) -> anyhow::Result<()> {
    let Some(config) = args.model.config(None)? else {
        bail!("--model is required (one of {})", Arch::ALL.map(|a| a.name()).join(", "));
    };
    if !(MIN_INPUT_SIZE..=MAX_INPUT_SIZE).contains(&args.image_size) {
        bail!("--image-size must be in [{MIN_INPUT_SIZE}, {MAX_INPUT_SIZE}], got {}", args.image_size);
    }
    let model = MobileNet::new(&config, device)?;
    let title = format!(
        "{} (width {}, {} classes, input 3x{}x{})",
        config.spec.arch, config.spec.width_mult, config.spec.num_classes, args.image_size, args.image_size
    );
    print!("{}", model.summary(args.image_size).render(&title));
    Ok(())
}

pub(super) fn infer(args: InferArgs, device: &Device) -> anyhow::Result<()> {
    crate::io::atomic::check_output("--output", &args.output, &[&args.input, &args.weights])?;
    let stored = weights::read_config(&args.weights)?;
    let config = args.model.config(stored)?;
    if config.is_none() {
        bail!("{}: the file does not say which model it holds; pass --model", args.weights.display());
    }
    let input = read_tensor(&args.input, "input")?;
    let model = weights::load(&args.weights, config.as_ref(), device)?.eval_mode();
    model.check_input(&input.shape).with_context(|| format!("{}: tensor 'input'", args.input.display()))?;
    let logits = model.forward(input.to_tensor::<4>(device)?);
    let logits = HostTensor::from_tensor(logits);
    write_tensors(&args.output, &[("logits", &logits)])?;
    eprintln!("wrote logits {:?} to {}", logits.shape, args.output.display());
    Ok(())
}
