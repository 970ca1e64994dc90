//! Image classification data sets, held in memory as 8-bit images.
//!
//! `--data DIR` is recognised by its layout:
//! - MNIST-style idx files (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
//!   `t10k-…`): Fashion-MNIST, MNIST. Class names from `classes.txt` when present.
//! - CIFAR binary batches: CIFAR-10 (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`,
//!   `batches.meta.txt`) or CIFAR-100 (`train.bin`, `test.bin`, `fine_label_names.txt`), also
//!   inside a `cifar-10-batches-bin/` or `cifar-100-binary/` subfolder.
//! - An ImageFolder tree: `train/<class>/*.jpg` and `val/<class>/*.jpg` (or `test/`).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One 8-bit image, row-major HWC, 1 (grey) or 3 (RGB) channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub pixels: Vec<u8>,
}

/// A labelled set of images.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub images: Vec<Image>,
    pub labels: Vec<usize>,
    pub classes: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Per-channel mean and standard deviation of the pixels in [0, 1] (grey replicated to
    /// three channels), the normalisation default for data sets without a conventional one.
    pub fn channel_stats(&self) -> ([f32; 3], [f32; 3]) {
        let mut sum = [0f64; 3];
        let mut sq = [0f64; 3];
        let mut count = 0f64;
        for img in &self.images {
            for px in img.pixels.chunks_exact(img.channels) {
                for c in 0..3 {
                    let v = px[c.min(img.channels - 1)] as f64 / 255.0;
                    sum[c] += v;
                    sq[c] += v * v;
                }
                count += 1.0;
            }
        }
        let mean = sum.map(|s| s / count.max(1.0));
        let std: Vec<f64> = (0..3).map(|c| (sq[c] / count.max(1.0) - mean[c] * mean[c]).max(1e-12).sqrt()).collect();
        (mean.map(|m| m as f32), [std[0] as f32, std[1] as f32, std[2] as f32])
    }
}

/// What kind of data set a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    Idx,
    Cifar10,
    Cifar100,
    ImageFolder,
}

/// A training split and an evaluation split.
#[derive(Debug, Clone)]
pub struct Splits {
    pub format: DataFormat,
    pub train: Dataset,
    pub val: Dataset,
}

/// The name `--data` gives the data set embedded in the binary.
pub const EMBEDDED: &str = "fashion-mnist-small";

macro_rules! embedded_file {
    ($name:literal) => {
        (concat!("<embedded>/", $name), include_bytes!(concat!("../../data/fashion-mnist-small/", $name)).as_slice())
    };
}

/// The embedded default: a stratified 10,000/2,000 subset of Fashion-MNIST (data/README.md).
pub fn load_embedded() -> Result<Splits> {
    let split = |images: (&str, &[u8]), labels: (&str, &[u8])| -> Result<Dataset> {
        let (ip, lp) = (Path::new(images.0), Path::new(labels.0));
        let images = parse_idx_bytes(ip, gunzip_if_needed(ip, images.1.to_vec())?, 3)?;
        let labels = parse_idx_bytes(lp, gunzip_if_needed(lp, labels.1.to_vec())?, 1)?;
        idx_dataset(ip, images, lp, labels, Some(embedded_file!("classes.txt").1))
    };
    Ok(Splits {
        format: DataFormat::Idx,
        train: split(embedded_file!("train-images-idx3-ubyte.gz"), embedded_file!("train-labels-idx1-ubyte.gz"))?,
        val: split(embedded_file!("t10k-images-idx3-ubyte.gz"), embedded_file!("t10k-labels-idx1-ubyte.gz"))?,
    })
}

/// Loads `spec`: the embedded data set's name, or a folder.
pub fn load_spec(spec: &str) -> Result<Splits> {
    if spec == EMBEDDED {
        load_embedded()
    } else {
        load(Path::new(spec))
    }
}

/// Recognises the layout of `dir` and loads both splits.
pub fn load(dir: &Path) -> Result<Splits> {
    if !dir.exists() {
        return Err(Error::NotFound { path: dir.to_path_buf() });
    }
    if !dir.is_dir() {
        return Err(Error::file(dir, "--data must be a folder"));
    }
    let (format, root) = detect(dir)?;
    let (train, val) = match format {
        DataFormat::Idx => (load_idx(&root, "train")?, load_idx(&root, "t10k")?),
        DataFormat::Cifar10 => {
            let classes = read_names(&root.join("batches.meta.txt"), 10)?;
            let train: Vec<PathBuf> = (1..=5).map(|i| root.join(format!("data_batch_{i}.bin"))).collect();
            (load_cifar(&train, 0, classes.clone())?, load_cifar(&[root.join("test_batch.bin")], 0, classes)?)
        }
        DataFormat::Cifar100 => {
            let classes = read_names(&root.join("fine_label_names.txt"), 100)?;
            (
                load_cifar(&[root.join("train.bin")], 1, classes.clone())?,
                load_cifar(&[root.join("test.bin")], 1, classes)?,
            )
        }
        DataFormat::ImageFolder => {
            let train = load_image_folder(&root.join("train"), None)?;
            let val_dir = ["val", "test"].iter().map(|d| root.join(d)).find(|d| d.is_dir());
            let val_dir =
                val_dir.ok_or_else(|| Error::file(&root, "an ImageFolder tree needs val/ (or test/) beside train/"))?;
            let val = load_image_folder(&val_dir, Some(&train.classes))?;
            (train, val)
        }
    };
    check_splits(&root, train, val).map(|(train, val)| Splits { format, train, val })
}

