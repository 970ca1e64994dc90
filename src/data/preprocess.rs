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

/// The largest network input side (crop size, `--image-size`) anything accepts.
pub const MAX_INPUT_SIZE: usize = 4096;

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
        if self.resize_size > 16384 || self.crop_size as usize > MAX_INPUT_SIZE {
            return bad(format!(
                "resize sizes above 16384 and crop sizes above {MAX_INPUT_SIZE} are not supported (resize {}, crop {})",
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
        let crop = self.crop_size as usize;
        let pixels = self.resize_center_crop(image)?;
        // Normalise with per-channel constants, in f32 as torch does. Zero padding is black
        // before normalisation, as torchvision pads the uint8 image.
        let mut out = vec![0f32; 3 * crop * crop];
        for c in 0..3 {
            let (mean, std) = (self.mean[c], self.std[c]);
            let plane = &mut out[c * crop * crop..(c + 1) * crop * crop];
            for (i, v) in plane.iter_mut().enumerate() {
                *v = (pixels[i * 3 + c] as f32 / 255.0 - mean) / std;
            }
        }
        Ok(out)
    }

    /// The resize and centre crop as RGB bytes (`crop x crop x 3`, zero where the crop is
    /// larger than the resized image). Memory stays bounded whatever the image's aspect ratio:
    /// when the whole resized image would exceed [`MAX_RESIZED_PIXELS`] (a 1x20000 strip resized
    /// to 256 x 5,120,000), only the window the crop keeps is computed, with the same filter
    /// taps as the full resize.
    pub fn resize_center_crop(&self, image: &RgbImage) -> Result<Vec<u8>> {
        self.resize_center_crop_within(image, MAX_RESIZED_PIXELS)
    }

    /// [`Self::resize_center_crop`], computing only the crop's window once the resized image
    /// would exceed `max_pixels`.
    fn resize_center_crop_within(&self, image: &RgbImage, max_pixels: u64) -> Result<Vec<u8>> {
        if image.width() == 0 || image.height() == 0 {
            return Err(Error::InvalidPreprocess(format!("empty image ({}x{})", image.width(), image.height())));
        }
        let (new_w, new_h) = self.resized_size(image.width(), image.height());
        let window = self.crop_window(new_w, new_h);
        let crop = self.crop_size as i64;
        // The part of the resized image inside the crop window.
        let span = |start: i64, size: u32| -> (u32, u32) {
            let lo = start.clamp(0, size as i64);
            let hi = (start + crop).clamp(0, size as i64);
            (lo as u32, (hi - lo) as u32)
        };
        let region = if new_w as u64 * new_h as u64 <= max_pixels {
            Region { x: 0, y: 0, width: new_w, height: new_h }
        } else {
            let ((x, width), (y, height)) = (span(window.left, new_w), span(window.top, new_h));
            Region { x, y, width, height }
        };
        let resized = resize_region(image, new_w, new_h, region)?;
        let side = crop as usize;
        let mut out = vec![0u8; side * side * 3];
        for y in 0..side {
            let sy = y as i64 + window.top - region.y as i64;
            if !(0..region.height as i64).contains(&sy) {
                continue;
            }
            for x in 0..side {
                let sx = x as i64 + window.left - region.x as i64;
                if (0..region.width as i64).contains(&sx) {
                    let s = (sy as usize * region.width as usize + sx as usize) * 3;
                    out[(y * side + x) * 3..(y * side + x) * 3 + 3].copy_from_slice(&resized[s..s + 3]);
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

/// Image files larger than this are refused before they are read.
pub const MAX_IMAGE_FILE_BYTES: u64 = 1 << 30;
/// Decoded images wider or taller than this are refused.
pub const MAX_IMAGE_SIDE: u32 = 32768;
/// The most memory a decoder may allocate for one image.
pub const MAX_DECODE_BYTES: u64 = 512 << 20;
/// The most pixels the eval resize materialises at once (see [`Preprocess::resize_center_crop`]).
pub const MAX_RESIZED_PIXELS: u64 = 1 << 24;

/// Decodes an image file (JPEG, PNG, WebP or BMP, recognised by content, not by extension) to
/// 8-bit RGB, as PIL's `convert("RGB")`: grey is replicated, alpha dropped, 16-bit scaled.
///
/// This is the one way images come in (`predict`, ImageFolder data sets), with limits: the
/// file's size, the image's sides and the decoder's memory are bounded, a truncated JPEG (no
/// scan data, or no end-of-image marker after it) is refused as PIL refuses it, and a decoder
/// that panics on a hostile file becomes an error naming the file.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let image_error = |message: String| Error::Image { path: path.to_path_buf(), message };
    let size = std::fs::metadata(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound { path: path.to_path_buf() },
            _ => image_error(e.to_string()),
        })?
        .len();
    if size > MAX_IMAGE_FILE_BYTES {
        return Err(image_error(format!("{size} bytes: image files above {MAX_IMAGE_FILE_BYTES} bytes are refused")));
    }
    let bytes = std::fs::read(path).map_err(|e| image_error(e.to_string()))?;
    decode_rgb(&bytes).map_err(image_error)
}

/// [`load_rgb`] on bytes in memory: the error is the message alone.
pub fn decode_rgb(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let format = reader.format().ok_or("not a JPEG, PNG, WebP or BMP image")?;
    if format == image::ImageFormat::Jpeg {
        jpeg_complete(bytes)?;
    }
    let mut reader = reader;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()))
        .map_err(|_| "the decoder failed on this file (corrupt data)".to_string())?
        .map_err(|e| e.to_string())?;
    if decoded.width() == 0 || decoded.height() == 0 {
        return Err(format!("empty image ({}x{})", decoded.width(), decoded.height()));
    }
    Ok(decoded.into_rgb8())
}

/// Whether a JPEG stream is whole: its markers lead to a scan (SOS) and an end-of-image marker
/// follows the scan data. The decoder would fill a truncated image with grey and carry on; PIL
/// (and so torchvision) refuses such files.
fn jpeg_complete(bytes: &[u8]) -> std::result::Result<(), String> {
    const TRUNCATED: &str = "truncated JPEG: the file ends before the image data is complete";
    let mut i = 2; // after SOI
    loop {
        if i >= bytes.len() {
            return Err(TRUNCATED.into());
        }
        if bytes[i] != 0xFF {
            // Not a marker where one belongs: leave the verdict to the decoder.
            return Ok(());
        }
        while i < bytes.len() && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return Err(TRUNCATED.into());
        };
        i += 1;
        match marker {
            0x01 | 0xD0..=0xD8 => {}
            0xD9 => return Err("JPEG without image data (end of image before any scan)".into()),
            _ => {
                let Some(len) = bytes.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize) else {
                    return Err(TRUNCATED.into());
                };
                i += len;
                if marker == 0xDA {
                    // Entropy-coded data: 0xFF bytes in it are stuffed (FF 00) or restart
                    // markers, so the first FF D9 after the scan header is the end of image.
                    let rest = bytes.get(i..).unwrap_or(&[]);
                    return match rest.windows(2).any(|w| w == [0xFF, 0xD9]) {
                        true => Ok(()),
                        false => Err(TRUNCATED.into()),
                    };
                }
            }
        }
    }
}

