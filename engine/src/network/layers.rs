//! The engine's layers, as the lowering leaves them: each conv with its BatchNorm folded in and
//! its weights in the layout its kernel reads, each squeeze-excite, and the packed GEMM operand
//! ([`Dense`]) shared by 1x1 convs and the classifier's Linears. Layers name the maps they read
//! and write by index into [`super::Network`]'s maps ([`MapInfo`]); the buffers themselves live
//! in a [`Workspace`]. Activations stay [`Activation`]s here and become the kernels' `u8` code
//! only where a kernel job is built (`kernels::act_code`).

use crate::arch::Activation;
use crate::buffer::Buffer;
use crate::kernels::{self, act_code, MapGeom};

use super::memory::Workspace;

/// A feature map between layers: its real channel count and the zero border its consumers need.
#[derive(Debug, Clone)]
pub(super) struct MapInfo {
    pub(super) channels: usize,
    /// Channel stride: padded, except for the 3-channel input image.
    pub(super) stride_c: usize,
    pub(super) pad: usize,
}

#[derive(Debug)]
pub(super) enum Layer {
    /// The stem: a full conv with few input channels.
    Direct {
        input: usize,
        output: usize,
        cin: usize,
        kernel: usize,
        stride: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
        act: Option<Activation>,
    },
    /// 1x1 conv as GEMM, residual added after the activation.
    Pointwise { input: usize, output: usize, residual: Option<usize>, dense: Dense },
    Depthwise {
        input: usize,
        output: usize,
        kernel: usize,
        stride: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
        act: Option<Activation>,
    },
    /// In place on `map`.
    SqueezeExcite {
        map: usize,
        channels: usize,
        squeeze: usize,
        squeeze_pad: usize,
        fc1: Vec<f32>,
        b1: Vec<f32>,
        fc2: Vec<f32>,
        b2: Vec<f32>,
    },
}

impl Layer {
    /// The kernel job of a full or depthwise conv layer, writing whole rows of `out_geom` at
    /// `output`.
    pub(super) fn conv_job(&self, ws: &Workspace, output: *mut f32, out_geom: MapGeom) -> kernels::Conv {
        let (input, cin, kernel, stride, weights, bias, act) = match self {
            Layer::Direct { input, cin, kernel, stride, weights, bias, act, .. } => {
                (*input, *cin, *kernel, *stride, weights, bias, *act)
            }
            Layer::Depthwise { input, kernel, stride, weights, bias, act, .. } => {
                (*input, 0, *kernel, *stride, weights, bias, *act)
            }
            _ => unreachable!("conv_job is for conv layers"),
        };
        kernels::Conv {
            input: ws.ptr(input),
            in_geom: ws.geoms[input],
            cin,
            kernel,
            stride,
            weights: weights.as_ptr(),
            bias: bias.as_ptr(),
            act: act_code(act),
            output,
            out_geom,
            out_row0: 0,
            in_row0: 0,
        }
    }
}

/// A packed GEMM operand: a 1x1 conv or a Linear.
#[derive(Debug)]
pub(super) struct Dense {
    /// Input features (the GEMM's inner dimension).
    pub(super) k: usize,
    /// Output features, padded to the packing's panel width.
    pub(super) n_pad: usize,
    pub(super) packed: Buffer,
    pub(super) bias: Vec<f32>,
    pub(super) act: Option<Activation>,
}

impl Dense {
    /// `weights` in torch's [n, k] layout.
    pub(super) fn new(
        weights: &[f32],
        bias: &[f32],
        n: usize,
        k: usize,
        act: Option<Activation>,
        lanes: usize,
    ) -> Self {
        let (packed, n_pad) = kernels::pack_gemm_weights(weights, n, k, lanes);
        Self { k, n_pad, packed: Buffer::from_slice(&packed), bias: padded(bias, n_pad), act }
    }

    /// The GEMM job `c = act(a · W + bias) (+ res)` over the maps `a` and `c` (and `res`).
    pub(super) fn job(
        &self,
        a: *const f32,
        a_geom: MapGeom,
        c: *mut f32,
        c_geom: MapGeom,
        res: Option<(*const f32, MapGeom)>,
    ) -> kernels::Gemm {
        kernels::Gemm {
            a,
            a_geom,
            k: self.k,
            b: self.packed.as_ptr(),
            n_pad: self.n_pad,
            bias: self.bias.as_ptr(),
            act: act_code(self.act),
            c,
            c_geom,
            res: res.map_or(std::ptr::null(), |r| r.0),
            res_geom: res.map_or(c_geom, |r| r.1),
            blocking: None,
        }
    }
}

/// `v` followed by zeros up to `len` values.
pub(super) fn padded(v: &[f32], len: usize) -> Vec<f32> {
    let mut out = vec![0.0; len];
    out[..v.len()].copy_from_slice(v);
    out
}
