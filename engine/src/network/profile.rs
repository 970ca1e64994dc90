//! Where a forward pass spends its time: [`Network::profile`] times every layer twice, run alone
//! over and over (inputs hot in cache) and within whole passes (a fused group timed as one, on
//! its first layer), plus the steps outside the layers (image copy, pooling, classifier), and
//! reports each with its MACs and the bytes it must move at least. It drives the same group and
//! layer runners as a real pass, so the figures are those of the code that runs.

use crate::kernels;

use super::fusion::Group;
use super::layers::Layer;
use super::memory::Workspace;
use super::Network;

/// One layer's cost in a profile ([`crate::Engine::profile`]).
#[derive(Debug, Clone)]
pub struct LayerProfile {
    pub kind: String,
    pub out_hw: (usize, usize),
    pub macs: usize,
    pub bytes: usize,
    /// Median time run alone, over and over (inputs hot in cache).
    pub ms: f64,
    /// Median time within whole passes; a fused group (pair, triple, chain) is charged to its
    /// first layer, and the others show 0.
    pub ms_in_network: f64,
    /// Runs inside a fused group started by an earlier layer.
    pub fused: bool,
}

impl Network {
    /// Times every layer on one image (`runs` repetitions, median), with its MACs and the bytes
    /// it must move at least (input and output maps, weights).
    pub fn profile(&self, ws: &mut Workspace, image: &[f32], runs: usize) -> Vec<LayerProfile> {
        self.run_layers(ws, image);
        // In the network: whole passes, each step timed where it runs (a fused group counts
        // once, on its first layer), so the caches hold what they would.
        let mut in_network: Vec<Vec<f64>> = vec![Vec::new(); self.layers.len()];
        // The steps outside the layers: image copy, pooling, classifier (alone, in network).
        let mut outside: [(Vec<f64>, Vec<f64>); 3] = Default::default();
        let features_geom = ws.geoms[self.features];
        let mut pooled = vec![0.0f32; self.pooled_stride()];
        let mut logits = vec![0.0f32; self.spec.num_classes];
        let timed = |f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        };
        for _ in 0..runs.max(1) {
            self.run_layers(ws, image);
            outside[0].1.push(timed(&mut || self.load_image(ws, image)));
            for (start, group) in self.group_starts() {
                let t = std::time::Instant::now();
                self.run_group(start, group, ws);
                in_network[start].push(t.elapsed().as_secs_f64() * 1e3);
                for times in &mut in_network[start + 1..start + group.len()] {
                    times.push(0.0);
                }
            }
            outside[1].1.push(timed(&mut || unsafe {
                kernels::mean_pool(self.isa, ws.ptr(self.features), features_geom, pooled.as_mut_ptr())
            }));
            outside[2].1.push(timed(&mut || self.head(&pooled, 1, &mut logits)));
        }
        for _ in 0..runs.max(1) {
            outside[0].0.push(timed(&mut || self.load_image(ws, image)));
            outside[1].0.push(timed(&mut || unsafe {
                kernels::mean_pool(self.isa, ws.ptr(self.features), features_geom, pooled.as_mut_ptr())
            }));
            outside[2].0.push(timed(&mut || self.head(&pooled, 1, &mut logits)));
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut out = Vec::new();
        for (index, layer) in self.layers.iter().enumerate() {
            let mut times: Vec<f64> = (0..runs.max(1))
                .map(|_| {
                    let t = std::time::Instant::now();
                    self.run_layer(layer, ws);
                    t.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let area = |m: usize| ws.geoms[m].h * ws.geoms[m].w;
            let ch = |m: usize| self.maps[m].channels;
            let (kind, macs, bytes) = match layer {
                Layer::Direct { input, output, cin, kernel, weights, .. } => (
                    format!("conv {k}x{k} {}->{}", cin, ch(*output), k = kernel),
                    area(*output) * ch(*output) * cin * kernel * kernel,
                    4 * (area(*input) * cin + area(*output) * ch(*output) + weights.len()),
                ),
                Layer::Pointwise { input, output, residual, dense } => (
                    format!(
                        "pointwise {}->{}{}",
                        ch(*input),
                        ch(*output),
                        if residual.is_some() { " +res" } else { "" }
                    ),
                    area(*output) * ch(*output) * ch(*input),
                    4 * (area(*input) * ch(*input) * (1 + residual.is_some() as usize)
                        + area(*output) * ch(*output)
                        + dense.packed.len()),
                ),
                Layer::Depthwise { input, output, kernel, stride, .. } => (
                    format!("depthwise {k}x{k}/{stride} {}", ch(*output), k = kernel),
                    area(*output) * ch(*output) * kernel * kernel,
                    4 * (area(*input) * ch(*input) + area(*output) * ch(*output)),
                ),
                Layer::SqueezeExcite { map, channels, squeeze, .. } => (
                    format!("squeeze-excite {channels}/{squeeze}"),
                    area(*map) * channels + 2 * channels * squeeze,
                    4 * (2 * area(*map) * channels + 2 * channels * squeeze),
                ),
            };
            let g = ws.geoms[match layer {
                Layer::Direct { output, .. } | Layer::Pointwise { output, .. } | Layer::Depthwise { output, .. } => {
                    *output
                }
                Layer::SqueezeExcite { map, .. } => *map,
            }];
            // Part of the group started by an earlier layer (a pair's or a triple's or chain's
            // later layers).
            let fused = self.groups[index] == Group::Inside;
            let ms_in_network = median(&mut in_network[index]);
            out.push(LayerProfile {
                kind,
                out_hw: (g.h, g.w),
                macs,
                bytes,
                ms: times[times.len() / 2],
                ms_in_network,
                fused,
            });
        }
        let (image_geom, features) = (ws.geoms[0], self.maps[self.features].channels);
        let head_macs: usize = self.head.iter().map(|d| d.k * d.n_pad).sum();
        let head_bytes: usize = self.head.iter().map(|d| 4 * d.packed.len()).sum();
        let steps = [
            (
                format!("image copy {}ch", self.maps[0].channels),
                (image_geom.h, image_geom.w),
                0,
                4 * 2 * image_geom.h * image_geom.w * self.maps[0].channels,
            ),
            (
                format!("pool {features}"),
                (1, 1),
                features_geom.h * features_geom.w * features,
                4 * features_geom.h * features_geom.w * features,
            ),
            (format!("classifier {features}->{}", self.spec.num_classes), (1, 1), head_macs, head_bytes),
        ];
        for ((kind, out_hw, macs, bytes), (alone, net)) in steps.into_iter().zip(outside.iter_mut()) {
            out.push(LayerProfile {
                kind,
                out_hw,
                macs,
                bytes,
                ms: median(alone),
                ms_in_network: median(net),
                fused: false,
            });
        }
        out
    }
}
