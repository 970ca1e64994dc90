//! Calibration: the f32 network runs the calibration images unfused
//! ([`crate::network::Network::run_observed`]) and each map's values are recorded, giving each
//! map its u8 scale and zero point ([`ActivationQuant::from_range`]).
//!
//! - **min-max** (torch's `MinMaxObserver`, ONNX Runtime's `MinMax`): the extremes seen over all
//!   images.
//! - **percentile** (ONNX Runtime's `Percentile`, two-sided here since the maps are asymmetric):
//!   the `p`-th and `(100 - p)`-th percentiles of the values, from a uniform sample of each map
//!   (a reservoir of [`RESERVOIR`] values fed a strided subset of every image's map), so one
//!   outlier pixel does not stretch the grid of a whole map.
//!
//! The report ([`sqnr_report`]) sets the int8 network's maps against the f32 network's, per
//! layer, as signal-to-quantisation-noise ratios.

use crate::network::folded::{FoldedLayer, FoldedModel};
use crate::network::{Network, ObservedMap, Workspace};
use crate::simd::Isa;

use super::network::{QuantModel, QuantNetwork};
use super::scheme::ActivationQuant;

/// How a map's range is chosen from what calibration saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeMethod {
    MinMax,
    /// Keeps this percentage of the values inside the range (e.g. 99.99), cutting the same
    /// share off each end.
    Percentile(f64),
}

impl std::fmt::Display for RangeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RangeMethod::MinMax => write!(f, "minmax"),
            RangeMethod::Percentile(p) => write!(f, "percentile {p}"),
        }
    }
}

/// Values kept per map for the percentile method.
pub const RESERVOIR: usize = 1 << 16;
/// Values of each map of each image offered to the reservoir.
const PER_IMAGE: usize = 4096;

/// What calibration has seen of one map.
#[derive(Debug, Clone)]
struct MapRange {
    min: f32,
    max: f32,
    reservoir: Vec<f32>,
    offered: u64,
}

/// Runs calibration images through the f32 network and records every map's range.
pub struct Calibrator {
    net: Network,
    ws: Option<Workspace>,
    method: RangeMethod,
    ranges: Vec<MapRange>,
    images: usize,
    rng: u64,
}

