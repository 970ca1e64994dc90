//! A small, fast CPU inference engine for MobileNet V1, V2, V3-Large and V3-Small.
//!
//! It reads the safetensors files the `mobilenet` tool writes (torchvision's state-dict keys plus
//! a `mobilenet.config` metadata entry) or any torchvision-layout tensors, folds every BatchNorm
//! into its convolution, packs the weights once, and runs NHWC kernels with the bias and
//! activation (and the residual add) fused into each store. The instruction set (AVX-512,
//! AVX2+FMA or portable) is picked at run time.
//!
//! ```no_run
//! use mobilenet_engine::{Engine, Images};
//! let engine = Engine::load("mobilenet_v2.safetensors")?;
//! let pixels = vec![0.0f32; 3 * 224 * 224]; // one normalised NCHW image
//! let logits = engine.run(&Images::new(&pixels, 1, 224, 224)?)?;
//! println!("class {}", logits.argmax(0));
//! # Ok::<(), mobilenet_engine::EngineError>(())
//! ```

pub mod arch;
pub mod bench;
mod buffer;
mod error;
mod kernels;
mod network;
pub mod quant;
pub mod reference;
pub mod simd;
#[cfg(feature = "testing")]
pub mod testing;
pub mod train;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub use arch::{Activation, Arch, ModelSpec, Plan, MIN_INPUT_SIZE};
pub use error::{EngineError, Result};
pub use network::folded::FoldedModel;
pub use network::{LayerProfile, NamedTensors, TensorSource};
use network::{Network, Workspace};
pub use simd::Isa;

/// The metadata key holding the model's configuration as JSON.
pub const CONFIG_METADATA_KEY: &str = "mobilenet.config";

/// How an engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Worker threads. 1 runs everything on the calling thread.
    pub threads: usize,
    /// Instruction set; `None` picks the best this CPU has ([`Isa::detect`]).
    pub isa: Option<Isa>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { threads: std::thread::available_parallelism().map_or(1, |n| n.get()), isa: None }
    }
}

impl EngineOptions {
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = Some(isa);
        self
    }
}

/// A batch of normalised RGB images, NCHW f32 (what torchvision's transforms produce).
#[derive(Debug, Clone, Copy)]
pub struct Images<'a> {
    data: &'a [f32],
    batch: usize,
    height: usize,
    width: usize,
}

impl<'a> Images<'a> {
    pub fn new(data: &'a [f32], batch: usize, height: usize, width: usize) -> Result<Self> {
        if batch == 0 || height == 0 || width == 0 {
            return Err(EngineError::Input(format!("empty batch: [{batch}, 3, {height}, {width}]")));
        }
        let want = batch * 3 * height * width;
        if data.len() != want {
            return Err(EngineError::Input(format!(
                "[{batch}, 3, {height}, {width}] needs {want} values, got {}",
                data.len()
            )));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            let per_image = 3 * height * width;
            return Err(EngineError::NonFinite {
                what: format!("input: image {} of the batch", i / per_image),
                index: i % per_image,
                value: data[i],
            });
        }
        Ok(Self { data, batch, height, width })
    }

    /// From a shape as torch writes it; it must be `[N, 3, H, W]`.
    pub fn from_shape(data: &'a [f32], shape: &[usize]) -> Result<Self> {
        match shape {
            [n, 3, h, w] => Self::new(data, *n, *h, *w),
            other => Err(EngineError::Input(format!("expected an image batch [N, 3, H, W], got shape {other:?}"))),
        }
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    fn image(&self, i: usize) -> &'a [f32] {
        let len = 3 * self.height * self.width;
        &self.data[i * len..(i + 1) * len]
    }
}

/// Logits, `[batch][classes]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    pub data: Vec<f32>,
    pub batch: usize,
    pub classes: usize,
}

impl Logits {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.classes..(i + 1) * self.classes]
    }

    /// Index of the largest logit of image `i` (first on ties).
    pub fn argmax(&self, i: usize) -> usize {
        let row = self.row(i);
        (0..row.len()).fold(0, |best, j| if row[j] > row[best] { j } else { best })
    }
}

/// The lowered model: f32, or int8 ([`quant`]).
#[derive(Debug)]
enum Net {
    F32(Network),
    Int8(quant::QuantNetwork),
}

/// One thread's buffers for a [`Net`].
enum AnyWorkspace {
    F32(Workspace),
    Int8(quant::QuantWorkspace),
}

impl AnyWorkspace {
    fn fits(&self, h: usize, w: usize, parts: usize) -> bool {
        match self {
            AnyWorkspace::F32(ws) => ws.fits(h, w, parts),
            AnyWorkspace::Int8(ws) => ws.fits(h, w),
        }
    }
}

/// A loaded, packed model ready to run.
pub struct Engine {
    net: Net,
    /// The f32 ISA (the whole f32 network; the int8 network's classifier).
    isa: Isa,
    spec: ModelSpec,
    threads: usize,
    pool: Option<rayon::ThreadPool>,
    workspaces: Mutex<Vec<AnyWorkspace>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("spec", &self.spec)
            .field("isa", &self.isa)
            .field("int8", &self.int8_isa())
            .field("threads", &self.threads)
            .finish()
    }
}

