//! Parameters, BatchNorm buffers and gradients by torchvision key, in torch's layouts: conv
//! weights `[out, in / groups, k, k]`, BatchNorm `weight`/`bias`/`running_mean`/`running_var`
//! `[c]`, squeeze-excite `fc1`/`fc2` `[out, in, 1, 1]` with bias, Linear `[out, in]` with bias.
//! One flat f32 store for the values and one for the gradients (same offsets); the layers keep
//! their own packed copies, rebuilt from here whenever a value changed (see `Trainer::sync`).

use std::collections::HashMap;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// Trained: has a gradient.
    Weight,
    /// BatchNorm running statistics: updated by the forward pass, no gradient.
    Buffer,
}

#[derive(Debug, Clone)]
pub struct ParamEntry {
    pub key: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    pub kind: ParamKind,
}

#[derive(Debug, Clone, Default)]
pub struct ParamStore {
    entries: Vec<ParamEntry>,
    index: HashMap<String, usize>,
    values: Vec<f32>,
    grads: Vec<f32>,
}

impl ParamStore {
    pub fn register(&mut self, key: String, shape: Vec<usize>, kind: ParamKind) -> usize {
        let len = shape.iter().product();
        let id = self.entries.len();
        assert!(self.index.insert(key.clone(), id).is_none(), "parameter {key} registered twice");
        self.entries.push(ParamEntry { key, shape, offset: self.values.len(), len, kind });
        self.values.resize(self.values.len() + len, 0.0);
        self.grads.resize(self.grads.len() + len, 0.0);
        id
    }

    pub fn entries(&self) -> &[ParamEntry] {
        &self.entries
    }

    pub fn id(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    pub fn value(&self, id: usize) -> &[f32] {
        let e = &self.entries[id];
        &self.values[e.offset..e.offset + e.len]
    }

    pub fn value_mut(&mut self, id: usize) -> &mut [f32] {
        let e = &self.entries[id];
        &mut self.values[e.offset..e.offset + e.len]
    }

    pub fn grad(&self, id: usize) -> &[f32] {
        let e = &self.entries[id];
        &self.grads[e.offset..e.offset + e.len]
    }

    pub fn grad_mut(&mut self, id: usize) -> &mut [f32] {
        let e = &self.entries[id];
        &mut self.grads[e.offset..e.offset + e.len]
    }

    /// The entry, values and gradient of one parameter, the values mutable (for optimizers).
    pub fn value_and_grad_mut(&mut self, id: usize) -> (&ParamEntry, &mut [f32], &[f32]) {
        let e = &self.entries[id];
        (e, &mut self.values[e.offset..e.offset + e.len], &self.grads[e.offset..e.offset + e.len])
    }

    /// Copies `data` into the tensor `key`, checking its length (and shape, if given).
    pub fn load(&mut self, key: &str, shape: Option<&[usize]>, data: &[f32]) -> Result<()> {
        let id = self.id(key).ok_or_else(|| EngineError::Spec(format!("no parameter '{key}' in this model")))?;
        let e = &self.entries[id];
        if let Some(shape) = shape {
            // Accept [out, in] for a 1x1 conv's [out, in, 1, 1] and the reverse (same data).
            let trimmed = |s: &[usize]| s.iter().rev().skip_while(|&&d| d == 1).count();
            let same = shape == e.shape.as_slice()
                || (shape.iter().product::<usize>() == e.len && trimmed(shape) == trimmed(&e.shape) && {
                    let a: Vec<_> = shape.iter().copied().filter(|&d| d != 1).collect();
                    let b: Vec<_> = e.shape.iter().copied().filter(|&d| d != 1).collect();
                    a == b
                });
            if !same {
                return Err(EngineError::Spec(format!("'{key}': shape {shape:?}, expected {:?}", e.shape)));
            }
        }
        if data.len() != e.len {
            return Err(EngineError::Spec(format!("'{key}': {} values, expected {}", data.len(), e.len)));
        }
        self.value_mut(id).copy_from_slice(data);
        Ok(())
    }
}