/// Both splits non-empty, and every evaluation label one of the training split's classes (the
/// model has as many outputs as the training split has classes); the evaluation split then
/// shares the training split's class list.
fn check_splits(root: &Path, train: Dataset, mut val: Dataset) -> Result<(Dataset, Dataset)> {
    for (name, split) in [("training", &train), ("evaluation", &val)] {
        if split.is_empty() {
            return Err(Error::file(root, format!("the {name} split is empty")));
        }
    }
    if let Some(&label) = val.labels.iter().find(|&&l| l >= train.num_classes()) {
        return Err(Error::file(
            root,
            format!(
                "the evaluation split has label {label} ({}) but the training split has only {} classes",
                val.classes.get(label).map(String::as_str).unwrap_or("unnamed"),
                train.num_classes()
            ),
        ));
    }
    val.classes = train.classes.clone();
    Ok((train, val))
}

fn exists_gz(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))].into_iter().find(|p| p.is_file())
}

fn detect(dir: &Path) -> Result<(DataFormat, PathBuf)> {
    let candidates = [dir.to_path_buf(), dir.join("cifar-10-batches-bin"), dir.join("cifar-100-binary")];
    for root in candidates.iter().filter(|d| d.is_dir()) {
        if exists_gz(root, "train-images-idx3-ubyte").is_some() {
            return Ok((DataFormat::Idx, root.clone()));
        }
        if root.join("data_batch_1.bin").is_file() {
            return Ok((DataFormat::Cifar10, root.clone()));
        }
        if root.join("train.bin").is_file() && root.join("test.bin").is_file() {
            return Ok((DataFormat::Cifar100, root.clone()));
        }
    }
    if dir.join("train").is_dir() {
        return Ok((DataFormat::ImageFolder, dir.to_path_buf()));
    }
    Err(Error::file(
        dir,
        "unrecognised data layout: expected MNIST-style idx files (train-images-idx3-ubyte[.gz], …), \
         CIFAR-10/100 binary batches (data_batch_1.bin … / train.bin, test.bin) or an ImageFolder tree (train/<class>/*, val/<class>/*)",
    ))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { path: path.to_path_buf() },
        _ => Error::file(path, e),
    })?;
    gunzip_if_needed(path, raw)
}

/// The most bytes a data file may hold once decompressed (a gzip bomb is refused, not unpacked).
pub const MAX_DATA_FILE_BYTES: u64 = 4 << 30;