impl Calibrator {
    pub fn new(folded: &FoldedModel, method: RangeMethod, isa: Isa) -> Calibrator {
        if let RangeMethod::Percentile(p) = method {
            assert!(p > 50.0 && p <= 100.0, "percentile {p} out of (50, 100]");
        }
        let net = Network::from_folded(folded, isa).unfused();
        let empty = MapRange { min: f32::INFINITY, max: f32::NEG_INFINITY, reservoir: Vec::new(), offered: 0 };
        Calibrator {
            net,
            ws: None,
            method,
            ranges: vec![empty; folded.maps.len()],
            images: 0,
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }

    /// Images seen so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Runs one NCHW `h` x `w` image and records its maps; returns the f32 logits.
    pub fn observe(&mut self, image: &[f32], h: usize, w: usize) -> Vec<f32> {
        let mut ws = match self.ws.take() {
            Some(ws) if ws.fits(h, w, 1) => ws,
            _ => Workspace::with_parts(&self.net, h, w, 1),
        };
        let (ranges, rng, method) = (&mut self.ranges, &mut self.rng, self.method);
        let logits = self.net.run_observed(&mut ws, image, &mut |mut m: ObservedMap| {
            let r = &mut ranges[m.map];
            let (mut lo, mut hi) = (r.min, r.max);
            m.for_each(|x| {
                lo = lo.min(*x);
                hi = hi.max(*x);
            });
            r.min = lo;
            r.max = hi;
            if let RangeMethod::Percentile(_) = method {
                offer(r, &mut m, rng);
            }
        });
        self.ws = Some(ws);
        self.images += 1;
        logits
    }

    /// Each map's parameters from what was seen.
    pub fn finish(&self) -> Vec<ActivationQuant> {
        assert!(self.images > 0, "calibration saw no image");
        self.ranges
            .iter()
            .map(|r| match self.method {
                RangeMethod::MinMax => ActivationQuant::from_range(r.min, r.max),
                RangeMethod::Percentile(p) => {
                    let mut v = r.reservoir.clone();
                    v.sort_by(f32::total_cmp);
                    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
                    let (lo, hi) = (at(1.0 - p / 100.0), at(p / 100.0));
                    ActivationQuant::from_range(lo.max(r.min), hi.min(r.max))
                }
            })
            .collect()
    }
}

/// Offers a strided subset of the map's values (random start) to its reservoir (Algorithm R).
fn offer(r: &mut MapRange, m: &mut ObservedMap, rng: &mut u64) {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let n = m.geom.h * m.geom.w * m.channels;
    let step = n.div_ceil(PER_IMAGE).max(1);
    let mut skip = (next() % step as u64) as usize;
    m.for_each(|x| {
        if skip > 0 {
            skip -= 1;
            return;
        }
        skip = step - 1;
        r.offered += 1;
        if r.reservoir.len() < RESERVOIR {
            r.reservoir.push(*x);
        } else {
            let j = (next() % r.offered) as usize;
            if j < RESERVOIR {
                r.reservoir[j] = *x;
            }
        }
    });
}

/// One row of the report: a map, the layer that writes it, and how far the int8 network's map
/// is from the f32 network's.
#[derive(Debug, Clone)]
pub struct LayerError {
    pub map: usize,
    /// The layer writing the map (its torchvision key), `input` for the image.
    pub layer: String,
    pub kind: &'static str,
    pub scale: f32,
    pub zero_point: u8,
    /// 10·log10(Σ x² / Σ (x - x̂)²) over all images, in dB (∞ when equal).
    pub sqnr_db: f64,
}

/// Per map: the int8 network (`quant`, lowered for this CPU) against the f32 network of
/// `original` (the unquantised folded model) over `images` (NCHW, `h` x `w`). Maps are named by
/// the layer that last writes them (a squeeze-excite's map by the squeeze-excite).
pub fn sqnr_report(
    original: &FoldedModel,
    quant: &QuantModel,
    images: &[&[f32]],
    h: usize,
    w: usize,
    isa: Isa,
    int8: super::Int8Isa,
) -> Vec<LayerError> {
    let net = Network::from_folded(original, isa).unfused();
    let qnet = QuantNetwork::new(quant, int8, isa);
    let mut ws = Workspace::with_parts(&net, h, w, 1);
    let mut qws = qnet.workspace(h, w);
    let maps = original.maps.len();
    let (mut signal, mut noise) = (vec![0.0f64; maps], vec![0.0f64; maps]);
    for image in images {
        let f32_maps = collect_maps(&net, &mut ws, image);
        let q_maps = qnet.dequantized_maps(&mut qws, image);
        for m in 0..maps {
            for (a, b) in f32_maps[m].iter().zip(&q_maps[m]) {
                signal[m] += (*a as f64).powi(2);
                noise[m] += (*a as f64 - *b as f64).powi(2);
            }
        }
    }
    let mut names = vec![("input".to_string(), "image"); maps];
    for layer in &original.layers {
        match layer {
            FoldedLayer::Conv(c) => {
                let kind = if c.depthwise {
                    "depthwise"
                } else if c.is_pointwise() {
                    if c.residual.is_some() {
                        "pointwise+residual"
                    } else {
                        "pointwise"
                    }
                } else {
                    "conv"
                };
                names[c.output] = (c.key.clone(), kind);
            }
            FoldedLayer::SqueezeExcite(se) => names[se.map] = (se.key.clone(), "squeeze-excite"),
        }
    }
    (0..maps)
        .map(|m| {
            let q = quant.activations[m];
            let sqnr_db = if noise[m] == 0.0 { f64::INFINITY } else { 10.0 * (signal[m] / noise[m]).log10() };
            LayerError {
                map: m,
                layer: names[m].0.clone(),
                kind: names[m].1,
                scale: q.scale,
                zero_point: q.zero_point,
                sqnr_db,
            }
        })
        .collect()
}

/// Every map's final values (interior, real channels, NHWC) after one f32 pass.
fn collect_maps(net: &Network, ws: &mut Workspace, image: &[f32]) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = Vec::new();
    net.run_observed(ws, image, &mut |mut m: ObservedMap| {
        if out.len() <= m.map {
            out.resize(m.map + 1, Vec::new());
        }
        let mut v = Vec::new();
        m.for_each(|x| v.push(*x));
        out[m.map] = v;
    });
    out
}
