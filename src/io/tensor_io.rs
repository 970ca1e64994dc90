//! Reading and writing named f32 tensors in safetensors files (the `infer` command's I/O and the
//! test fixtures' format).

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// A host-side f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn to_tensor<const D: usize>(&self, device: &Device) -> Result<Tensor<D>> {
        if self.shape.len() != D {
            return Err(Error::BadInputShape { found: self.shape.clone(), expected: format!("a rank-{D} tensor") });
        }
        Ok(Tensor::from_data(TensorData::new(self.data.clone(), self.shape.clone()), device))
    }

    pub fn from_tensor<const D: usize>(tensor: Tensor<D>) -> Self {
        let shape = tensor.dims().to_vec();
        let data = tensor.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data");
        Self { shape, data }
    }
}

/// A safetensors file's bytes (a missing file is [`Error::NotFound`]).
fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { path: path.to_path_buf() },
        _ => Error::file(path, e),
    })
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| Error::file(path, format!("not a valid safetensors file: {e}")))
}

/// One tensor as f32 host data; any other dtype is an error naming the tensor.
fn host_f32(path: &Path, name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<HostTensor> {
    if view.dtype() != Dtype::F32 {
        return Err(Error::file(path, format!("tensor '{name}' has dtype {:?}; expected F32", view.dtype())));
    }
    let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(HostTensor { shape: view.shape().to_vec(), data })
}

/// Reads every tensor of a safetensors file; each must be f32.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let bytes = read_file(path)?;
    let st = parse(path, &bytes)?;
    st.tensors().into_iter().map(|(name, view)| Ok((name.clone(), host_f32(path, &name, &view)?))).collect()
}

/// Reads one named tensor, which must be f32 (the file's other tensors may be anything).
pub fn read_tensor(path: &Path, name: &str) -> Result<HostTensor> {
    let bytes = read_file(path)?;
    let st = parse(path, &bytes)?;
    let view = st.tensor(name).map_err(|_| {
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        Error::file(path, format!("no tensor named '{name}' (found: {})", names.join(", ")))
    })?;
    host_f32(path, name, &view)
}

/// Writes named f32 tensors, atomically (temporary file, then rename).
pub fn write_tensors(path: &Path, tensors: &[(&str, &HostTensor)]) -> Result<()> {
    write_tensors_with_metadata(path, tensors, None)
}

/// Writes named f32 tensors and string metadata, atomically.
pub fn write_tensors_with_metadata(
    path: &Path,
    tensors: &[(&str, &HostTensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let serialized = serialize_tensors(tensors, metadata).map_err(|e| Error::file(path, e))?;
    write_atomic(path, &serialized)
}

/// The bytes [`write_tensors_with_metadata`] writes (for a file written to several places).
pub fn serialize_tensors(
    tensors: &[(&str, &HostTensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| (name.to_string(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let mut views = Vec::with_capacity(bytes.len());
    for (name, data, shape) in &bytes {
        let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| Error::InvalidConfig(format!("tensor '{name}': {e}")))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, metadata).map_err(|e| Error::InvalidConfig(format!("serialising tensors: {e}")))
}

/// Writes `bytes` atomically: see [`crate::io::atomic::write_atomic`], which every output goes through.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::io::atomic::write_atomic(path, bytes)
}