/// Whether a directory entry looks like an image we read, by extension.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|known| known.eq_ignore_ascii_case(e)))
}

/// A rectangle of a resized image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
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
    resize_region(image, width, height, Region { x: 0, y: 0, width, height })
}

/// The `region` of [`resize_bilinear`]`(image, width, height)`, computed without the rest: the
/// source rows the vertical pass reads (with the filter's support) and the columns and rows of
/// the region, with the full resize's scale, so the taps are the full resize's.
fn resize_region(image: &RgbImage, width: u32, height: u32, region: Region) -> Result<Vec<u8>> {
    let resize_error = |e: &dyn std::fmt::Display| Error::InvalidPreprocess(format!("resize failed: {e}"));
    if width == 0 || height == 0 || region.width == 0 || region.height == 0 {
        return Ok(Vec::new());
    }
    let (src_w, src_h) = (image.width(), image.height());
    let (sx, sy) = (src_w as f64 / width as f64, src_h as f64 / height as f64);
    // Source rows the vertical pass reads: the filter's support (1, times the scale when
    // shrinking) around the region's rows, and a margin.
    let support = sy.max(1.0) + 2.0;
    let first_row = (region.y as f64 * sy - support).floor().clamp(0.0, src_h as f64) as u32;
    let end_row = ((region.y + region.height) as f64 * sy + support).ceil().clamp(0.0, src_h as f64) as u32;
    let rows = end_row - first_row;
    let row_bytes = src_w as usize * 3;
    let raw = &image.as_raw()[first_row as usize * row_bytes..end_row as usize * row_bytes];
    let mut current =
        FirImage::from_vec_u8(src_w, rows, raw.to_vec(), PixelType::U8x3).map_err(|e| resize_error(&e))?;
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    let mut resizer = Resizer::new();
    // Horizontal, then vertical, as Pillow. An unchanged dimension is no pass at all, as in
    // Pillow (the kernel would be the identity).
    if !(width == src_w && region.x == 0 && region.width == width) {
        let mut next = FirImage::new(region.width, rows, PixelType::U8x3);
        let left = region.x as f64 * sx;
        let crop = options.crop(left, 0.0, (region.width as f64 * sx).min(src_w as f64 - left), rows as f64);
        resizer.resize(&current, &mut next, &crop).map_err(|e| resize_error(&e))?;
        current = next;
    }
    if !(height == src_h && region.y == 0 && region.height == height) {
        let mut next = FirImage::new(region.width, region.height, PixelType::U8x3);
        let top = region.y as f64 * sy - first_row as f64;
        let crop = options.crop(0.0, top, region.width as f64, (region.height as f64 * sy).min(rows as f64 - top));
        resizer.resize(&current, &mut next, &crop).map_err(|e| resize_error(&e))?;
        current = next;
    }
    Ok(current.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The windowed resize (only the crop's window) gives the full resize's pixels.
    #[test]
    fn windowed_resize_matches_the_full_resize() {
        let noise = |x: u32, y: u32, c: u32| ((x * 73 + y * 151 + c * 29) ^ (x * y)) as u8;
        for (w, h, resize, crop) in [(3, 900, 64, 48), (700, 5, 40, 32), (50, 37, 80, 96), (333, 41, 37, 32)] {
            let image = RgbImage::from_fn(w, h, |x, y| image::Rgb([noise(x, y, 0), noise(x, y, 1), noise(x, y, 2)]));
            let p = Preprocess { resize_size: resize, crop_size: crop, ..Preprocess::default() };
            let full = p.resize_center_crop_within(&image, u64::MAX).unwrap();
            let windowed = p.resize_center_crop_within(&image, 0).unwrap();
            let worst = full.iter().zip(&windowed).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            assert!(worst <= 1, "{w}x{h} resize {resize} crop {crop}: differs by {worst} levels");
        }
    }

    #[test]
    fn truncated_jpegs_are_refused() {
        let mut bytes = Vec::new();
        RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8, y as u8, 7]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        assert!(decode_rgb(&bytes).is_ok());
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        for cut in [sos, sos + 20, bytes.len() - 2] {
            let err = decode_rgb(&bytes[..cut]).unwrap_err();
            assert!(err.contains("truncated JPEG"), "{cut}: {err}");
        }
    }
}
