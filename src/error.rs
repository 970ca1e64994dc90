//! The library's error type: every failure a user can cause names the file and the problem.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),

    /// From the engine crate: its spec validation, weight lowering and kernels. The message
    /// names the file, tensor or input at fault.
    #[error(transparent)]
    Engine(#[from] mobilenet_engine::EngineError),

    #[error("{path}: file not found")]
    NotFound { path: PathBuf },

    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("{path}: weights do not match {model}:\n{details}")]
    WeightsMismatch { path: PathBuf, model: String, details: String },

    #[error(
        "the loss became NaN or infinite at epoch {epoch}, batch {batch}; training stopped. The last good \
         checkpoint is {checkpoint} (written at the end of the last complete epoch, if any). Lower --lr, \
         add --clip-grad-norm, or check the data"
    )]
    NonFiniteLoss { epoch: usize, batch: usize, checkpoint: PathBuf },

    #[error("wrong input shape {found:?}: expected {expected}")]
    BadInputShape { found: Vec<usize>, expected: String },

    #[error("{path}: cannot read image: {message}")]
    Image { path: PathBuf, message: String },

    #[error("{path}: {found} labels, but the model has {expected} classes (one label per line, in class order)")]
    LabelCount { path: PathBuf, found: usize, expected: usize },

    #[error("invalid preprocessing: {0}")]
    InvalidPreprocess(String),
}

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File { path: path.into(), message: message.to_string() }
    }
}