fn gunzip_if_needed(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .take(MAX_DATA_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::file(path, format!("corrupt gzip data: {e}")))?;
        if out.len() as u64 > MAX_DATA_FILE_BYTES {
            return Err(Error::file(path, format!("decompresses to more than {MAX_DATA_FILE_BYTES} bytes")));
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses an idx file: magic (0, 0, dtype 0x08 = u8, rank), big-endian dims, data.
fn parse_idx(path: &Path, expected_rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    parse_idx_bytes(path, read_file(path)?, expected_rank)
}

fn parse_idx_bytes(path: &Path, bytes: Vec<u8>, expected_rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(Error::file(path, "not an idx file of unsigned bytes (bad magic number)"));
    }
    let rank = bytes[3] as usize;
    if rank != expected_rank {
        return Err(Error::file(path, format!("idx rank {rank}, expected {expected_rank}")));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(Error::file(path, "truncated idx header"));
    }
    let dims: Vec<usize> =
        (0..rank).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    if dims.iter().skip(1).any(|&d| d == 0) {
        return Err(Error::file(path, format!("idx dimensions {dims:?}: images of zero size")));
    }
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
    if bytes.len() - header != expected {
        return Err(Error::file(
            path,
            format!("truncated or oversized idx data: header says {expected} bytes, file has {}", bytes.len() - header),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn load_idx(dir: &Path, prefix: &str) -> Result<Dataset> {
    let images_name = format!("{prefix}-images-idx3-ubyte");
    let labels_name = format!("{prefix}-labels-idx1-ubyte");
    let images_path =
        exists_gz(dir, &images_name).ok_or_else(|| Error::file(dir.join(&images_name), "missing (also tried .gz)"))?;
    let labels_path =
        exists_gz(dir, &labels_name).ok_or_else(|| Error::file(dir.join(&labels_name), "missing (also tried .gz)"))?;
    let images = parse_idx(&images_path, 3)?;
    let labels = parse_idx(&labels_path, 1)?;
    let classes = exists_gz(dir, "classes.txt").map(|p| read_file(&p)).transpose()?;
    idx_dataset(&images_path, images, &labels_path, labels, classes.as_deref())
}

fn idx_dataset(
    images_path: &Path,
    (dims, pixels): (Vec<usize>, Vec<u8>),
    labels_path: &Path,
    (label_dims, labels): (Vec<usize>, Vec<u8>),
    class_names: Option<&[u8]>,
) -> Result<Dataset> {
    let (n, h, w) = (dims[0], dims[1], dims[2]);
    if label_dims[0] != n {
        return Err(Error::file(
            labels_path,
            format!("{} labels for {n} images in {}", label_dims[0], images_path.display()),
        ));
    }
    let num_classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let classes = match class_names {
        Some(text) => parse_names(&labels_path.with_file_name("classes.txt"), text, num_classes)?,
        None => (0..num_classes).map(|i| i.to_string()).collect(),
    };
    let images =
        pixels.chunks_exact(h * w).map(|px| Image { width: w, height: h, channels: 1, pixels: px.to_vec() }).collect();
    Ok(Dataset { images, labels: labels.iter().map(|&l| l as usize).collect(), classes })
}

/// Reads one class name per line (blank lines ignored); there must be at least `min` names.
fn read_names(path: &Path, min: usize) -> Result<Vec<String>> {
    parse_names(path, &read_file(path)?, min)
}

fn parse_names(path: &Path, bytes: &[u8], min: usize) -> Result<Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::file(path, "not UTF-8 text"))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() < min {
        return Err(Error::file(path, format!("{} class names, but the labels need {min}", names.len())));
    }
    Ok(names)
}

/// CIFAR binary records: `label_bytes` label bytes (CIFAR-100: coarse, fine) then 3x32x32 CHW.
fn load_cifar(files: &[PathBuf], fine_offset: usize, classes: Vec<String>) -> Result<Dataset> {
    let record = fine_offset + 1 + 3072;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let bytes = read_file(path)?;
        if bytes.is_empty() || bytes.len() % record != 0 {
            return Err(Error::file(
                path,
                format!("{} bytes is not a whole number of {record}-byte CIFAR records", bytes.len()),
            ));
        }
        for rec in bytes.chunks_exact(record) {
            let label = rec[fine_offset] as usize;
            if label >= classes.len() {
                return Err(Error::file(path, format!("label {label} but only {} classes", classes.len())));
            }
            let chw = &rec[fine_offset + 1..];
            let mut hwc = vec![0u8; 3072];
            for c in 0..3 {
                for i in 0..1024 {
                    hwc[i * 3 + c] = chw[c * 1024 + i];
                }
            }
            images.push(Image { width: 32, height: 32, channels: 3, pixels: hwc });
            labels.push(label);
        }
    }
    Ok(Dataset { images, labels, classes })
}

/// An ImageFolder split: one subfolder per class (sorted by name, as torchvision does), images
/// decoded in parallel. `classes` forces the class list of the training split on `val/`.
fn load_image_folder(dir: &Path, classes: Option<&[String]>) -> Result<Dataset> {
    use rayon::prelude::*;
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(Error::file(dir, "no class folders"));
    }
    let classes: Vec<String> = match classes {
        None => found,
        Some(train) => {
            if let Some(extra) = found.iter().find(|c| !train.contains(c)) {
                return Err(Error::file(dir.join(extra), "a class that the training split does not have"));
            }
            train.to_vec()
        }
    };
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let class_dir = dir.join(class);
        if !class_dir.is_dir() {
            continue; // A validation split may lack a class.
        }
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&class_dir)
            .map_err(|e| Error::file(&class_dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file() && crate::data::preprocess::has_image_extension(p))
            .collect();
        if paths.is_empty() {
            return Err(Error::file(&class_dir, "empty class folder (no .jpg/.jpeg/.png/.webp/.bmp files)"));
        }
        paths.sort();
        files.extend(paths.into_iter().map(|p| (p, label)));
    }
    let images: Vec<Image> = files
        .par_iter()
        .map(|(path, _)| {
            let rgb = crate::data::preprocess::load_rgb(path)?;
            Ok(Image {
                width: rgb.width() as usize,
                height: rgb.height() as usize,
                channels: 3,
                pixels: rgb.into_raw(),
            })
        })
        .collect::<Result<_>>()?;
    Ok(Dataset { images, labels: files.into_iter().map(|(_, l)| l).collect(), classes })
}
