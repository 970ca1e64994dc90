//! The quantised model file: one safetensors file, torchvision's keys where torchvision has them.
//!
//! - Each conv at its key `K` (`features.3.conv.1.0`): `K.weight` (I8, torch's
//!   `[out, in/groups, k, k]`), `K.weight_scale` (F32 `[out]`, symmetric per output channel) and
//!   `K.bias` (F32 `[out]`, the BatchNorm folded in; the BatchNorm itself is gone).
//! - Squeeze-excite and classifier tensors: F32, torchvision's keys, as in an f32 file.
//! - Metadata: [`crate::CONFIG_METADATA_KEY`] (the architecture, as in f32 files) and
//!   [`INT8_METADATA_KEY`]: a JSON [`Int8Metadata`] with the format version, the weight bits,
//!   every map's scale and zero point (with the layer that writes it, to be read by people) and
//!   how the model was calibrated. Other metadata (the preprocessing) is carried through.
//!
//! Loading checks what a hand-edited or foreign file could get wrong: dtypes, shapes, scales
//! (finite, > 0), weights within the declared bits, one parameter set per map.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::arch::ModelSpec;
use crate::error::{EngineError, Result};
use crate::network::folded::{FoldSource, FoldedLayer, FoldedModel};
use crate::CONFIG_METADATA_KEY;

use super::network::QuantModel;
use super::scheme::{ActivationQuant, QuantizedWeights};

/// The metadata entry that marks a file as an int8 model (and holds its parameters).
pub const INT8_METADATA_KEY: &str = "mobilenet.int8";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// One map's parameters as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MapParams {
    /// The layer writing the map (`input` for the image); informative, checked on load.
    pub layer: String,
    pub scale: f32,
    pub zero_point: u8,
}

/// How the model was calibrated (informative).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct CalibrationInfo {
    pub method: String,
    pub images: usize,
    pub source: String,
}

/// The [`INT8_METADATA_KEY`] entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Int8Metadata {
    pub version: u32,
    pub weight_bits: u8,
    pub maps: Vec<MapParams>,
    pub calibration: CalibrationInfo,
}

