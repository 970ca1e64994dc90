//! Training checkpoints: one safetensors file holding the model (`model/<key>`), the optimizer
//! state (`optim/<key>/<buffer>`), the weight EMA (`ema/<key>`) and, as metadata, the run's
//! configuration and progress. Written to a temporary file and renamed, so a crash at any moment
//! leaves the previous checkpoint whole.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::tensor_io::{read_tensors, write_tensors_with_metadata, HostTensor};
use crate::io::{params, weights};
use crate::models::MobileNet;
use crate::training::optim::Optimizer;
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
    let mut tensors = host(model, "model");
    tensors.extend(optimizer.state_tensors().into_iter().map(|(k, t)| (format!("optim/{k}"), t)));
    if let Some(ema) = ema {
        tensors.extend(host(ema, "ema"));
    }
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let state = State { config: config.clone(), progress: progress.clone() };
    let metadata = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(&state).expect("state serialises"))]);
    write_tensors_with_metadata(path, &refs, Some(metadata))
}

/// Loads a checkpoint onto `device` (the training device).
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let meta = weights::read_metadata(path)?;
    let json = meta.get(STATE_KEY).ok_or_else(|| Error::file(path, "not a training checkpoint (no run state)"))?;
    let state: State = serde_json::from_str(json).map_err(|e| Error::file(path, format!("corrupt run state: {e}")))?;
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
    let ema = if ema_t.is_empty() {
        None
    } else {
        Some(restore(MobileNet::new(&state.config.model, &plain)?, &ema_t)?.eval_mode())
    };
    let mut optimizer = Optimizer::new(state.config.optimizer);
    optimizer.load_state(state.progress.optimizer_steps, optim_t, &plain)?;
    Ok(Checkpoint { config: state.config, progress: state.progress, model, optimizer, ema })
}
