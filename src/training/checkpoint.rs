//! Training checkpoints: one safetensors file holding the model (`model/<key>`), the optimizer
//! state (`optim/<key>/<buffer>`), the weight EMA (`ema/<key>`) and, as metadata, the run's
//! configuration and progress. Written to a temporary file and renamed, so a crash at any moment
//! leaves the previous checkpoint whole.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::tensor_io::{read_tensors, serialize_tensors, HostTensor};
use crate::io::{params, weights};
use crate::models::MobileNet;
use crate::training::optim::{trainable_filter, Optimizer};
use crate::training::TrainConfig;

const STATE_KEY: &str = "mobilenet.train_state";

/// Where a run stands after a completed epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs completed (the next epoch to run).
    pub epochs_done: usize,
    pub optimizer_steps: u64,
    pub ema_updates: u64,
    pub best_top1: f64,
    pub best_epoch: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    config: TrainConfig,
    progress: Progress,
}

/// Everything a checkpoint holds.
pub struct Checkpoint {
    pub config: TrainConfig,
    pub progress: Progress,
    pub model: MobileNet,
    pub optimizer: Optimizer,
    pub ema: Option<MobileNet>,
}

fn host(module: &MobileNet, prefix: &str) -> Vec<(String, HostTensor)> {
    params::collect(module)
        .into_iter()
        .map(|(k, f)| {
            let mut t = HostTensor::from_tensor(f.value);
            t.shape = f.dims;
            (format!("{prefix}/{k}"), t)
        })
        .collect()
}

pub fn save(
    path: &Path,
    config: &TrainConfig,
    progress: &Progress,
    model: &MobileNet,
    optimizer: &Optimizer,
    ema: Option<&MobileNet>,
) -> Result<()> {
    let bytes = to_bytes(config, progress, model, optimizer, ema)?;
    crate::io::atomic::write_atomic(path, &bytes)
}

/// The bytes of a checkpoint (what [`save`] writes).
pub fn to_bytes(
    config: &TrainConfig,
    progress: &Progress,
    model: &MobileNet,
    optimizer: &Optimizer,
    ema: Option<&MobileNet>,
) -> Result<Vec<u8>> {
    let mut tensors = host(model, "model");
    tensors.extend(optimizer.state_tensors().into_iter().map(|(k, t)| (format!("optim/{k}"), t)));
    if let Some(ema) = ema {
        tensors.extend(host(ema, "ema"));
    }
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let state = State { config: config.clone(), progress: progress.clone() };
    let metadata = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(&state).expect("state serialises"))]);
    serialize_tensors(&refs, Some(metadata))
}

