//! Every layer alone, with a look at each map as it is written: what int8 calibration
//! ([`crate::quant::calibrate`]) records ranges from, and what the fake-quantised f32 reference of
//! the int8 network rounds in place. Fused groups never hold a whole map, so an observed network
//! runs unfused ([`Network::unfused`]).

use crate::kernels::MapGeom;

use super::fusion::Group;
use super::layers::Layer;
use super::memory::Workspace;
use super::Network;

/// One map just written: its index, its buffer (bordered, channel-padded; only the interior's
/// first `channels` values of each pixel are the map), its geometry and real channel count.
pub struct ObservedMap<'a> {
    pub map: usize,
    pub data: &'a mut [f32],
    pub geom: MapGeom,
    pub channels: usize,
}

impl ObservedMap<'_> {
    /// Calls `f` on every value of the map (interior, real channels), in NHWC order.
    pub fn for_each(&mut self, mut f: impl FnMut(&mut f32)) {
        let g = self.geom;
        for y in 0..g.h {
            for x in 0..g.w {
                let at = g.offset(y, x);
                self.data[at..at + self.channels].iter_mut().for_each(&mut f);
            }
        }
    }
}

impl Network {
    /// The same network with every layer run alone (no fused groups): each map is whole once
    /// its producer has run.
    pub fn unfused(mut self) -> Network {
        self.groups = vec![Group::Single; self.layers.len()];
        self
    }

    /// Runs one NCHW image through an unfused network, calling `observe` on the image once it is
    /// loaded and on each map after the layer that writes it (a squeeze-excite's map again after
    /// the squeeze-excite); `observe` may change the values. Returns the logits.
    pub fn run_observed(&self, ws: &mut Workspace, image: &[f32], observe: &mut dyn FnMut(ObservedMap)) -> Vec<f32> {
        assert!(self.groups.iter().all(|&g| g == Group::Single), "run_observed needs an unfused network");
        let mut show = |net: &Network, ws: &mut Workspace, map: usize| {
            let geom = ws.geoms[map];
            let channels = net.maps[map].channels;
            let slot = ws.slot_of[map];
            let data = &mut ws.slots[slot][..geom.len()];
            observe(ObservedMap { map, data, geom, channels });
        };
        self.load_image(ws, image);
        show(self, ws, 0);
        for layer in &self.layers {
            self.run_layer(layer, ws);
            let map = match layer {
                Layer::Direct { output, .. } | Layer::Depthwise { output, .. } | Layer::Pointwise { output, .. } => {
                    *output
                }
                Layer::SqueezeExcite { map, .. } => *map,
            };
            show(self, ws, map);
        }
        let mut pooled = vec![0.0f32; self.pooled_stride()];
        let g = ws.geoms[self.features];
        unsafe { crate::kernels::mean_pool(self.isa, ws.ptr(self.features), g, pooled.as_mut_ptr()) };
        let mut logits = vec![0.0f32; self.spec.num_classes];
        self.head(&pooled, 1, &mut logits);
        logits
    }
}
