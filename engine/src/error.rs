//! What can go wrong, each error naming the file, tensor or input at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("unknown model '{0}': expected one of mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small")]
    UnknownModel(String),
    #[error("weights: missing tensor '{0}'")]
    MissingTensor(String),
    #[error("weights: tensor '{key}' has shape {found:?}, the model needs {expected:?}")]
    Shape { key: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("weights: {count} unexpected tensor(s), e.g. '{example}' (not part of this model)")]
    UnexpectedTensors { count: usize, example: String },
    #[error("input: {0}")]
    Input(String),
    /// A NaN or infinity where the engine needs finite values (its fused activations would
    /// otherwise turn it into finite, meaningless logits).
    #[error("{what} holds a non-finite value ({value}) at index {index}")]
    NonFinite { what: String, index: usize, value: f32 },
    #[error("wrong input shape {found:?}: expected {expected}")]
    InputShape { found: Vec<usize>, expected: String },
    #[error("invalid model configuration: {0}")]
    Spec(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;

impl EngineError {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        EngineError::File { path: path.into(), message: message.into() }
    }
}
