//! Classifying image files: find the images, decode and preprocess them in parallel a batch at a
//! time, run the batch through the model in eval mode, and report the top-k classes with their
//! softmax probabilities. A file that fails is reported and skipped; the others go on.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use serde::Serialize;

use crate::data::labels::Labels;
use crate::data::preprocess::{self, Preprocess};
use crate::error::{Error, Result};
use crate::inference::backend::{Backend, Runner};
use crate::models::MobileNet;

/// Runs with more images than this show a progress bar (on a terminal only: on a pipe or a log
/// file a bar is noise).
pub const PROGRESS_MIN_IMAGES: usize = 50;

/// One class of an image's top-k.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub index: usize,
    /// `None` when the model has no labels (not 1000 classes and no `--labels`).
    pub label: Option<String>,
    pub prob: f64,
}

/// Where one image's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    pub decode: Duration,
    pub preprocess: Duration,
    /// The batch's forward pass divided by the images in it.
    pub forward: Duration,
    /// How many images shared the forward pass.
    pub batch: usize,
}

/// An image's top-k, most probable first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageResult {
    #[serde(serialize_with = "path_as_string")]
    pub path: PathBuf,
    pub top: Vec<Prediction>,
    #[serde(skip)]
    pub timing: Timing,
}

fn path_as_string<S: serde::Serializer>(path: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// What happened to one input.
#[derive(Debug)]
pub enum Outcome {
    Classified(ImageResult),
    /// The error names the path.
    Failed(Error),
}

/// How [`Classifier::classify_files`] runs.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub batch_size: usize,
    pub top_k: usize,
    /// Show a progress bar on stderr (still only when stderr is a terminal).
    pub progress: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { batch_size: 16, top_k: 5, progress: false }
    }
}

/// A model in eval mode with the preprocessing and labels that go with its weights.
pub struct Classifier {
    runner: Runner,
    preprocess: Preprocess,
    labels: Option<Labels>,
}

impl Classifier {
    /// Puts `model` in eval mode (BatchNorm running statistics, no dropout), as torchvision's
    /// `model.eval()` before inference. Labels, when given, must number the model's classes.
    pub fn new(model: MobileNet, preprocess: Preprocess, labels: Option<Labels>, device: Device) -> Result<Self> {
        Self::with_runner(Runner::new(model, Backend::Burn, &device, 0)?, preprocess, labels)
    }

