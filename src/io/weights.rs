//! Loading and saving weights under torchvision's `state_dict` keys.
//!
//! The models' module paths *are* torchvision's keys, so no key is renamed here. The only
//! conversion is the one burn-store's PyTorch adapters make for every model: burn keeps Linear
//! weights as `[in, out]`, torch as `[out, in]`. Files we write are therefore plain torchvision
//! state dicts in safetensors form (`torch.nn.Module.load_state_dict(safetensors.torch.load_file(f))`
//! loads them), plus metadata describing the model so they load without repeating flags.
//!
//! Loading is strict: a key the model needs but the file lacks, a key the file has but the model
//! does not, and a shape mismatch are errors that name the key. torch's `num_batches_tracked`
//! buffers are accepted and ignored (they only matter for BN momentum=None).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use burn::tensor::Device;
use burn_store::{
    ApplyError, ApplyResult, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};

use crate::error::{Error, Result};
use crate::io::params;
use crate::models::{MobileNet, ModelConfig};

/// The metadata key holding the model configuration as JSON (defined once, in the engine crate,
/// which reads the same files).
pub use mobilenet_engine::CONFIG_METADATA_KEY;

/// The on-disk formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    Safetensors,
    /// `torch.save` output: the zip format (torch >= 1.6) or the legacy pickle stream.
    Pytorch,
}

/// Identifies a weight file by its first bytes (not its extension).
pub fn detect_format(path: &Path) -> Result<WeightFormat> {
    let mut file = open(path)?;
    let mut head = [0u8; 9];
    let n = read_up_to(&mut file, &mut head).map_err(|e| Error::file(path, e))?;
    if n >= 4 && head[..4] == *b"PK\x03\x04" {
        return Ok(WeightFormat::Pytorch);
    }
    // The legacy torch format is a sequence of pickles, protocol 2: 0x80 0x02.
    if n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        return Ok(WeightFormat::Pytorch);
    }
    // safetensors: u64 little-endian header length, then a JSON object.
    if n == 9 && head[8] == b'{' {
        return Ok(WeightFormat::Safetensors);
    }
    if n == 0 {
        return Err(Error::file(path, "the file is empty"));
    }
    Err(Error::file(path, "not a weight file: expected safetensors or a PyTorch .pth/.pt checkpoint"))
}

fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { path: path.to_path_buf() },
        _ => Error::file(path, e),
    })
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The metadata of a safetensors file (empty for other formats or files without any).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    if detect_format(path)? != WeightFormat::Safetensors {
        return Ok(HashMap::new());
    }
    let mut file = open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::file(path, e))?;
    let len = u64::from_le_bytes(len);
    let size = file.metadata().map_err(|e| Error::file(path, e))?.len();
    if len > 100 << 20 || len + 8 > size {
        return Err(Error::file(path, "truncated or corrupt safetensors header"));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).map_err(|e| Error::file(path, e))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| Error::file(path, format!("corrupt safetensors header: {e}")))?;
    let mut out = HashMap::new();
    if let Some(meta) = header.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in meta {
            if let Some(v) = v.as_str() {
                out.insert(k.clone(), v.to_string());
            }
        }
    }
    Ok(out)
}

/// The model configuration stored in a file we wrote, if any.
pub fn read_config(path: &Path) -> Result<Option<ModelConfig>> {
    let metadata = read_metadata(path)?;
    if metadata.contains_key("mobilenet.train_state") {
        let run = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return Err(Error::file(
            path,
            format!(
                "this is a training checkpoint, not weights: use the run's last.safetensors or best.safetensors \
                 (or continue the run with `train --resume {}`)",
                run.display()
            ),
        ));
    }
    match metadata.get(CONFIG_METADATA_KEY) {
        None => Ok(None),
        Some(json) => serde_json::from_str(json)
            .map(Some)
            .map_err(|e| Error::file(path, format!("bad '{CONFIG_METADATA_KEY}' metadata: {e}"))),
    }
}