/// Who writes each map: `input`, a conv's key or (after it) a squeeze-excite's key.
fn map_names(folded: &FoldedModel) -> Vec<String> {
    let mut names = vec!["input".to_string(); folded.maps.len()];
    for layer in &folded.layers {
        match layer {
            FoldedLayer::Conv(c) => names[c.output] = c.key.clone(),
            FoldedLayer::SqueezeExcite(se) => names[se.map] = se.key.clone(),
        }
    }
    names
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The file's bytes: `model` with `calibration` and the `extra` metadata entries (e.g. the
/// preprocessing of the f32 file it came from).
pub fn to_bytes(
    model: &QuantModel,
    weight_bits: u8,
    calibration: CalibrationInfo,
    extra: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let folded = &model.folded;
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut weights = model.conv_weights.iter();
    for layer in &folded.layers {
        match layer {
            FoldedLayer::Conv(c) => {
                let q = weights.next().expect("one int8 weight set per conv");
                let per_group = if c.depthwise { 1 } else { c.cin };
                let shape = vec![c.cout, per_group, c.kernel, c.kernel];
                let values = q.values.iter().map(|&v| v as u8).collect();
                tensors.push((format!("{}.weight", c.key), safetensors::Dtype::I8, shape, values));
                tensors.push((
                    format!("{}.weight_scale", c.key),
                    safetensors::Dtype::F32,
                    vec![c.cout],
                    f32_bytes(&q.scales),
                ));
                tensors.push((format!("{}.bias", c.key), safetensors::Dtype::F32, vec![c.cout], f32_bytes(&c.bias)));
            }
            FoldedLayer::SqueezeExcite(se) => {
                let k = &se.key;
                let f = safetensors::Dtype::F32;
                tensors.push((format!("{k}.fc1.weight"), f, vec![se.squeeze, se.channels, 1, 1], f32_bytes(&se.fc1)));
                tensors.push((format!("{k}.fc1.bias"), f, vec![se.squeeze], f32_bytes(&se.b1)));
                tensors.push((format!("{k}.fc2.weight"), f, vec![se.channels, se.squeeze, 1, 1], f32_bytes(&se.fc2)));
                tensors.push((format!("{k}.fc2.bias"), f, vec![se.channels], f32_bytes(&se.b2)));
            }
        }
    }
    for l in &folded.head {
        tensors.push((format!("{}.weight", l.key), safetensors::Dtype::F32, vec![l.n, l.k], f32_bytes(&l.weights)));
        tensors.push((format!("{}.bias", l.key), safetensors::Dtype::F32, vec![l.n], f32_bytes(&l.bias)));
    }
    let names = map_names(folded);
    let meta = Int8Metadata {
        version: FORMAT_VERSION,
        weight_bits,
        maps: model
            .activations
            .iter()
            .zip(names)
            .map(|(q, layer)| MapParams { layer, scale: q.scale, zero_point: q.zero_point })
            .collect(),
        calibration,
    };
    let mut metadata = extra.clone();
    // The caller's configuration (a superset of the spec, e.g. the CLI's) wins.
    metadata
        .entry(CONFIG_METADATA_KEY.to_string())
        .or_insert_with(|| serde_json::to_string(&folded.spec).expect("spec serialises"));
    metadata.insert(INT8_METADATA_KEY.to_string(), serde_json::to_string(&meta).expect("metadata serialises"));
    metadata.insert("model".to_string(), folded.spec.arch.name().to_string());
    metadata.insert("num_classes".to_string(), folded.spec.num_classes.to_string());
    let mut views = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, data) in &tensors {
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
            .map_err(|e| EngineError::Spec(format!("tensor '{name}': {e}")))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, Some(metadata)).map_err(|e| EngineError::Spec(format!("serialising: {e}")))
}

/// Whether `metadata` (a safetensors file's) marks an int8 model.
pub fn is_int8(metadata: &HashMap<String, String>) -> bool {
    metadata.contains_key(INT8_METADATA_KEY)
}

/// Reads an int8 model from a file's bytes; `path` names it in errors. Returns the model, its
/// [`Int8Metadata`] and all of the file's metadata.
pub fn from_bytes(path: &std::path::Path, bytes: &[u8]) -> Result<(QuantModel, Int8Metadata, HashMap<String, String>)> {
    let bad = |m: String| EngineError::file(path, m);
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a safetensors file or truncated: {e}")))?;
    let metadata: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
    let int8_json = metadata
        .get(INT8_METADATA_KEY)
        .ok_or_else(|| bad(format!("no '{INT8_METADATA_KEY}' metadata: not an int8 model (use it as f32 weights)")))?;
    let meta: Int8Metadata =
        serde_json::from_str(int8_json).map_err(|e| bad(format!("bad '{INT8_METADATA_KEY}' metadata: {e}")))?;
    if meta.version != FORMAT_VERSION {
        return Err(bad(format!(
            "int8 format version {} (this build reads version {FORMAT_VERSION}); quantise the f32 model again",
            meta.version
        )));
    }
    if !(2..=8).contains(&meta.weight_bits) {
        return Err(bad(format!("weight_bits {} is not in 2..=8", meta.weight_bits)));
    }
    let spec_json =
        metadata.get(CONFIG_METADATA_KEY).ok_or_else(|| bad(format!("no '{CONFIG_METADATA_KEY}' metadata")))?;
    let spec: ModelSpec =
        serde_json::from_str(spec_json).map_err(|e| bad(format!("bad '{CONFIG_METADATA_KEY}' metadata: {e}")))?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a safetensors file or truncated: {e}")))?;
    let mut source =
        FileSource { st: &st, used: Default::default(), weights: Vec::new(), qmax: (1 << (meta.weight_bits - 1)) - 1 };
    let folded = FoldedModel::fold(&spec, &mut source).map_err(|e| bad(e.to_string()))?;
    if meta.maps.len() != folded.maps.len() {
        return Err(bad(format!(
            "{} map parameter sets in '{INT8_METADATA_KEY}', the model has {} maps",
            meta.maps.len(),
            folded.maps.len()
        )));
    }
    for (i, (p, name)) in meta.maps.iter().zip(map_names(&folded)).enumerate() {
        if p.layer != name {
            return Err(bad(format!("map {i} is written by '{name}', the metadata says '{}'", p.layer)));
        }
        if !(p.scale.is_finite() && p.scale > 0.0) {
            return Err(bad(format!("map {i} ('{name}'): scale {} is not finite and positive", p.scale)));
        }
    }
    let activations = meta.maps.iter().map(|p| ActivationQuant { scale: p.scale, zero_point: p.zero_point }).collect();
    let model = QuantModel { folded, conv_weights: source.weights, activations };
    Ok((model, meta, metadata))
}