/// The optimizer buffers every trained tensor has after the first step.
/// After a step, every trained tensor has its optimizer buffers: a checkpoint without one of
/// them would resume without that tensor's momentum (a different run), so it is refused.
fn check_optimizer_state(
    path: &Path,
    state: &State,
    model: &MobileNet,
    optim: &BTreeMap<String, HostTensor>,
) -> Result<()> {
    if state.progress.optimizer_steps == 0 {
        return Ok(());
    }
    let buffers = state.config.optimizer.state_buffers();
    let trained = trainable_filter(model, state.config.freeze_backbone, state.config.freeze_bn);
    let keys = params::collect(model);
    for key in keys.keys().filter(|k| trained(k)) {
        for buffer in &buffers {
            let name = format!("{key}/{buffer}");
            if !optim.contains_key(&name) {
                return Err(Error::file(
                    path,
                    format!(
                        "optimizer state 'optim/{name}' is missing after {} steps: resuming would lose that \
                         tensor's {buffer}; the checkpoint is incomplete",
                        state.progress.optimizer_steps
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Loads a checkpoint onto `device` (the training device).
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let meta = weights::read_metadata(path)?;
    let json = meta.get(STATE_KEY).ok_or_else(|| Error::file(path, "not a training checkpoint (no run state)"))?;
    let state: State = serde_json::from_str(json).map_err(|e| Error::file(path, format!("corrupt run state: {e}")))?;
    state.config.validate().map_err(|e| Error::file(path, format!("run state: {e}")))?;
    let mut tensors = read_tensors(path)?;
    let mut group = |prefix: &str| -> BTreeMap<String, HostTensor> {
        let keys: Vec<String> = tensors.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.into_iter().map(|k| (k[prefix.len()..].to_string(), tensors.remove(&k).unwrap())).collect()
    };
    let model_t = group("model/");
    let optim_t = group("optim/");
    let ema_t = group("ema/");
    let plain = device.clone().without_autodiff();
    let restore = |fresh: MobileNet, values: &BTreeMap<String, HostTensor>| -> Result<MobileNet> {
        let mut problem = None;
        let model = params::map(fresh, |key, flat| match values.get(key) {
            Some(t) if t.shape == flat.dims => {
                Some(Tensor::from_data(TensorData::new(t.data.clone(), [t.data.len()]), &plain))
            }
            Some(t) => {
                problem.get_or_insert_with(|| format!("'{key}' has shape {:?}, the model {:?}", t.shape, flat.dims));
                None
            }
            None => {
                problem.get_or_insert_with(|| format!("checkpoint lacks '{key}'"));
                None
            }
        });
        match problem {
            Some(problem) => Err(Error::file(path, problem)),
            None => Ok(model),
        }
    };
    let model = restore(MobileNet::new(&state.config.model, device)?, &model_t)?;
    check_optimizer_state(path, &state, &model, &optim_t)?;
    let ema = if ema_t.is_empty() {
        None
    } else {
        Some(restore(MobileNet::new(&state.config.model, &plain)?, &ema_t)?.eval_mode())
    };
    let mut optimizer = Optimizer::new(state.config.optimizer);
    optimizer.load_state(state.progress.optimizer_steps, optim_t, &plain)?;
    Ok(Checkpoint { config: state.config, progress: state.progress, model, optimizer, ema })
}

/// The files a run folder holds besides `last.ckpt`, as of its last completed epoch.
pub const RUN_FILES: [&str; 6] =
    ["metrics.csv", "curves.png", "last.safetensors", "ema.safetensors", "best.ckpt", "best.safetensors"];

const STAGE_PREFIX: &str = ".epoch-";

/// Where the files of the epoch that completes `epochs_done` are written before the commit.
///
/// The end of an epoch: every file (metrics, curves, weights, `best.*`) is written into this
/// hidden folder; then `last.ckpt` is replaced, atomically, which commits the epoch; then the
/// staged files are renamed into place ([`publish_epoch`]). A kill before the commit leaves the
/// previous epoch's folder as it was (the staging folder is discarded on resume); a kill after
/// it leaves the rest of the publishing to the resume. So at any instant the folder either is,
/// or by `--resume` becomes, exactly what its `last.ckpt` records.
pub fn stage_dir(out: &Path, epochs_done: usize) -> std::path::PathBuf {
    out.join(format!("{STAGE_PREFIX}{epochs_done}"))
}

/// Renames the staged files of the committed epoch `epochs_done` into place and discards the
/// staging folders of any other (uncommitted) epoch. Idempotent: a resume finishes what a kill
/// interrupted.
pub fn publish_epoch(out: &Path, epochs_done: usize) -> Result<()> {
    let committed = stage_dir(out, epochs_done);
    let entries = std::fs::read_dir(out).map_err(|e| Error::file(out, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(STAGE_PREFIX) || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let stage = entry.path();
        if stage == committed {
            for file in RUN_FILES {
                let staged = stage.join(file);
                if staged.is_file() {
                    crate::io::atomic::publish(&staged, &out.join(file))?;
                }
            }
        }
        std::fs::remove_dir_all(&stage).map_err(|e| Error::file(&stage, e))?;
    }
    // Once an epoch is committed, last.ckpt marks the folder as taken.
    let _ = std::fs::remove_file(out.join(CLAIM));
    Ok(())
}

/// Whether `name` is a file or folder this program leaves only transiently (staging folders,
/// temporary files), which a fresh run may take over.
fn transient(name: &str) -> bool {
    name == CLAIM || name.starts_with(STAGE_PREFIX) || (name.starts_with('.') && name.contains(".tmp-"))
}

/// The marker a run starting in an explicit `--output` folder holds until its first epoch is
/// committed (then `last.ckpt` marks the folder as taken): the id of the claiming process.
const CLAIM: &str = ".claim";

/// Takes `dir` for this process: creates [`CLAIM`] exclusively, with its content (a hard link
/// of a temporary file holding the process id, so no one reads it half-written), replacing one
/// left by a process that is no longer running.
fn claim_marker(dir: &Path) -> Result<()> {
    let marker = dir.join(CLAIM);
    // Unique per call (several threads of one process may claim at once).
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = crate::io::atomic::temp_path(&dir.join(format!("{CLAIM}.{call}")))?;
    std::fs::write(&tmp, std::process::id().to_string()).map_err(|e| Error::file(&tmp, e))?;
    let mut result = Err(Error::file(dir, "another run is starting in this folder"));
    for _ in 0..2 {
        match std::fs::hard_link(&tmp, &marker) {
            Ok(()) => {
                result = Ok(());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&marker).ok().and_then(|t| t.trim().parse::<u32>().ok());
                if let Some(pid) = owner.filter(|&pid| crate::io::atomic::process_alive(pid)) {
                    result = Err(Error::file(dir, format!("another run (process {pid}) is starting in this folder")));
                    break;
                }
                let _ = std::fs::remove_file(&marker);
            }
            Err(e) => {
                result = Err(Error::file(&marker, e));
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&tmp);
    result
}

/// The folder a new run writes into, claimed so that no other run can take it: the given
/// `--output` (which must be new, or empty: a folder holding anything but this program's
/// leftovers is refused, and one holding a run is to be resumed instead), or the first free
/// `<runs>/<model>-<n>`, created atomically (two runs started together get different folders).
pub fn claim_run_dir(output: Option<&Path>, runs: &Path, arch: crate::models::Arch) -> Result<std::path::PathBuf> {
    let Some(dir) = output else {
        std::fs::create_dir_all(runs).map_err(|e| Error::file(runs, e))?;
        for n in 1.. {
            let dir = runs.join(format!("{arch}-{n}"));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::file(&dir, e)),
            }
        }
        unreachable!("a free run folder");
    };
    if dir.join("last.ckpt").exists() {
        return Err(Error::file(
            dir,
            format!("already holds a run: continue it with --resume {}, or choose another --output", dir.display()),
        ));
    }
    if std::fs::symlink_metadata(dir).is_ok() && !dir.is_dir() {
        return Err(Error::file(dir, "--output must be a folder"));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    claim_marker(dir)?;
    {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, e))?;
        let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        if let Some(first) = names.iter().find(|n| !transient(n)) {
            let _ = std::fs::remove_file(dir.join(CLAIM));
            return Err(Error::file(
                dir,
                format!(
                    "--output is not empty ({first}{}) and holds no run (no last.ckpt): refusing to overwrite \
                     what is there; choose a new or empty folder",
                    if names.iter().filter(|n| !transient(n)).count() > 1 { ", …" } else { "" }
                ),
            ));
        }
        for name in names.into_iter().filter(|n| n != CLAIM) {
            let path = dir.join(name);
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
    Ok(dir.to_path_buf())
}