/// Builds a model and loads `path` into it. The file's own metadata decides the architecture
/// when present; otherwise `config` must say it.
pub fn load(path: &Path, config: Option<&ModelConfig>, device: &Device) -> Result<MobileNet> {
    let stored = read_config(path)?;
    let config = match (stored, config) {
        (Some(stored), _) => stored,
        (None, Some(config)) => *config,
        (None, None) => {
            return Err(Error::file(
                path,
                "the file does not say which model it holds: pass --model (and --width-mult/--num-classes if not the defaults)",
            ))
        }
    };
    let model = MobileNet::new(&config, device)?;
    load_into(model, path)
}

/// Whether `path` is an int8 model written by `mobilenet quantize`.
pub fn is_int8(path: &Path) -> Result<bool> {
    Ok(mobilenet_engine::quant::format::is_int8(&read_metadata(path)?))
}

/// Refuses an int8 model where f32 weights are needed (burn, training, import).
fn refuse_int8(path: &Path) -> Result<()> {
    if is_int8(path)? {
        return Err(Error::file(
            path,
            "an int8 model (written by `mobilenet quantize`): only the CPU engine runs it (predict, eval and bench \
             with --backend engine); train, import, recalibrate-bn and --backend burn need the f32 weights it was \
             quantised from",
        ));
    }
    Ok(())
}

/// Loads the weights in `path` into `model`, strictly.
pub fn load_into(model: MobileNet, path: &Path) -> Result<MobileNet> {
    refuse_int8(path)?;
    let (model, result) = apply(model, path)?;
    check_strict(&result, path, &model.config().spec.arch.to_string(), None)?;
    Ok(to_f32(model))
}

/// Every float tensor as f32, whatever the file stored (f16, bf16 and f64 files load into
/// tensors of that dtype, which burn's f32 kernels cannot mix): the conversion the engine's
/// reader makes too.
fn to_f32(model: MobileNet) -> MobileNet {
    use burn::tensor::{DType, Tensor};
    params::map(model, |_, flat| {
        (flat.value.dtype() != DType::F32).then(|| {
            let device = flat.value.device();
            Tensor::from_data(flat.value.clone().into_data().convert::<f32>(), &device)
        })
    })
}

/// Loads everything but the last classifier layer strictly; the last layer is taken only when
/// its shape fits (same class count), else it keeps its fresh initialisation. Returns whether it
/// was taken. This is fine-tuning's `--init`.
pub fn load_backbone(model: MobileNet, path: &Path) -> Result<(MobileNet, bool)> {
    refuse_int8(path)?;
    let head = format!("{}.", model.classifier_key());
    let (model, result) = apply(model, path)?;
    check_strict(&result, path, &model.config().spec.arch.to_string(), Some(&head))?;
    let head_loaded = !result.errors.iter().any(|e| error_key(e).starts_with(&head));
    Ok((to_f32(model), head_loaded))
}

fn error_key(error: &ApplyError) -> &str {
    match error {
        ApplyError::ShapeMismatch { path, .. }
        | ApplyError::DTypeMismatch { path, .. }
        | ApplyError::AdapterError { path, .. }
        | ApplyError::LoadError { path, .. } => path,
    }
}

fn apply(mut model: MobileNet, path: &Path) -> Result<(MobileNet, ApplyResult)> {
    let result = match detect_format(path)? {
        WeightFormat::Pytorch => {
            let mut store = PytorchStore::from_file(path)
                .allow_partial(true)
                .validate(false)
                .skip_enum_variants(true)
                // torchvision's indices are already the model's (the V3 classifier's are 0 and 3).
                .map_indices_contiguous(false);
            check_claimed_sizes(&mut store, path)?;
            model.load_from(&mut store).map_err(|e| Error::file(path, e))?
        }
        WeightFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path)
                .allow_partial(true)
                .validate(false)
                .skip_enum_variants(true)
                .with_from_adapter(PyTorchToBurnAdapter);
            model.load_from(&mut store).map_err(|e| Error::file(path, e))?
        }
    };
    Ok((model, result))
}

