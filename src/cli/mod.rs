//! The `mobilenet` command line: one file per command group, shared arguments in [`args`].

use burn::tensor::Device;
use clap::{Parser, Subcommand};

pub(crate) mod args;
mod bench;
mod inspect;
mod predict;
mod quantize;
mod train;

use bench::{BenchArgs, BenchTrainArgs};
use inspect::{ImportArgs, InferArgs, SummaryArgs};
use predict::PredictArgs;

#[derive(Parser, Debug)]
#[command(
    name = "mobilenet",
    version,
    about = "MobileNet V1/V2/V3 on burn: build, inspect, run, weight-compatible with torchvision"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// One per process: boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a layer table (path, type, output shape, params, MACs) and totals.
    Summary(SummaryArgs),
    /// Run a model in eval mode on a tensor read from a safetensors file.
    Infer(InferArgs),
    /// Classify image files (JPEG, PNG, WebP, BMP; directories are walked): top-k classes with
    /// probabilities, using torchvision's eval preprocessing.
    Predict(PredictArgs),
    /// Convert a checkpoint (torchvision .pth, zip or legacy, or safetensors) to our safetensors
    /// format, with the model config and preprocessing as metadata.
    Import(ImportArgs),
    /// Train (or fine-tune, or resume) on an image classification data set; with no options,
    /// MobileNetV3-Small on the embedded Fashion-MNIST subset.
    Train(train::TrainArgs),
    /// Evaluate weights on a data set's evaluation split: loss, top-1, top-5, per-class accuracy.
    Eval(train::EvalArgs),
    /// Post-training static int8 quantisation: calibrate on photos or a data set, write one
    /// int8 model file that predict, eval and bench run on the engine.
    Quantize(quantize::QuantizeArgs),
    /// Recompute BatchNorm running statistics over training batches, weights frozen.
    RecalibrateBn(train::RecalibrateArgs),
    /// Plot the validation curves of several runs in one PNG and print their last epochs.
    CompareRuns(train::CompareArgs),
    /// Inference latency after warm-up: median and min ms per batch, images/s (the engine by
    /// default; --backend burn for burn on the CPU).
    Bench(BenchArgs),
    /// Training-step time after warm-up (forward, backward, SGD-Nesterov) on random data:
    /// median ms per step and images/s. The CPU trainer by default; --backend burn for burn.
    BenchTrain(BenchTrainArgs),
}

/// Parses the command line (exiting with clap's message on a usage error), noting which of
/// `train`'s options were given explicitly: `--resume` refuses the others rather than ignore them.
pub fn parse() -> Cli {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Train(args), Some(("train", sub))) = (&mut cli.command, matches.subcommand()) {
        args.given = sub
            .ids()
            .filter(|id| sub.value_source(id.as_str()) == Some(ValueSource::CommandLine))
            .map(|id| id.to_string())
            .collect();
    }
    cli
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let device = Device::flex();
    match cli.command {
        Command::Summary(args) => inspect::summary(args, &device),
        Command::Infer(args) => inspect::infer(args, &device),
        Command::Predict(args) => predict::predict(args, &device),
        Command::Import(args) => inspect::import(args, &device),
        Command::Train(args) => train::train(args),
        Command::Eval(args) => train::eval(args),
        Command::Quantize(args) => quantize::quantize(args, &device),
        Command::RecalibrateBn(args) => train::recalibrate(args),
        Command::CompareRuns(args) => train::compare(args),
        Command::Bench(args) => bench::bench(args, &device),
        Command::BenchTrain(args) => bench::bench_train(args),
    }
}
