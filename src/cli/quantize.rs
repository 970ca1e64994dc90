//! `quantize`: post-training static int8 quantisation on the engine (`mobilenet_engine::quant`).
//! Calibration images come from a photo folder (or image files) through the weights' eval
//! preprocessing, or from a data set `train` reads (its training split, through the eval
//! transform `eval` would use); each map's range is recorded on the f32 network, the convs'
//! weights are quantised per output channel, and one safetensors file is written (atomically)
//! that `predict`, `eval` and `bench` run on the engine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::tensor::Device;
use clap::{Args, ValueEnum};
use mobilenet_engine::quant::calibrate::sqnr_report;
use mobilenet_engine::quant::format::{self, CalibrationInfo};
use mobilenet_engine::quant::{Calibrator, Int8Isa, QuantModel, QuantNetwork, RangeMethod, WeightBits};
use mobilenet_engine::{FoldedModel, Isa, ModelSpec, TensorSource};

use crate::cli::args::{load_weights, ModelArgs, PreprocessArgs};
use crate::data;
use crate::data::preprocess::Preprocess;
use crate::inference::predict;
use crate::io::{atomic, params, weights};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// The extremes seen (torch's MinMaxObserver, ONNX Runtime's MinMax).
    Minmax,
    /// The --percentile-th and (100 - p)-th percentiles of each map's values.
    Percentile,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Bits {
    /// 8 where this CPU has VNNI, 7 where it has only AVX2 (ONNX Runtime's reduce_range rule).
    Auto,
    /// [-127, 127]: the most precise; the AVX2 kernel for it is slower than f32.
    #[value(name = "8")]
    Eight,
    /// [-63, 63]: what the fast AVX2 kernel needs.
    #[value(name = "7")]
    Seven,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The f32 weights to quantise (any format `predict` reads).
    #[arg(long)]
    pub weights: PathBuf,
    /// Calibration images: a folder of photos (walked), image files, or a data set `train`
    /// reads (an ImageFolder tree, idx or CIFAR files, `fashion-mnist-small`), whose training
    /// split is used.
    #[arg(long, required = true, num_args = 1..)]
    pub calibration: Vec<PathBuf>,
    /// How many calibration images to run (the first ones; a data set's in a fixed shuffled
    /// order).
    #[arg(long, default_value_t = 300)]
    pub calibration_images: usize,
    #[arg(long, value_enum, default_value_t = Method::Minmax)]
    pub method: Method,
    /// For --method percentile: the share of each map's values kept inside its range, in %.
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f64,
    /// Weight bits.
    #[arg(long, value_enum, default_value_t = Bits::Auto)]
    pub weight_bits: Bits,
    /// The int8 model file to write (safetensors).
    #[arg(long)]
    pub output: PathBuf,
    /// Print each layer's error: the SQNR of its int8 output map against the f32 network's,
    /// over the first --report-images calibration images, and the top-1 agreement.
    #[arg(long)]
    pub report: bool,
    #[arg(long, default_value_t = 16)]
    pub report_images: usize,
    /// Photos: the eval preprocessing (default: the weights' own, else torchvision's).
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

/// Calibration images, preprocessed: NCHW f32, all `size` x `size`.
struct CalibrationSet {
    images: Vec<Vec<f32>>,
    size: usize,
    source: String,
    preprocess: Preprocess,
}

pub(super) fn quantize(args: QuantizeArgs, device: &Device) -> anyhow::Result<()> {
    if args.calibration_images == 0 {
        bail!("--calibration-images must be at least 1");
    }
    if args.method == Method::Percentile && !(args.percentile > 50.0 && args.percentile <= 100.0) {
        bail!("--percentile must be in (50, 100], got {}", args.percentile);
    }
    let inputs: Vec<&Path> =
        std::iter::once(args.weights.as_path()).chain(args.calibration.iter().map(|p| p.as_path())).collect();
    atomic::check_output("--output", &args.output, &inputs)?;
    if weights::is_int8(&args.weights)? {
        bail!("{}: already an int8 model; quantise the f32 weights it came from", args.weights.display());
    }
    let (model, preprocess) = load_weights(&args.model, &args.preprocess, &args.weights, device)?;
    let config = *model.config();
    let spec: ModelSpec = config.spec;
    let folded = FoldedModel::fold(&spec, &mut TensorSource::new(params::torch_layout(&model)))
        .with_context(|| format!("{}: folding the model", args.weights.display()))?;
    drop(model);

    let set = calibration_set(&args, preprocess)?;
    let method = match args.method {
        Method::Minmax => RangeMethod::MinMax,
        Method::Percentile => RangeMethod::Percentile(args.percentile),
    };
    let isa = Isa::detect();
    let mut calibrator = Calibrator::new(&folded, method, isa);
    let bar = indicatif::ProgressBar::new(set.images.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("calibrating {bar:40} {pos}/{len} images {elapsed}").expect("template"),
    );
    let mut f32_top1 = Vec::with_capacity(set.images.len());
    for image in &set.images {
        let logits = calibrator.observe(image, set.size, set.size);
        f32_top1.push(argmax(&logits));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let bits = match args.weight_bits {
        Bits::Auto => WeightBits::for_this_cpu(),
        Bits::Eight => WeightBits::Eight,
        Bits::Seven => WeightBits::Seven,
    };
    let quant = QuantModel::quantize(folded.clone(), calibrator.finish(), bits);

    let mut extra: HashMap<String, String> = weights::read_metadata(&args.weights)?;
    extra.retain(|k, _| k != format::INT8_METADATA_KEY);
    extra.insert(crate::io::weights::CONFIG_METADATA_KEY.to_string(), serde_json::to_string(&config)?);
    let (key, value) = set.preprocess.to_metadata();
    extra.insert(key, value);
    let info = CalibrationInfo { method: method.to_string(), images: set.images.len(), source: set.source.clone() };
    let bytes = format::to_bytes(&quant, bits.bits(), info, &extra)?;
    atomic::write_atomic(&args.output, &bytes)?;
    eprintln!(
        "{}: int8 {} ({}-bit weights, {} calibration, {} images of {}), {:.1} MB (f32 file {:.1} MB)",
        args.output.display(),
        spec.arch,
        bits.bits(),
        method,
        set.images.len(),
        set.source,
        bytes.len() as f64 / 1e6,
        std::fs::metadata(&args.weights).map(|m| m.len() as f64 / 1e6).unwrap_or(f64::NAN),
    );

    if args.report {
        report(&folded, &quant, &set, &f32_top1, args.report_images.max(1), isa);
    }
    Ok(())
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, j| if v[j] > v[best] { j } else { best })
}

/// The per-layer SQNR table and the top-1 agreement with f32 over the calibration images.
fn report(folded: &FoldedModel, quant: &QuantModel, set: &CalibrationSet, f32_top1: &[usize], n: usize, isa: Isa) {
    let int8 = Int8Isa::detect();
    let images: Vec<&[f32]> = set.images.iter().take(n).map(|v| v.as_slice()).collect();
    let rows = sqnr_report(folded, quant, &images, set.size, set.size, isa, int8);
    println!(
        "per-layer error over {} calibration image(s) (SQNR of each int8 map against f32; higher is better):",
        images.len()
    );
    println!("{:>4}  {:<28} {:<19} {:>11} {:>4} {:>9}", "map", "layer", "kind", "scale", "zp", "SQNR dB");
    for r in &rows {
        println!(
            "{:>4}  {:<28} {:<19} {:>11.4e} {:>4} {:>9.2}",
            r.map, r.layer, r.kind, r.scale, r.zero_point, r.sqnr_db
        );
    }
    if let Some(worst) = rows.iter().skip(1).min_by(|a, b| a.sqnr_db.total_cmp(&b.sqnr_db)) {
        println!("lowest: map {} ({}, {}) at {:.2} dB", worst.map, worst.layer, worst.kind, worst.sqnr_db);
    }
    let net = QuantNetwork::new(quant, int8, isa);
    let mut ws = net.workspace(set.size, set.size);
    let mut pooled = vec![0.0f32; net.pooled_stride()];
    let mut logits = vec![0.0f32; folded.spec.num_classes];
    let mut agree = 0;
    for (image, &want) in set.images.iter().zip(f32_top1) {
        net.features_into(&mut ws, image, &mut pooled);
        net.head(&pooled, 1, &mut logits);
        agree += (argmax(&logits) == want) as usize;
    }
    println!(
        "top-1 agreement with f32 on the {} calibration images: {agree} ({:.2}%)",
        set.images.len(),
        100.0 * agree as f64 / set.images.len() as f64
    );
}

/// Reads the calibration images: a single directory that is a data set is read as one (its
/// training split through the eval transform); anything else is photos.
fn calibration_set(args: &QuantizeArgs, preprocess: Preprocess) -> anyhow::Result<CalibrationSet> {
    if let [path] = args.calibration.as_slice() {
        let spec = path.to_string_lossy();
        let looks_like_data = spec == data::EMBEDDED || path.join("train").is_dir() || !has_photos(path);
        if looks_like_data {
            let splits = data::load_spec(&spec)
                .with_context(|| format!("{}: reading the calibration data set", path.display()))?;
            return data_set_images(args, &splits, path, preprocess);
        }
    }
    photo_images(args, preprocess)
}

/// Whether a directory holds image files directly or below (a photo folder).
fn has_photos(path: &Path) -> bool {
    path.is_file()
        || walkdir::WalkDir::new(path)
            .into_iter()
            .filter_map(|e| e.ok())
            .any(|e| e.file_type().is_file() && crate::data::preprocess::has_image_extension(e.path()))
}

fn data_set_images(
    args: &QuantizeArgs,
    splits: &data::Splits,
    path: &Path,
    preprocess: Preprocess,
) -> anyhow::Result<CalibrationSet> {
    let train = &splits.train;
    if train.is_empty() {
        bail!("{}: the training split is empty", path.display());
    }
    // The eval transform `eval` would use: the data set's defaults, unless the weights carry
    // their own preprocessing or flags set it.
    let stored = Preprocess::from_metadata(&args.weights)?;
    let flags = &args.preprocess;
    let any_flag =
        flags.resize_size.is_some() || flags.crop_size.is_some() || flags.mean.is_some() || flags.std.is_some();
    let transform = if stored.is_some() || any_flag {
        preprocess
    } else {
        crate::cli::args::DataArgs {
            data: path.to_string_lossy().into_owned(),
            image_size: None,
            eval_resize: None,
            mean: None,
            std: None,
        }
        .augment(splits.format, train)
        .eval_preprocess()
    };
    transform.validate()?;
    let n = args.calibration_images.min(train.len());
    let order = crate::data::loader::epoch_order(train.len(), 0, 0);
    let bar = indicatif::ProgressBar::new(n as u64)
        .with_style(indicatif::ProgressStyle::with_template("reading {bar:40} {pos}/{len} images").expect("template"));
    let mut images = Vec::with_capacity(n);
    for &i in order.iter().take(n) {
        images.push(transform.apply(&crate::data::augment::to_rgb(&train.images[i]))?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(CalibrationSet {
        images,
        size: transform.crop_size as usize,
        source: format!("{} (training split, {} images)", path.display(), train.len()),
        preprocess: transform,
    })
}

fn photo_images(args: &QuantizeArgs, preprocess: Preprocess) -> anyhow::Result<CalibrationSet> {
    let found = predict::find_images(&args.calibration);
    let mut images = Vec::new();
    let mut failed = 0;
    for entry in found {
        if images.len() == args.calibration_images {
            break;
        }
        match entry.map_err(anyhow::Error::from).and_then(|p| preprocess.load(&p).map_err(anyhow::Error::from)) {
            Ok(image) => images.push(image),
            Err(e) => {
                eprintln!("warning: skipping a calibration input: {e}");
                failed += 1;
            }
        }
    }
    if images.is_empty() {
        bail!(
            "no calibration image could be read from {} ({failed} failed)",
            args.calibration.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let source = args.calibration.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    Ok(CalibrationSet { size: preprocess.crop_size as usize, images, source, preprocess })
}
