//! Image loading and torchvision's eval preprocessing.
//!
//! torchvision's pretrained classifiers expect exactly the input their `weights.transforms()`
//! (`ImageClassification`) produces from a PIL image, so this reproduces it step by step:
//!
//! 1. `Image.open(path).convert("RGB")`: grey is replicated, alpha is dropped (not composited).
//!    EXIF orientation is not applied, as PIL does not apply it either.
//! 2. `Resize(256)`: the shorter side becomes 256, the longer `int(256 * long / short)`
//!    (truncated), with Pillow's bilinear filter, whose support widens with the scale factor when
//!    shrinking (antialiasing). `fast_image_resize` implements Pillow's convolution in 8-bit
//!    fixed point; run pass by pass in Pillow's order (see [`resize_bilinear`]) the resized
//!    pixels are Pillow's up to a rare off-by-one.
//! 3. `CenterCrop(224)`: offsets `round((size - 224) / 2)` with Python's round-half-to-even; a
//!    crop larger than the image is zero-padded first, `(crop - size) // 2` before.
//! 4. `/ 255`, then `(x - mean) / std` per channel.
//!
//! The sizes and statistics are parameters ([`Preprocess`]) so weights trained with another
//! transform work; files written by `mobilenet import` carry them as metadata.

use std::path::Path;

use fast_image_resize::{images::Image as FirImage, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::weights;

/// Metadata key holding the JSON [`Preprocess`] in files written by `mobilenet import`.
pub const PREPROCESS_METADATA_KEY: &str = "mobilenet.preprocess";

/// ImageNet's per-channel mean and standard deviation (RGB, on the [0, 1] scale).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// File extensions taken when a directory is walked for images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// The eval transform: resize the shorter side, centre-crop a square, normalise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// The shorter side after resizing (torchvision `resize_size`).
    pub resize_size: u32,
    /// The side of the square centre crop, which is the network's input size.
    pub crop_size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Preprocess {
    /// torchvision's ImageNet eval transform (`IMAGENET1K_V1` weights): 256, 224, ImageNet stats.
    fn default() -> Self {
        Self { resize_size: 256, crop_size: 224, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }
}

/// Where a centre crop starts in the resized image: negative where the crop is larger than the
/// image and the missing rows/columns are zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropWindow {
    pub top: i64,
    pub left: i64,
}

impl Preprocess {
    /// Rejects settings that cannot produce a model input.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidPreprocess(what));
        if self.resize_size == 0 {
            return bad("resize size must be at least 1".into());
        }
        if (self.crop_size as usize) < crate::models::MIN_INPUT_SIZE {
            return bad(format!(
                "crop size must be at least {}, got {}",
                crate::models::MIN_INPUT_SIZE,
                self.crop_size
            ));
        }
        if self.resize_size > 16384 || self.crop_size > 16384 {
            return bad(format!(
                "sizes above 16384 are not supported (resize {}, crop {})",
                self.resize_size, self.crop_size
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return bad(format!("mean must be finite, got {m}"));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad(format!("std must be positive, got {s}"));
        }
        Ok(())
    }

    /// The size `(width, height)` the image is resized to: torchvision's
    /// `_compute_resized_output_size`, `new_long = int(size * long / short)`. Python's `int / int`
    /// is correctly rounded, as is this f64 division of exactly representable integers.
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        let size = self.resize_size as u64;
        let (short, long) = if width <= height { (width, height) } else { (height, width) };
        let new_long = ((size * long as u64) as f64 / short as f64) as u32;
        if width <= height {
            (self.resize_size, new_long)
        } else {
            (new_long, self.resize_size)
        }
    }

    /// torchvision's `center_crop` offsets in an image of `width` x `height`.
    pub fn crop_window(&self, width: u32, height: u32) -> CropWindow {
        let offset = |size: u32| -> i64 {
            let (size, crop) = (size as i64, self.crop_size as i64);
            if crop > size {
                // pad((crop - size) // 2 before), then the crop starts at the padded image's 0.
                -((crop - size) / 2)
            } else {
                // int(round((size - crop) / 2.0)): Python rounds halves to even.
                ((size - crop) as f64 / 2.0).round_ties_even() as i64
            }
        };
        CropWindow { top: offset(height), left: offset(width) }
    }

    /// Preprocesses a decoded image into `[3, crop, crop]` values, channel-major (CHW).
    pub fn apply(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let (new_w, new_h) = self.resized_size(image.width(), image.height());
        let resized = resize_bilinear(image, new_w, new_h)?;
        let window = self.crop_window(new_w, new_h);
        let crop = self.crop_size as usize;
        let (rw, rh) = (new_w as i64, new_h as i64);
        // Normalise with precomputed 1/255 and per-channel constants, in f32 as torch does.
        let mut out = vec![0f32; 3 * crop * crop];
        for c in 0..3 {
            let (mean, std) = (self.mean[c], self.std[c]);
            // Zero padding is black before normalisation, as torchvision pads the uint8 image.
            let padded = (0.0 - mean) / std;
            let plane = &mut out[c * crop * crop..(c + 1) * crop * crop];
            for y in 0..crop {
                let sy = y as i64 + window.top;
                for x in 0..crop {
                    let sx = x as i64 + window.left;
                    plane[y * crop + x] = if (0..rh).contains(&sy) && (0..rw).contains(&sx) {
                        let v = resized[(sy as usize * new_w as usize + sx as usize) * 3 + c];
                        (v as f32 / 255.0 - mean) / std
                    } else {
                        padded
                    };
                }
            }
        }
        Ok(out)
    }

    /// Decodes `path` and preprocesses it.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        self.apply(&load_rgb(path)?)
    }

    /// The preprocessing stored in a weight file by `mobilenet import`, if any.
    pub fn from_metadata(path: &Path) -> Result<Option<Self>> {
        let Some(json) = weights::read_metadata(path)?.remove(PREPROCESS_METADATA_KEY) else {
            return Ok(None);
        };
        let stored: Self = serde_json::from_str(&json)
            .map_err(|e| Error::file(path, format!("bad '{PREPROCESS_METADATA_KEY}' metadata: {e}")))?;
        stored.validate().map_err(|e| Error::file(path, format!("'{PREPROCESS_METADATA_KEY}' metadata: {e}")))?;
        Ok(Some(stored))
    }

    /// The metadata entry [`Self::from_metadata`] reads.
    pub fn to_metadata(&self) -> (String, String) {
        (PREPROCESS_METADATA_KEY.to_string(), serde_json::to_string(self).expect("preprocess serialises"))
    }
}

