//! Training augmentation and evaluation transforms, as torchvision's classification references
//! do them: `RandomResizedCrop` or `RandomCrop(size, padding)`, `RandomHorizontalFlip`,
//! normalisation; at evaluation, resize the shorter side and centre-crop ([`Preprocess`]).
//!
//! Every sample's randomness comes from its own generator, seeded by (run seed, epoch, sample
//! index), so a run is the same whatever the thread count and a resumed epoch is the epoch that
//! was lost.

use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::preprocess::{resize_bilinear, Preprocess, IMAGENET_MEAN, IMAGENET_STD, MAX_INPUT_SIZE};
use crate::data::{DataFormat, Dataset, Image};
use crate::error::{Error, Result};
use crate::models::MIN_INPUT_SIZE;

/// The random crop used in training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TrainCrop {
    /// `RandomResizedCrop(size, scale=(min_scale, 1), ratio=(3/4, 4/3))`: ImageNet style.
    RandomResized,
    /// Resize/centre-crop to size, zero-pad, `RandomCrop(size)`: CIFAR/MNIST style.
    Pad,
    /// No random crop (the evaluation geometry).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// The network's input side.
    pub image_size: usize,
    pub train_crop: TrainCrop,
    /// Zero padding for [`TrainCrop::Pad`].
    pub padding: usize,
    /// Smallest area fraction for [`TrainCrop::RandomResized`].
    pub min_scale: f64,
    pub hflip: bool,
    /// Shorter side before the evaluation centre crop.
    pub eval_resize: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl AugmentConfig {
    /// Sensible defaults for a data set: small images (idx, CIFAR) keep their geometry
    /// (resized to `image_size`) with pad-and-crop and flips, normalised with the training set's
    /// own statistics; photos (ImageFolder) get ImageNet's recipe (random-resized-crop, flip,
    /// resize to size/0.875 and centre-crop for evaluation, ImageNet statistics).
    pub fn defaults_for(format: DataFormat, train: &Dataset, image_size: usize) -> Self {
        match format {
            DataFormat::ImageFolder => Self {
                image_size,
                train_crop: TrainCrop::RandomResized,
                padding: 0,
                min_scale: 0.08,
                hflip: true,
                eval_resize: (image_size as f64 / 0.875).round() as usize,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            DataFormat::Idx | DataFormat::Cifar10 | DataFormat::Cifar100 => {
                let (mean, std) = train.channel_stats();
                Self {
                    image_size,
                    train_crop: TrainCrop::Pad,
                    padding: if format == DataFormat::Idx { 2 } else { 4 },
                    min_scale: 0.35,
                    hflip: true,
                    eval_resize: image_size,
                    mean,
                    std,
                }
            }
        }
    }

    /// Rejects settings the transforms cannot run, or whose weights `eval` and `predict` would
    /// refuse (the eval transform is checked as `predict` checks it). Messages name the options.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig(what));
        if !(MIN_INPUT_SIZE..=MAX_INPUT_SIZE).contains(&self.image_size) {
            return bad(format!(
                "--image-size must be in [{MIN_INPUT_SIZE}, {MAX_INPUT_SIZE}] (the smallest input the networks \
                 take, which eval and predict require), got {}",
                self.image_size
            ));
        }
        if self.eval_resize == 0 || self.eval_resize > u32::MAX as usize {
            return bad(format!("--eval-resize must be at least 1, got {}", self.eval_resize));
        }
        if !(self.min_scale > 0.0 && self.min_scale <= 1.0) {
            return bad(format!("--min-scale must be in (0, 1], got {}", self.min_scale));
        }
        if self.padding > self.image_size {
            return bad(format!("--padding {} is larger than the image size {}", self.padding, self.image_size));
        }
        self.eval_preprocess().validate().map_err(|e| Error::InvalidConfig(format!("the evaluation transform: {e}")))
    }

    pub fn eval_preprocess(&self) -> Preprocess {
        Preprocess {
            resize_size: self.eval_resize as u32,
            crop_size: self.image_size as u32,
            mean: self.mean,
            std: self.std,
        }
    }

    /// The evaluation transform: `[3, size, size]` CHW values.
    pub fn eval(&self, image: &Image) -> Result<Vec<f32>> {
        self.eval_preprocess().apply(&to_rgb(image))
    }

    /// The training transform for sample `index` of `epoch`.
    pub fn train(&self, image: &Image, seed: u64, epoch: usize, index: usize) -> Result<Vec<f32>> {
        let mut rng = sample_rng(seed, epoch, index);
        let size = self.image_size;
        let rgb = to_rgb(image);
        // `cropped` is a size x size RGB image.
        let cropped: Vec<u8> = match self.train_crop {
            TrainCrop::RandomResized => {
                let (x, y, w, h) = random_resized_box(rgb.width(), rgb.height(), self.min_scale, &mut rng);
                let patch = image::imageops::crop_imm(&rgb, x, y, w, h).to_image();
                resize_bilinear(&patch, size as u32, size as u32)?
            }
            TrainCrop::Pad | TrainCrop::None => {
                let base = self.eval_geometry(&rgb)?;
                if self.train_crop == TrainCrop::None || self.padding == 0 {
                    base
                } else {
                    // torchvision RandomCrop(size, padding): offsets uniform in [0, 2·pad].
                    let p = self.padding as i64;
                    let dy = rng.random_range(0..=2 * p) - p;
                    let dx = rng.random_range(0..=2 * p) - p;
                    let mut out = vec![0u8; size * size * 3];
                    for y in 0..size as i64 {
                        let sy = y + dy;
                        if !(0..size as i64).contains(&sy) {
                            continue;
                        }
                        for x in 0..size as i64 {
                            let sx = x + dx;
                            if (0..size as i64).contains(&sx) {
                                let (d, s) =
                                    (((y * size as i64 + x) * 3) as usize, ((sy * size as i64 + sx) * 3) as usize);
                                out[d..d + 3].copy_from_slice(&base[s..s + 3]);
                            }
                        }
                    }
                    out
                }
            }
        };
        let flip = self.hflip && rng.random_bool(0.5);
        Ok(normalise(&cropped, size, flip, self.mean, self.std))
    }

    /// Resize the shorter side to `eval_resize` and centre-crop `image_size`, as RGB bytes.
    fn eval_geometry(&self, rgb: &RgbImage) -> Result<Vec<u8>> {
        self.eval_preprocess().resize_center_crop(rgb)
    }
}

