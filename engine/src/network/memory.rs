//! Where the maps live while a network runs: a [`Workspace`] holds one thread's buffers, reused
//! from run to run. Maps share buffers ("slots") when their lifetimes do not overlap, so the
//! working set is a few maps rather than the whole network: the early 112x112 maps are megabytes
//! each, and keeping them in cache is worth more than any kernel trick. A fused group's reads
//! last until the group's end, as its layers run interleaved. Besides the slots, the workspace
//! holds the band buffers of fused pairs and rings (one per thread part), sized for the largest
//! band any group runs, and the squeeze-excite scratch. Slots are reused by maps of other
//! shapes, so a map's zero border is rewritten before each producer writes it.

use crate::buffer::Buffer;
use crate::kernels::MapGeom;

use super::layers::Layer;
use super::Network;

/// Buffers for one thread, reused from run to run.
pub struct Workspace {
    /// The input's (height, width) these buffers are sized for.
    pub(super) size: (usize, usize),
    pub(super) geoms: Vec<MapGeom>,
    pub(super) slots: Vec<Buffer>,
    /// The slot holding each map.
    pub(super) slot_of: Vec<usize>,
    /// Squeeze-excite's pooled and squeezed vectors.
    pub(super) scratch: Vec<f32>,
    /// Rows of a fused depthwise output, one buffer per part.
    pub(super) depthwise_band: Buffer,
    /// Rows of the map a ring-fed depthwise conv reads (bordered, with `pad` spare rows in
    /// front), one buffer per part.
    pub(super) ring_band: Buffer,
    /// Threads each layer is split over (1: the calling thread only).
    pub(super) parts: usize,
}

impl Workspace {
    #[cfg(test)]
    pub fn new(net: &Network, h: usize, w: usize) -> Self {
        Self::with_parts(net, h, w, 1)
    }

    /// A workspace whose layers are split over `parts` threads (run inside a rayon pool).
    pub fn with_parts(net: &Network, h: usize, w: usize, parts: usize) -> Self {
        let parts = parts.max(1);
        let geoms = net.geometry(h, w);
        // Last layer index reading each map (map 0, the image, is "produced" before layer 0).
        let mut produced = vec![0usize; geoms.len()];
        let mut last_use = vec![0usize; geoms.len()];
        // Layers in a fused group run interleaved: every read lasts until the group's end.
        let mut group_end = vec![0usize; net.layers.len()];
        for (start, group) in net.group_starts() {
            let end = start + group.len();
            group_end[start..end].fill(end);
        }
        for (i, layer) in net.layers.iter().enumerate() {
            let (reads, writes): (Vec<usize>, Option<usize>) = match layer {
                Layer::Direct { input, output, .. } | Layer::Depthwise { input, output, .. } => {
                    (vec![*input], Some(*output))
                }
                Layer::Pointwise { input, output, residual, .. } => {
                    (std::iter::once(*input).chain(*residual).collect(), Some(*output))
                }
                Layer::SqueezeExcite { map, .. } => (vec![*map], None),
            };
            let last = group_end[i];
            for r in reads {
                last_use[r] = last_use[r].max(last);
            }
            if let Some(o) = writes {
                produced[o] = i + 1;
                last_use[o] = last_use[o].max(i + 1);
            }
        }
        // The pooled map is read after the last layer.
        last_use[net.features] = usize::MAX;
        let mut slot_of = vec![0usize; geoms.len()];
        let mut slot_sizes: Vec<usize> = Vec::new();
        let mut slot_free_after: Vec<usize> = Vec::new();
        for m in 0..geoms.len() {
            let need = geoms[m].len();
            // A slot is free for map m if its occupant's last reader ran before m's producer.
            let free = (0..slot_sizes.len())
                .filter(|&s| slot_free_after[s] < produced[m])
                .min_by_key(|&s| (slot_sizes[s] < need, slot_sizes[s].abs_diff(need)));
            let s = match free {
                Some(s) => s,
                None => {
                    slot_sizes.push(0);
                    slot_free_after.push(0);
                    slot_sizes.len() - 1
                }
            };
            slot_sizes[s] = slot_sizes[s].max(need);
            slot_free_after[s] = last_use[m];
            slot_of[m] = s;
        }
        let slots = slot_sizes.iter().map(|&n| Buffer::zeroed(n)).collect();
        let widest = net.maps.iter().map(|m| m.stride_c).max().unwrap_or(0);
        // Per part: the most depthwise output rows any fused pair holds at once.
        let depthwise_band = net
            .fused_pairs()
            .map(|i| match (&net.layers[i], &net.layers[i + 1]) {
                (Layer::Depthwise { output, .. }, Layer::Pointwise { dense, .. }) => {
                    let g = geoms[*output];
                    Network::band_rows(&g, dense, parts) * MapGeom { pad: 0, ..g }.row_stride()
                }
                _ => unreachable!("a fused pair is depthwise → pointwise"),
            })
            .max()
            .unwrap_or(0);
        // Per part: the most rows of a ring's map one band of its depthwise conv reads.
        let ring_band = net
            .ring_fed_pairs()
            .map(|i| match (&net.layers[i], &net.layers[i + 1]) {
                (Layer::Depthwise { input, output, kernel, stride, .. }, Layer::Pointwise { dense, .. }) => {
                    let (ring_geom, depthwise_geom) = (geoms[*input], geoms[*output]);
                    let rows =
                        (Network::band_rows(&depthwise_geom, dense, parts) - 1) * stride + kernel + ring_geom.pad;
                    rows * ring_geom.row_stride()
                }
                _ => unreachable!("a ring feeds a depthwise → pointwise pair"),
            })
            .max()
            .unwrap_or(0);
        Self {
            size: (h, w),
            geoms,
            slots,
            slot_of,
            scratch: vec![0.0; 2 * widest + 64],
            depthwise_band: Buffer::zeroed(depthwise_band * parts),
            ring_band: Buffer::zeroed(ring_band * parts),
            parts,
        }
    }

