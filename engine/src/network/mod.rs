//! A model lowered to the engine's layers, and running it on one image at a time.
//!
//! The files, in the order a model meets them:
//!
//! - `source.rs`: [`TensorSource`], tensors by torchvision state-dict key, shape-checked, every
//!   one used exactly (or made up, for benchmarks).
//! - `layers.rs`: the layer types ([`layers::Layer`], the packed GEMM operand [`layers::Dense`],
//!   the maps between layers) and the kernel jobs they build.
//! - `folded.rs`: [`folded::FoldedModel`], the model every lowering starts from: one walk over
//!   the resolved [`crate::arch::Plan`], each BatchNorm folded into its conv, the topology fixed.
//! - `lowering.rs`: [`Network::from_folded`]: each folded conv in its kernel's layout, the
//!   weights packed once.
//! - `fusion.rs`: which layers run together as one group (a depthwise → pointwise pair, an
//!   expand → depthwise → pointwise triple, a pair → pair chain), decided once per network.
//! - `memory.rs`: [`Workspace`], one thread's buffers: maps share slots by lifetime, plus the
//!   band buffers of fused groups.
//! - `execute.rs`: running the groups: whole layers, bands of a pair, rings of a triple or chain,
//!   split over threads.
//! - `observe.rs`: [`Network::run_observed`], every layer alone with a look at each map (int8
//!   calibration, the fake-quantised reference).
//! - `profile.rs`: [`LayerProfile`] and [`Network::profile`], per-layer times, MACs and bytes.
//! - `tests.rs`: property tests of each layer type against [`crate::reference`] on every ISA.
//!
//! A forward pass ([`Network::features_into`], then [`Network::head`]): the NCHW image is copied
//! into the first (NHWC, channel-padded, zero-bordered) map; each group runs in order, every
//! kernel storing with its bias, activation and residual add fused; the last map is mean-pooled
//! into a feature row; the classifier runs as GEMMs over the pooled rows of a whole batch.

mod execute;
pub mod folded;
mod fusion;
mod layers;
mod lowering;
mod memory;
mod observe;
mod profile;
mod source;
#[cfg(test)]
mod tests;

use crate::arch::ModelSpec;
use crate::kernels::{self, MapGeom};
use crate::simd::Isa;

use fusion::Group;
use layers::{Dense, Layer, MapInfo};

pub use memory::Workspace;
pub use observe::ObservedMap;
pub use profile::LayerProfile;
pub use source::{NamedTensors, TensorSource};

/// The lowered model.
#[derive(Debug)]
pub struct Network {
    pub spec: ModelSpec,
    pub isa: Isa,
    /// Every map between layers; map 0 is the input image.
    maps: Vec<MapInfo>,
    layers: Vec<Layer>,
    /// The map that is pooled into the classifier.
    features: usize,
    /// The classifier's Linears, their activations fused in.
    head: Vec<Dense>,
    /// Per layer: the fused group it starts, or [`Group::Inside`] one started earlier.
    groups: Vec<Group>,
}

impl Network {
    /// Runs the features of one NCHW image (`3·h·w` values) and writes the pooled feature vector
    /// (padded channels) into `pooled`.
    pub fn features_into(&self, ws: &mut Workspace, image: &[f32], pooled: &mut [f32]) {
        self.run_layers(ws, image);
        let g = ws.geoms[self.features];
        assert!(pooled.len() >= g.c);
        unsafe { kernels::mean_pool(self.isa, ws.ptr(self.features), g, pooled.as_mut_ptr()) };
    }

    /// Width of one pooled feature row.
    pub fn pooled_stride(&self) -> usize {
        self.maps[self.features].stride_c
    }

    /// The classifier over `m` pooled rows (stride [`Self::pooled_stride`]); logits `[m][classes]`.
    pub fn head(&self, pooled: &[f32], m: usize, logits: &mut [f32]) {
        let mut x = pooled.to_vec();
        let mut stride = self.pooled_stride();
        for dense in &self.head {
            let mut y = vec![0.0f32; m * dense.n_pad];
            let a_geom = MapGeom { h: 1, w: m, c: stride, pad: 0 };
            let c_geom = MapGeom { h: 1, w: m, c: dense.n_pad, pad: 0 };
            let g = dense.job(x.as_ptr(), a_geom, y.as_mut_ptr(), c_geom, None);
            unsafe { kernels::gemm(self.isa, &g, 0, m) };
            x = y;
            stride = dense.n_pad;
        }
        let classes = self.spec.num_classes;
        for r in 0..m {
            logits[r * classes..(r + 1) * classes].copy_from_slice(&x[r * stride..r * stride + classes]);
        }
    }
}