fn sample_rng(seed: u64, epoch: usize, index: usize) -> StdRng {
    // splitmix-style mixing so neighbouring (epoch, index) pairs get unrelated streams.
    let mut z =
        seed ^ (epoch as u64).wrapping_mul(0x9E3779B97F4A7C15) ^ (index as u64).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0x94D049BB133111EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// Grey images are replicated to three channels.
pub fn to_rgb(image: &Image) -> RgbImage {
    let pixels =
        if image.channels == 3 { image.pixels.clone() } else { image.pixels.iter().flat_map(|&v| [v, v, v]).collect() };
    RgbImage::from_raw(image.width as u32, image.height as u32, pixels).expect("pixel count matches size")
}

/// torchvision `RandomResizedCrop.get_params`: ten tries at a box with area fraction in
/// [min_scale, 1] and aspect ratio in [3/4, 4/3] (log-uniform), else a centre crop.
fn random_resized_box(width: u32, height: u32, min_scale: f64, rng: &mut StdRng) -> (u32, u32, u32, u32) {
    let (w0, h0) = (width as f64, height as f64);
    let area = w0 * h0;
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(min_scale..=1.0);
        let ratio = rng.random_range(log_lo..=log_hi).exp();
        let w = (target * ratio).sqrt().round() as u32;
        let h = (target / ratio).sqrt().round() as u32;
        if w > 0 && h > 0 && w <= width && h <= height {
            let y = rng.random_range(0..=height - h);
            let x = rng.random_range(0..=width - w);
            return (x, y, w, h);
        }
    }
    let in_ratio = w0 / h0;
    let (w, h) = if in_ratio < 3.0 / 4.0 {
        (width, (w0 / (3.0 / 4.0)).round() as u32)
    } else if in_ratio > 4.0 / 3.0 {
        ((h0 * 4.0 / 3.0).round() as u32, height)
    } else {
        (width, height)
    };
    let (w, h) = (w.min(width), h.min(height));
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// RGB bytes (HWC) to normalised CHW floats, optionally mirrored left-right.
fn normalise(rgb: &[u8], size: usize, flip: bool, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let mut out = vec![0f32; 3 * size * size];
    for c in 0..3 {
        let plane = &mut out[c * size * size..(c + 1) * size * size];
        for y in 0..size {
            for x in 0..size {
                let sx = if flip { size - 1 - x } else { x };
                let v = rgb[(y * size + sx) * 3 + c];
                plane[y * size + x] = (v as f32 / 255.0 - mean[c]) / std[c];
            }
        }
    }
    out
}