    pub fn fits(&self, h: usize, w: usize, parts: usize) -> bool {
        self.size == (h, w) && self.parts == parts.max(1)
    }

    pub(super) fn ptr(&self, map: usize) -> *const f32 {
        self.slots[self.slot_of[map]].as_ptr()
    }

    pub(super) fn ptr_mut(&mut self, map: usize) -> *mut f32 {
        self.slots[self.slot_of[map]].as_mut_ptr()
    }

    /// Map `map`'s buffer (its slot may be longer).
    #[cfg(test)]
    pub(super) fn map(&self, map: usize) -> &[f32] {
        &self.slots[self.slot_of[map]][..self.geoms[map].len()]
    }

    /// Zeroes the border of `map`: its slot may have held a map of another shape.
    pub(super) fn zero_border(&mut self, map: usize) {
        let g = self.geoms[map];
        if g.pad == 0 {
            return;
        }
        let row = g.row_stride();
        let buf = &mut self.slots[self.slot_of[map]][..g.len()];
        buf[..g.pad * row].fill(0.0);
        buf[(g.pad + g.h) * row..].fill(0.0);
        for y in g.pad..g.pad + g.h {
            let r = &mut buf[y * row..(y + 1) * row];
            r[..g.pad * g.c].fill(0.0);
            r[(g.pad + g.w) * g.c..].fill(0.0);
        }
    }
}

impl Network {
    /// Every map's geometry for an `h` x `w` input.
    fn geometry(&self, h: usize, w: usize) -> Vec<MapGeom> {
        let mut geoms: Vec<Option<MapGeom>> = vec![None; self.maps.len()];
        let info = &self.maps[0];
        geoms[0] = Some(MapGeom { h, w, c: info.stride_c, pad: info.pad });
        for layer in &self.layers {
            let (input, output, kernel, stride) = match layer {
                Layer::Direct { input, output, kernel, stride, .. }
                | Layer::Depthwise { input, output, kernel, stride, .. } => (*input, *output, *kernel, *stride),
                Layer::Pointwise { input, output, .. } => (*input, *output, 1, 1),
                Layer::SqueezeExcite { .. } => continue,
            };
            let g = geoms[input].expect("maps are produced in order");
            let pad = (kernel - 1) / 2;
            let out = |d: usize| (d + 2 * pad - kernel) / stride + 1;
            let info = &self.maps[output];
            geoms[output] = Some(MapGeom { h: out(g.h), w: out(g.w), c: info.stride_c, pad: info.pad });
        }
        geoms.into_iter().map(|g| g.expect("every map is produced")).collect()
    }
}