/// Decodes an image file (JPEG, PNG, WebP or BMP, recognised by content, not by extension) to
/// 8-bit RGB, as PIL's `convert("RGB")`: grey is replicated, alpha dropped, 16-bit scaled.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let image_error = |message: String| Error::Image { path: path.to_path_buf(), message };
    let reader = image::ImageReader::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { path: path.to_path_buf() },
        _ => image_error(e.to_string()),
    })?;
    let reader = reader.with_guessed_format().map_err(|e| image_error(e.to_string()))?;
    if reader.format().is_none() {
        return Err(image_error("not a JPEG, PNG, WebP or BMP image".into()));
    }
    let decoded = reader.decode().map_err(|e| image_error(e.to_string()))?;
    Ok(decoded.into_rgb8())
}

/// Whether a directory entry looks like an image we read, by extension.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|known| known.eq_ignore_ascii_case(e)))
}

/// Pillow's `Image.resize(size, BILINEAR)` of an RGB image: a separable convolution with the
/// triangle filter, support scaled by the reduction factor; returns packed RGB bytes.
///
/// Pillow runs the horizontal pass first and rounds to u8 in between; `fast_image_resize` runs
/// the vertical pass first for u8 images (it is faster), which moves ~15% of the pixels by one
/// level. So the passes are run as two one-dimensional resizes, in Pillow's order. What is
/// left is its 15-bit (i16) coefficients against Pillow's 22-bit ones: about 0.1-0.3% of the
/// pixels differ by one level on the test photos.
pub fn resize_bilinear(image: &RgbImage, width: u32, height: u32) -> Result<Vec<u8>> {
    let resize_error = |e: &dyn std::fmt::Display| Error::InvalidPreprocess(format!("resize failed: {e}"));
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    let mut resizer = Resizer::new();
    let mut current = FirImage::from_vec_u8(image.width(), image.height(), image.as_raw().clone(), PixelType::U8x3)
        .map_err(|e| resize_error(&e))?;
    // An unchanged dimension is no pass at all, as in Pillow (the kernel would be the identity).
    for (w, h) in [(width, image.height()), (width, height)] {
        if (current.width(), current.height()) != (w, h) {
            let mut next = FirImage::new(w, h, PixelType::U8x3);
            resizer.resize(&current, &mut next, &options).map_err(|e| resize_error(&e))?;
            current = next;
        }
    }
    Ok(current.into_vec())
}