impl Engine {
    /// Loads a safetensors file written by `mobilenet` (or any file with torchvision's keys and
    /// a `mobilenet.config` metadata entry), with default options.
    pub fn load(path: impl AsRef<Path>) -> Result<Engine> {
        Self::load_with(path, EngineOptions::default())
    }

    /// An int8 file (written by `mobilenet quantize`: [`quant::format`]) loads as an int8
    /// engine.
    pub fn load_with(path: impl AsRef<Path>, options: EngineOptions) -> Result<Engine> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| EngineError::file(path, format!("cannot read: {e}")))?;
        if quant::format::is_int8(&safetensors_metadata(path, &bytes)?) {
            let (model, _, _) = quant::format::from_bytes(path, &bytes)?;
            return Self::from_quant_model(&model, options);
        }
        let (spec, tensors) = parse_safetensors(path, &bytes)?;
        let spec = spec.ok_or_else(|| {
            EngineError::file(
                path,
                format!("no '{CONFIG_METADATA_KEY}' metadata, so the architecture is unknown; convert the file with `mobilenet import`, or use Engine::from_tensors with a ModelSpec"),
            )
        })?;
        Self::from_tensors(&spec, tensors, options).map_err(|e| EngineError::file(path, e.to_string()))
    }

    /// Builds from tensors in torchvision's layout and keys (`[out, in, kh, kw]` convs,
    /// `[out, in]` Linears, BatchNorm weight/bias/running_mean/running_var).
    pub fn from_tensors(spec: &ModelSpec, tensors: NamedTensors, options: EngineOptions) -> Result<Engine> {
        Self::from_source(spec, &mut TensorSource::new(tensors), options)
    }

    /// An engine with made-up weights of the right shapes (for benchmarks).
    pub fn random(spec: &ModelSpec, seed: u64, options: EngineOptions) -> Result<Engine> {
        Self::from_source(spec, &mut TensorSource::random(seed), options)
    }

    fn from_source(spec: &ModelSpec, source: &mut TensorSource, options: EngineOptions) -> Result<Engine> {
        let isa = Self::check_isa(options)?;
        Self::with_net(Net::F32(Network::build(spec, source, isa)?), *spec, isa, options)
    }

    /// An int8 engine running `model` with the int8 kernels this CPU has best (capped by
    /// `MOBILENET_ENGINE_INT8_ISA`, and by `options.isa`: portable f32 means portable int8).
    pub fn from_quant_model(model: &quant::QuantModel, options: EngineOptions) -> Result<Engine> {
        let isa = Self::check_isa(options)?;
        let int8 = match isa {
            Isa::Portable => quant::Int8Isa::Portable,
            Isa::Avx2 if quant::Int8Isa::detect() != quant::Int8Isa::Portable => quant::Int8Isa::Avx2,
            _ => quant::Int8Isa::detect(),
        };
        let net = Net::Int8(quant::QuantNetwork::new(model, int8, isa));
        Self::with_net(net, model.folded.spec, isa, options)
    }

    fn check_isa(options: EngineOptions) -> Result<Isa> {
        let isa = options.isa.unwrap_or_else(Isa::detect);
        if !Isa::all_available().contains(&isa) {
            return Err(EngineError::Spec(format!("this CPU cannot run the {isa} kernels")));
        }
        Ok(isa)
    }

    fn with_net(net: Net, spec: ModelSpec, isa: Isa, options: EngineOptions) -> Result<Engine> {
        let threads = options.threads.max(1);
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("mobilenet-engine-{i}"))
                    .build()
                    .map_err(|e| EngineError::Spec(format!("cannot start {threads} threads: {e}")))?,
            )
        } else {
            None
        };
        Ok(Engine { net, isa, spec, threads, pool, workspaces: Mutex::new(Vec::new()) })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The f32 instruction set (of the whole network, or of an int8 network's f32 parts).
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The int8 kernels' instruction set, for an int8 model.
    pub fn int8_isa(&self) -> Option<quant::Int8Isa> {
        match &self.net {
            Net::F32(_) => None,
            Net::Int8(q) => Some(q.isa),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// This core's measured FMA peak for the engine's ISA, in GMAC/s on one thread: what
    /// `bench --profile` sets each layer's throughput against.
    pub fn fma_peak_gmacs(&self) -> f64 {
        kernels::fma_peak_gmacs(self.isa)
    }

    /// The per-core data-cache sizes (L1d, L2) the GEMM blocking is shaped for, in bytes.
    pub fn cache_sizes(&self) -> (usize, usize) {
        let c = kernels::CacheSizes::get();
        (c.l1d, c.l2)
    }

    pub fn num_classes(&self) -> usize {
        self.spec.num_classes
    }

    /// Logits for every image. With at least as many images as threads, each thread runs whole
    /// images and then its rows of the classifier; with fewer, each layer is split over the
    /// threads (rows of its output).
    pub fn run(&self, images: &Images) -> Result<Logits> {
        let classes = self.num_classes();
        let mut logits = vec![0.0f32; images.batch * classes];
        let stride = match &self.net {
            Net::F32(net) => net.pooled_stride(),
            Net::Int8(net) => net.pooled_stride(),
        };
        // Whole images per thread when there are enough of them (no synchronisation inside the
        // network); otherwise every f32 layer is split over the threads (int8 layers are not
        // split yet: a single image runs on one thread).
        let run_chunk = |first: usize, out: &mut [f32], parts: usize| {
            let count = out.len() / classes;
            let mut ws = self.workspace(images.height, images.width, parts);
            let mut pooled = vec![0.0f32; count * stride];
            for i in 0..count {
                let (image, row) = (images.image(first + i), &mut pooled[i * stride..(i + 1) * stride]);
                match (&self.net, &mut ws) {
                    (Net::F32(net), AnyWorkspace::F32(ws)) => net.features_into(ws, image, row),
                    (Net::Int8(net), AnyWorkspace::Int8(ws)) => net.features_into(ws, image, row),
                    _ => unreachable!("a workspace of the network's kind"),
                }
            }
            match &self.net {
                Net::F32(net) => net.head(&pooled, count, out),
                Net::Int8(net) => net.head(&pooled, count, out),
            }
            self.workspaces.lock().expect("workspace pool").push(ws);
        };
        match &self.pool {
            Some(pool) if images.batch >= self.threads => pool.install(|| {
                use rayon::prelude::*;
                let per_chunk = images.batch.div_ceil(self.threads);
                logits
                    .par_chunks_mut(per_chunk * classes)
                    .enumerate()
                    .for_each(|(c, out)| run_chunk(c * per_chunk, out, 1));
            }),
            Some(pool) => pool.install(|| run_chunk(0, &mut logits, self.threads)),
            None => run_chunk(0, &mut logits, 1),
        }
        Ok(Logits { data: logits, batch: images.batch, classes })
    }

    /// Per-layer median times on the first image (single thread), with MACs and bytes.
    pub fn profile(&self, images: &Images, runs: usize) -> Vec<LayerProfile> {
        let mut ws = self.workspace(images.height, images.width, 1);
        let out = match (&self.net, &mut ws) {
            (Net::F32(net), AnyWorkspace::F32(ws)) => net.profile(ws, images.image(0), runs),
            (Net::Int8(net), AnyWorkspace::Int8(ws)) => net.profile(ws, images.image(0), runs),
            _ => unreachable!("a workspace of the network's kind"),
        };
        self.workspaces.lock().expect("workspace pool").push(ws);
        out
    }

    fn workspace(&self, h: usize, w: usize, parts: usize) -> AnyWorkspace {
        let mut pool = self.workspaces.lock().expect("workspace pool");
        match pool.iter().position(|ws| ws.fits(h, w, parts)) {
            Some(i) => pool.swap_remove(i),
            None => {
                // Keep at most a few; a new input size replaces the old ones.
                pool.retain(|ws| ws.fits(h, w, 1) || ws.fits(h, w, self.threads));
                drop(pool);
                match &self.net {
                    Net::F32(net) => AnyWorkspace::F32(Workspace::with_parts(net, h, w, parts)),
                    Net::Int8(net) => AnyWorkspace::Int8(net.workspace(h, w)),
                }
            }
        }
    }
}

/// Reads every f32 tensor of a safetensors file and its `mobilenet.config`, if any.
pub fn read_safetensors(path: &Path) -> Result<(Option<ModelSpec>, NamedTensors)> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::file(path, format!("cannot read: {e}")))?;
    if quant::format::is_int8(&safetensors_metadata(path, &bytes)?) {
        return Err(EngineError::file(
            path,
            "an int8 model (written by `mobilenet quantize`), not f32 weights: only the engine's inference (predict, eval, bench) runs it",
        ));
    }
    parse_safetensors(path, &bytes)
}

/// The metadata of a safetensors file's bytes.
pub fn safetensors_metadata(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| EngineError::file(path, format!("not a safetensors file or truncated: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<(Option<ModelSpec>, NamedTensors)> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| EngineError::file(path, format!("not a safetensors file or truncated: {e}")))?;
    let spec = match meta.metadata().as_ref().and_then(|m| m.get(CONFIG_METADATA_KEY)) {
        Some(json) => Some(
            serde_json::from_str::<ModelSpec>(json)
                .map_err(|e| EngineError::file(path, format!("bad '{CONFIG_METADATA_KEY}' metadata: {e}")))?,
        ),
        None => None,
    };
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| EngineError::file(path, format!("not a safetensors file or truncated: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(EngineError::file(
                path,
                format!("tensor '{name}' is {:?}; the engine reads f32", view.dtype()),
            ));
        }
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.insert(name, (view.shape().to_vec(), data));
    }
    Ok((spec, tensors))
}