/// Refuses a checkpoint whose tensors claim more bytes than the file holds, before anything is
/// read: only a strided view (a stride of 0 repeating a few stored values) can do that, and
/// materialising it would allocate what the header asks for (gigabytes from a 100 KB file).
fn check_claimed_sizes(store: &mut PytorchStore, path: &Path) -> Result<()> {
    use burn_store::ModuleStore;
    let file_len = std::fs::metadata(path).map_err(|e| Error::file(path, e))?.len();
    let tensors = store.get_all_tensors().map_err(|e| Error::file(path, e))?;
    if let Some(t) = tensors.values().find(|t| t.byte_len() as u64 > file_len) {
        return Err(Error::file(
            path,
            format!(
                "tensor '{}' of shape {:?} claims {} bytes, more than the whole file ({file_len} bytes): \
                 a corrupt or hostile checkpoint",
                t.name,
                t.shape.as_slice(),
                t.byte_len()
            ),
        ));
    }
    Ok(())
}

/// Turns every problem in `result` into an error, except shape mismatches under `tolerated`.
fn check_strict(result: &ApplyResult, path: &Path, model: &str, tolerated: Option<&str>) -> Result<()> {
    let tolerated = |e: &ApplyError| {
        matches!(e, ApplyError::ShapeMismatch { .. }) && tolerated.is_some_and(|t| error_key(e).starts_with(t))
    };
    let mismatched: Vec<String> = result
        .errors
        .iter()
        .filter(|e| !tolerated(e))
        .map(|error| match error {
            ApplyError::ShapeMismatch { path, expected, found } => format!(
                "{path}: shape mismatch: the model has {:?}, the file has {:?}",
                expected.as_slice(),
                found.as_slice()
            ),
            other => other.to_string(),
        })
        .collect();
    let missing: Vec<String> = result.missing.iter().map(|(key, _)| format!("{key}: missing from the file")).collect();
    let unexpected: Vec<String> = result
        .unused
        .iter()
        .filter(|key| !key.ends_with("num_batches_tracked"))
        .map(|key| format!("{key}: unexpected key (the model has no such parameter)"))
        .collect();
    let mut details = Vec::new();
    // At most 8 lines of each kind, so that every kind of problem shows.
    for group in [mismatched, missing, unexpected] {
        let total = group.len();
        details.extend(group.into_iter().take(8).map(|line| format!("  {line}")));
        if total > 8 {
            details.push(format!("  ... and {} more like this", total - 8));
        }
    }
    if details.is_empty() {
        return Ok(());
    }
    Err(Error::WeightsMismatch { path: path.to_path_buf(), model: model.to_string(), details: details.join("\n") })
}

/// Saves `model` as safetensors with torchvision's keys and layout, plus metadata. The write is
/// atomic: an existing file at `path` is replaced only once the new one is complete.
pub fn save(model: &MobileNet, path: &Path) -> Result<()> {
    save_with_metadata(model, path, &[])
}

/// [`save`] with extra metadata entries, e.g. the preprocessing the weights expect
/// ([`crate::data::preprocess::PREPROCESS_METADATA_KEY`]), so that `predict` needs no flags.
pub fn save_with_metadata(model: &MobileNet, path: &Path, extra: &[(String, String)]) -> Result<()> {
    let config = model.config();
    // Serialised in memory, then written through the one atomic writer (which refuses to
    // replace a symlink, FIFO or device, and cleans up after a failure).
    let mut store = SafetensorsStore::from_bytes(None)
        .skip_enum_variants(true)
        .with_to_adapter(BurnToPyTorchAdapter)
        .metadata(CONFIG_METADATA_KEY, serde_json::to_string(config).expect("config serialises"))
        .metadata("model", config.spec.arch.name())
        .metadata("num_classes", config.spec.num_classes.to_string())
        .metadata("width_mult", config.spec.width_mult.to_string());
    for (key, value) in extra {
        store = store.metadata(key.clone(), value.clone());
    }
    model.save_into(&mut store).map_err(|e| Error::file(path, e))?;
    let bytes = store.get_bytes().map_err(|e| Error::file(path, e))?;
    crate::io::atomic::write_atomic(path, &bytes)
}