/// Tensors of an int8 file, handed to folding: convs come back dequantised, their int8 values
/// kept in order.
struct FileSource<'a> {
    st: &'a safetensors::SafeTensors<'a>,
    used: std::collections::BTreeSet<String>,
    weights: Vec<QuantizedWeights>,
    qmax: i32,
}

impl FileSource<'_> {
    fn view(&mut self, key: &str, dtype: safetensors::Dtype, shape: &[usize]) -> Result<&[u8]> {
        let view = self.st.tensor(key).map_err(|_| EngineError::MissingTensor(key.to_string()))?;
        if view.dtype() != dtype {
            return Err(EngineError::Spec(format!("tensor '{key}' is {:?}, expected {dtype:?}", view.dtype())));
        }
        if view.shape() != shape {
            return Err(EngineError::Shape {
                key: key.to_string(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        self.used.insert(key.to_string());
        Ok(view.data())
    }

    fn f32s(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let data = self.view(key, safetensors::Dtype::F32, shape)?;
        let v: Vec<f32> = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(EngineError::NonFinite { what: format!("tensor '{key}'"), index: i, value: v[i] });
        }
        Ok(v)
    }
}

impl FoldSource for FileSource<'_> {
    fn folded_conv(&mut self, conv: &str, _bn: &str, shape: [usize; 4], _eps: f64) -> Result<(Vec<f32>, Vec<f32>)> {
        let cout = shape[0];
        let qmax = self.qmax;
        let key = format!("{conv}.weight");
        let values: Vec<i8> = self.view(&key, safetensors::Dtype::I8, &shape)?.iter().map(|&b| b as i8).collect();
        if let Some(i) = values.iter().position(|&v| (v as i32).abs() > qmax) {
            return Err(EngineError::Spec(format!(
                "tensor '{key}': value {} at index {i} is outside the declared weight range ±{qmax}",
                values[i]
            )));
        }
        let scales = self.f32s(&format!("{conv}.weight_scale"), &[cout])?;
        if let Some(i) = scales.iter().position(|&s| s <= 0.0) {
            return Err(EngineError::Spec(format!(
                "tensor '{conv}.weight_scale': scale {} at {i} is not positive",
                scales[i]
            )));
        }
        let bias = self.f32s(&format!("{conv}.bias"), &[cout])?;
        let q = QuantizedWeights { per_channel: values.len() / cout, values, scales, out_channels: cout };
        let weights = q.dequantize();
        self.weights.push(q);
        Ok((weights, bias))
    }

    fn tensor(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.f32s(key, shape)
    }

    fn finish(&self) -> Result<()> {
        let unused: Vec<String> =
            self.st.names().into_iter().filter(|k| !self.used.contains(*k)).map(str::to_string).collect();
        match unused.iter().min() {
            None => Ok(()),
            Some(example) => Err(EngineError::UnexpectedTensors { count: unused.len(), example: example.clone() }),
        }
    }
}