    /// On any backend ([`Runner::new`]): the CLI's default is the CPU engine.
    pub fn with_runner(runner: Runner, preprocess: Preprocess, labels: Option<Labels>) -> Result<Self> {
        preprocess.validate()?;
        if let Some(labels) = &labels {
            labels.check_len(runner.num_classes())?;
        }
        Ok(Self { runner, preprocess, labels })
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    pub fn labels(&self) -> Option<&Labels> {
        self.labels.as_ref()
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// Softmax probabilities `[N][num_classes]` for preprocessed images (each
    /// `[3, crop, crop]`, as [`Preprocess::apply`] returns).
    pub fn probabilities(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f64>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let side = self.preprocess.crop_size as usize;
        let mut data = Vec::with_capacity(images.len() * 3 * side * side);
        for image in images {
            if image.len() != 3 * side * side {
                return Err(Error::BadInputShape {
                    found: vec![image.len()],
                    expected: format!("3 x {side} x {side} = {} values (the crop size)", 3 * side * side),
                });
            }
            data.extend_from_slice(image);
        }
        let logits = self.runner.logits(&data, images.len(), side, side)?;
        Ok(logits.chunks_exact(self.runner.num_classes()).map(softmax).collect())
    }

    /// The `k` most probable classes, most probable first (ties: lower index first).
    pub fn top_k(&self, probs: &[f64], k: usize) -> Vec<Prediction> {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        order
            .into_iter()
            .take(k)
            .map(|index| Prediction {
                index,
                label: self.labels.as_ref().and_then(|l| l.get(index)).map(str::to_string),
                prob: probs[index],
            })
            .collect()
    }

    /// Classifies one image file.
    pub fn classify_file(&self, path: &Path, k: usize) -> Result<ImageResult> {
        let image = self.preprocess.load(path)?;
        let probs = self.probabilities(std::slice::from_ref(&image))?;
        Ok(ImageResult { path: path.to_path_buf(), top: self.top_k(&probs[0], k), timing: Timing::default() })
    }

    /// Classifies every input (as [`find_images`] returns them), a batch at a time, calling
    /// `report` once per input in input order. Returns how many failed.
    pub fn classify_files(
        &self,
        inputs: Vec<std::result::Result<PathBuf, Error>>,
        options: &RunOptions,
        mut report: impl FnMut(Outcome),
    ) -> usize {
        let batch_size = options.batch_size.max(1);
        let bar = (options.progress && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(inputs.len() as u64);
            let style =
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} images, {rate} images/s, eta {eta}")
                    .expect("valid template")
                    .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.1}", state.per_sec());
                    });
            bar.set_style(style);
            bar
        });
        let mut failed = 0;
        let mut emit = |outcome: Outcome| {
            if matches!(outcome, Outcome::Failed(_)) {
                failed += 1;
            }
            match &bar {
                // Lines printed while the bar is drawn would be overwritten: hide it meanwhile.
                Some(bar) => {
                    bar.suspend(|| report(outcome));
                    bar.inc(1);
                }
                None => report(outcome),
            }
        };
        let mut inputs = inputs.into_iter();
        loop {
            let chunk: Vec<_> = inputs.by_ref().take(batch_size).collect();
            if chunk.is_empty() {
                break;
            }
            let paths: Vec<&Path> =
                chunk.iter().filter_map(|input| input.as_ref().ok().map(PathBuf::as_path)).collect();
            let mut loaded = self.load_batch(&paths).into_iter();
            // Back in input order: an input that was already an error stays one.
            let mut images = Vec::with_capacity(paths.len());
            let results: Vec<Result<(PathBuf, Timing)>> = chunk
                .into_iter()
                .map(|input| {
                    let path = input?;
                    let (image, timing) = loaded.next().expect("one result per path")?;
                    images.push(image);
                    Ok((path, timing))
                })
                .collect();
            let start = Instant::now();
            let probs = self.probabilities(&images);
            let forward = if images.is_empty() { Duration::ZERO } else { start.elapsed() / images.len() as u32 };
            let mut probs = match probs {
                Ok(probs) => probs.into_iter(),
                Err(error) => {
                    // Cannot happen with images from `Preprocess::apply`; reported, not a panic.
                    for result in results {
                        emit(Outcome::Failed(match result {
                            Ok((path, _)) => Error::file(path, &error),
                            Err(e) => e,
                        }));
                    }
                    continue;
                }
            };
            for result in results {
                match result {
                    Ok((path, mut timing)) => {
                        timing.forward = forward;
                        timing.batch = images.len();
                        let top = self.top_k(&probs.next().expect("one row per image"), options.top_k);
                        emit(Outcome::Classified(ImageResult { path, top, timing }));
                    }
                    Err(error) => emit(Outcome::Failed(error)),
                }
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        failed
    }

    /// Decodes and preprocesses a batch, the images spread over the cores available (for
    /// small models decoding is a large share of the time).
    fn load_batch(&self, paths: &[&Path]) -> Vec<Result<(Vec<f32>, Timing)>> {
        let transform = &self.preprocess;
        let load = |path: &&Path| -> Result<(Vec<f32>, Timing)> {
            let start = Instant::now();
            let rgb = preprocess::load_rgb(path)?;
            let decoded = Instant::now();
            let image = transform.apply(&rgb).map_err(|e| Error::file(path, e))?;
            let timing = Timing { decode: decoded - start, preprocess: decoded.elapsed(), ..Timing::default() };
            Ok((image, timing))
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(paths.len());
        if threads <= 1 {
            return paths.iter().map(load).collect();
        }
        let per_thread = paths.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = paths
                .chunks(per_thread)
                .map(|part| scope.spawn(move || part.iter().map(load).collect::<Vec<_>>()))
                .collect();
            // A thread that panicked (a bug: decoding catches its own) reports its images.
            handles
                .into_iter()
                .zip(paths.chunks(per_thread))
                .flat_map(|(h, part)| match h.join() {
                    Ok(results) => results,
                    Err(panic) => {
                        let message = crate::data::loader::panic_message(&panic);
                        part.iter().map(|p| Err(Error::file(p, format!("loading failed: {message}")))).collect()
                    }
                })
                .collect()
        })
    }
}

/// Numerically stable softmax, in f64 so that small probabilities keep their digits.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The image files to classify, in order: files as given (whatever their extension: the content
/// decides), directories walked recursively in name order for files with an image extension
/// (jpg, jpeg, png, webp, bmp). A directory that cannot be read, or holds no images, is an error
/// entry; so is a path that does not exist.
pub fn find_images(inputs: &[PathBuf]) -> Vec<std::result::Result<PathBuf, Error>> {
    let mut out = Vec::new();
    for input in inputs {
        if !input.is_dir() {
            out.push(if input.exists() { Ok(input.clone()) } else { Err(Error::NotFound { path: input.clone() }) });
            continue;
        }
        let before = out.len();
        for entry in walkdir::WalkDir::new(input).follow_links(true).sort_by_file_name() {
            match entry {
                Ok(entry) if entry.file_type().is_file() && preprocess::has_image_extension(entry.path()) => {
                    out.push(Ok(entry.into_path()))
                }
                Ok(_) => {}
                Err(e) => {
                    let path = e.path().unwrap_or(input).to_path_buf();
                    out.push(Err(Error::file(path, format!("cannot read the directory: {e}"))));
                }
            }
        }
        if out.len() == before {
            out.push(Err(Error::file(input, "no images (.jpg, .jpeg, .png, .webp, .bmp) in this directory")));
        }
    }
    out
}
