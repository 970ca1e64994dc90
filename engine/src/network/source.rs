//! Where the lowering gets its tensors: [`TensorSource`] hands out f32 tensors by their
//! torchvision state-dict key, checks each one's shape, and remembers which were taken, so that
//! a file holding tensors the model does not use (another model's checkpoint) is refused rather
//! than half-read. For benchmarks it can make up finite, normal weights of the right shapes
//! instead ([`TensorSource::random`]).

use std::collections::{BTreeSet, HashMap};

use crate::error::{EngineError, Result};

/// f32 tensors by name: (shape, values), as read from a checkpoint.
pub type NamedTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Where the engine gets tensors from: torchvision's layout and keys, f32.
pub struct TensorSource {
    tensors: NamedTensors,
    used: BTreeSet<String>,
    /// When set, every requested tensor is made up (for benchmarks): a seed.
    random: Option<u64>,
}

impl TensorSource {
    pub fn new(tensors: NamedTensors) -> Self {
        Self { tensors, used: BTreeSet::new(), random: None }
    }

    /// Made-up weights of the right shapes and scales (He-normal-like convs, BatchNorm near
    /// identity): for timing, where the values do not matter but must stay finite and normal.
    pub fn random(seed: u64) -> Self {
        Self { tensors: HashMap::new(), used: BTreeSet::new(), random: Some(seed) }
    }

    /// The tensor at `key`, which must have `shape` (or the same shape up to dimensions of 1).
    pub(super) fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if let Some(seed) = self.random.as_mut() {
            let n: usize = shape.iter().product();
            let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f32;
            let mut next = || {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            };
            let data = if key.ends_with("running_var") || (key.ends_with(".weight") && shape.len() == 1) {
                (0..n).map(|_| 1.0 + 0.1 * next()).collect()
            } else if shape.len() == 1 {
                (0..n).map(|_| 0.1 * next()).collect()
            } else {
                let scale = (3.0 / fan_in).sqrt();
                (0..n).map(|_| scale * next()).collect()
            };
            return Ok(data);
        }
        let (found, data) = self.tensors.get(key).ok_or_else(|| EngineError::MissingTensor(key.to_string()))?;
        // A 1x1 conv stored as [out, in] (a Linear) or a Linear as [out, in, 1, 1] is the same data.
        let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        if found != shape && squeeze(found) != squeeze(shape) {
            return Err(EngineError::Shape { key: key.to_string(), expected: shape.to_vec(), found: found.clone() });
        }
        if data.len() != shape.iter().product::<usize>() {
            return Err(EngineError::Shape { key: key.to_string(), expected: shape.to_vec(), found: vec![data.len()] });
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(EngineError::NonFinite { what: format!("weights: tensor '{key}'"), index: i, value: data[i] });
        }
        self.used.insert(key.to_string());
        Ok(data.clone())
    }

    /// Strict loading: a tensor the model does not use is an error (a different model's file).
    pub(super) fn finish(&self) -> Result<()> {
        let unused: Vec<&String> =
            self.tensors.keys().filter(|k| !self.used.contains(*k) && !k.ends_with("num_batches_tracked")).collect();
        match unused.iter().min() {
            None => Ok(()),
            Some(example) => Err(EngineError::UnexpectedTensors { count: unused.len(), example: example.to_string() }),
        }
    }
}
