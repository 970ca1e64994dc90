//! Running a network on one image: the image is copied into the first map, then each group
//! ([`super::fusion::Group`]) runs in order. A single layer runs on whole maps; a pair runs its
//! depthwise conv a band of rows at a time into the workspace's depthwise band and projects each
//! band straight into the output map; a triple or a chain does the same while its producer (an
//! expand, or a first pair) computes the rows of the depthwise conv's input map each band needs
//! into a ring. With several threads, a layer's output rows (or a group's bands) are split into
//! near-equal parts run on the current rayon pool; parts write disjoint rows, so the raw pointers
//! they share ([`SyncPtr`]) never alias a write.

use crate::kernels::{self, MapGeom};

use super::fusion::Group;
use super::layers::{Dense, Layer};
use super::memory::Workspace;
use super::Network;

/// A raw pointer that may cross threads: the parts of a layer write disjoint rows.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// A method, so that closures capture the wrapper rather than the bare field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `f(part, start, end)` over `parts` near-equal ranges of `0..n`, on the current rayon
/// pool when there is more than one.
fn for_parts(parts: usize, n: usize, f: &(dyn Fn(usize, usize, usize) + Sync)) {
    let parts = parts.min(n).max(1);
    if parts == 1 {
        return f(0, 0, n);
    }
    rayon::scope(|scope| {
        for p in 1..parts {
            scope.spawn(move |_| f(p, n * p / parts, n * (p + 1) / parts));
        }
        f(0, 0, n / parts);
    });
}

/// What computes the rows of the map that a ring-fed depthwise conv reads.
#[derive(Clone, Copy)]
enum Producer<'a> {
    /// A 1x1 expand conv of the whole map `input`.
    Expand { input: usize, dense: &'a Dense },
    /// A fused depthwise → pointwise pair; its depthwise conv reads a whole map.
    Pair { depthwise: &'a Layer, dense: &'a Dense },
}

/// A [`Producer`] with its pointers, geometry and jobs resolved while the workspace may still be
/// borrowed.
enum ReadyProducer<'a> {
    Expand { input: SyncPtr, input_geom: MapGeom, dense: &'a Dense },
    Pair { depthwise_job: kernels::Conv, depthwise_geom: MapGeom, band_rows: usize, dense: &'a Dense },
}

impl Network {
    /// Every layer on one NCHW image; the maps stay in `ws`.
    pub(super) fn run_layers(&self, ws: &mut Workspace, image: &[f32]) {
        self.load_image(ws, image);
        for (start, group) in self.group_starts() {
            self.run_group(start, group, ws);
        }
    }

    /// The NCHW image into the first map.
    pub(super) fn load_image(&self, ws: &mut Workspace, image: &[f32]) {
        let (h, w) = ws.size;
        let image_geom = ws.geoms[0];
        ws.zero_border(0);
        {
            let slot = ws.slot_of[0];
            let buf = &mut ws.slots[slot];
            // NCHW planes into interleaved rows: one image row of each plane at a time, with
            // slices sized up front so that the loops carry no bounds checks.
            let plane = h * w;
            let channels = self.maps[0].channels;
            for y in 0..h {
                let dst = &mut buf[image_geom.offset(y, 0)..image_geom.offset(y, 0) + w * image_geom.c];
                if channels == 3 && image_geom.c == 3 {
                    // RGB: one pass over the row, each pixel written whole (three passes of
                    // strided single stores took a third of a small model's stem time).
                    let row = |c: usize| &image[c * plane + y * w..c * plane + (y + 1) * w];
                    let (r, g, b) = (row(0), row(1), row(2));
                    for (((px, &r), &g), &b) in dst.chunks_exact_mut(3).zip(r).zip(g).zip(b) {
                        px.copy_from_slice(&[r, g, b]);
                    }
                    continue;
                }
                for c in 0..channels {
                    let src = &image[c * plane + y * w..c * plane + (y + 1) * w];
                    for (px, &v) in dst.chunks_exact_mut(image_geom.c).zip(src) {
                        px[c] = v;
                    }
                }
            }
        }
    }

    /// The group `group` starting at layer `start`.
    pub(super) fn run_group(&self, start: usize, group: Group, ws: &mut Workspace) {
        let layers = &self.layers;
        match group {
            Group::Chain => {
                let Layer::Pointwise { dense, .. } = &layers[start + 1] else {
                    unreachable!("a chain starts with a pair")
                };
                let producer = Producer::Pair { depthwise: &layers[start], dense };
                self.run_ring(producer, &layers[start + 2], &layers[start + 3], ws)
            }
            Group::Triple => {
                let Layer::Pointwise { input, dense, .. } = &layers[start] else {
                    unreachable!("a triple starts with its expand")
                };
                self.run_ring(Producer::Expand { input: *input, dense }, &layers[start + 1], &layers[start + 2], ws)
            }
            Group::Pair => self.run_pair(&layers[start], &layers[start + 1], ws),
            Group::Single => self.run_layer(&layers[start], ws),
            Group::Inside => unreachable!("a group starts at layer {start}, not inside one"),
        }
    }

    /// Output rows of a fused depthwise → pointwise pair per band: about this many bytes of
    /// depthwise output, so that the band stays in L2 between the two kernels.
    const BAND_BYTES: usize = 96 * 1024;

    /// Rows per band of a fused pair whose depthwise output is `g` and pointwise conv `dense`,
    /// run in `parts` parts.
    pub(super) fn band_rows(g: &MapGeom, dense: &Dense, parts: usize) -> usize {
        // With weights past half the L2 (late layers: megabytes), a map that fits in the L2 is
        // one band: every band re-reads all the weights. Split over threads, it is one band per
        // thread, or the other threads would wait. (L2 as this core has it: `CacheSizes`.)
        if kernels::weights_exceed_l2(dense.k, dense.n_pad) && 4 * g.h * g.w * g.c <= kernels::band_max_a_bytes() {
            return g.h.div_ceil(parts);
        }
        (Self::BAND_BYTES / (4 * g.w * g.c)).clamp(1, g.h.div_ceil(parts))
    }

    /// A depthwise conv and the pointwise conv reading it, a band of rows at a time through
    /// `ws.depthwise_band` instead of a whole map.
    fn run_pair(&self, depthwise: &Layer, pointwise: &Layer, ws: &mut Workspace) {
        let (Layer::Depthwise { output: depthwise_map, .. }, Layer::Pointwise { output, residual, dense, .. }) =
            (depthwise, pointwise)
        else {
            unreachable!("a pair is depthwise → pointwise")
        };
        ws.zero_border(*output);
        let depthwise_geom = ws.geoms[*depthwise_map];
        let rows = Self::band_rows(&depthwise_geom, dense, ws.parts);
        let (out_geom, res) = (ws.geoms[*output], residual.map(|r| (ws.ptr(r), ws.geoms[r])));
        let out = ws.ptr_mut(*output);
        let band_len = ws.depthwise_band.len() / ws.parts;
        let band_base = SyncPtr(ws.depthwise_band.as_mut_ptr());
        let (out, res) = (SyncPtr(out), res.map(|(p, g)| (SyncPtr(p as *mut f32), g)));
        let job = depthwise.conv_job(ws, std::ptr::null_mut(), depthwise_geom);
        let bands = depthwise_geom.h.div_ceil(rows);
        // Bands are independent: with several threads each takes a run of them, with its own
        // band buffer.
        for_parts(ws.parts, bands, &|part, b0, b1| {
            let band = unsafe { band_base.get().add(part * band_len) };
            for b in b0..b1 {
                let y0 = b * rows;
                let y1 = (y0 + rows).min(depthwise_geom.h);
                self.depthwise_then_project(job, band, depthwise_geom, (y0, y1), dense, out, out_geom, res);
            }
        });
    }

    /// A depthwise → pointwise pair fed through a ring of rows: expand (1x1) → depthwise →
    /// project, or pair → pair. Per band of depthwise output rows, the producer computes the
    /// rows of its map that the band needs into `ws.ring_band` (keeping the rows it shares with
    /// the previous band), the depthwise conv reads them from there into `ws.depthwise_band`,
    /// and the pointwise conv projects. Neither the producer's map nor the depthwise map is ever
    /// whole.
    fn run_ring(&self, producer: Producer, depthwise: &Layer, project: &Layer, ws: &mut Workspace) {
        let (
            Layer::Depthwise { input: ring_map, output: depthwise_map, kernel, stride, .. },
            Layer::Pointwise { output, residual, dense, .. },
        ) = (depthwise, project)
        else {
            unreachable!("a ring feeds a depthwise → pointwise pair")
        };
        ws.zero_border(*output);
        let (ring_geom, depthwise_geom, out_geom) = (ws.geoms[*ring_map], ws.geoms[*depthwise_map], ws.geoms[*output]);
        let (kernel, stride, pad) = (*kernel, *stride, ring_geom.pad);
        debug_assert_eq!(pad, (kernel - 1) / 2, "the ring's map's only reader is this depthwise conv");
        let ring_row_stride = ring_geom.row_stride();
        let rows = Self::band_rows(&depthwise_geom, dense, ws.parts);
        let res = residual.map(|r| (SyncPtr(ws.ptr(r) as *mut f32), ws.geoms[r]));
        let out = SyncPtr(ws.ptr_mut(*output));
        let band_len = ws.depthwise_band.len() / ws.parts;
        let ring_len = ws.ring_band.len() / ws.parts;
        let band_base = SyncPtr(ws.depthwise_band.as_mut_ptr());
        let ring_base = SyncPtr(ws.ring_band.as_mut_ptr());
        let job = depthwise.conv_job(ws, std::ptr::null_mut(), depthwise_geom);
        let ready = match producer {
            Producer::Expand { input, dense } => {
                ReadyProducer::Expand { input: SyncPtr(ws.ptr(input) as *mut f32), input_geom: ws.geoms[input], dense }
            }
            Producer::Pair { depthwise: pair_depthwise, dense } => {
                let Layer::Depthwise { output: pair_depthwise_map, .. } = pair_depthwise else {
                    unreachable!("a pair starts with a depthwise conv")
                };
                let pair_depthwise_geom = ws.geoms[*pair_depthwise_map];
                ReadyProducer::Pair {
                    depthwise_job: pair_depthwise.conv_job(ws, std::ptr::null_mut(), pair_depthwise_geom),
                    depthwise_geom: pair_depthwise_geom,
                    band_rows: Self::band_rows(&pair_depthwise_geom, dense, ws.parts),
                    dense,
                }
            }
        };
        let bands = depthwise_geom.h.div_ceil(rows);
        for_parts(ws.parts, bands, &|part, b0, b1| {
            let band = unsafe { band_base.get().add(part * band_len) };
            // Row j of `ring` holds bordered row need_start + j of the ring's map; `pad` spare
            // rows precede it.
            let ring = unsafe { ring_base.get().add(part * ring_len + pad * ring_row_stride) };
            // The bordered rows the ring holds from the previous band.
            let mut held: Option<(usize, usize)> = None;
            for b in b0..b1 {
                let y0 = b * rows;
                let y1 = (y0 + rows).min(depthwise_geom.h);
                // The bordered rows of the ring's map that depthwise rows y0..y1 read.
                let (need_start, need_end) = (y0 * stride, (y1 - 1) * stride + kernel);
                // Rows already computed for the previous band move to the front.
                let mut compute_start = need_start;
                if let Some((held_start, held_end)) = held {
                    if held_start <= need_start && held_end > need_start {
                        unsafe {
                            std::ptr::copy(
                                ring.add((need_start - held_start) * ring_row_stride),
                                ring,
                                (held_end - need_start) * ring_row_stride,
                            )
                        };
                        compute_start = held_end;
                    }
                }
                // Bordered rows outside the image are zero rows.
                for r in compute_start..need_end {
                    if r < pad || r >= ring_geom.h + pad {
                        unsafe {
                            std::ptr::write_bytes(ring.add((r - need_start) * ring_row_stride), 0, ring_row_stride)
                        };
                    }
                }
                // The bordered rows inside the image that the producer computes.
                let (inside_start, inside_end) = (compute_start.max(pad), need_end.min(ring_geom.h + pad));
                if inside_start < inside_end {
                    for r in inside_start..inside_end {
                        // Border columns: the buffer is shared with other layers' shapes.
                        let row = unsafe { ring.add((r - need_start) * ring_row_stride) };
                        unsafe {
                            std::ptr::write_bytes(row, 0, pad * ring_geom.c);
                            std::ptr::write_bytes(row.add((pad + ring_geom.w) * ring_geom.c), 0, pad * ring_geom.c);
                        }
                    }
                    // Image rows inside_start - pad .. inside_end - pad of the ring's map,
                    // written so that image row y lands in ring row y + pad - need_start (the
                    // geometry adds the border `pad`).
                    let base = ring.wrapping_sub(need_start * ring_row_stride);
                    match &ready {
                        ReadyProducer::Expand { input, input_geom, dense: expand } => {
                            let g = expand.job(
                                unsafe { input.get().add((inside_start - pad) * input_geom.row_stride()) },
                                MapGeom { h: inside_end - inside_start, ..*input_geom },
                                base.wrapping_add((inside_start - pad) * ring_row_stride),
                                MapGeom { h: inside_end - inside_start, ..ring_geom },
                                None,
                            );
                            unsafe { kernels::gemm(self.isa, &g, 0, (inside_end - inside_start) * ring_geom.w) };
                        }
                        ReadyProducer::Pair {
                            depthwise_job: pair_depthwise_job,
                            depthwise_geom: pair_depthwise_geom,
                            band_rows: pair_band_rows,
                            dense: pair_pointwise,
                        } => {
                            // The pair's own bands, through the same depthwise band buffer (used
                            // in turn).
                            let mut pair_y0 = inside_start - pad;
                            while pair_y0 < inside_end - pad {
                                let pair_y1 = (pair_y0 + pair_band_rows).min(inside_end - pad);
                                self.depthwise_then_project(
                                    *pair_depthwise_job,
                                    band,
                                    *pair_depthwise_geom,
                                    (pair_y0, pair_y1),
                                    pair_pointwise,
                                    SyncPtr(base),
                                    ring_geom,
                                    None,
                                );
                                pair_y0 = pair_y1;
                            }
                        }
                    }
                }
                held = Some((need_start, need_end));
                self.depthwise_then_project(
                    job.reading_band(ring, need_start),
                    band,
                    depthwise_geom,
                    (y0, y1),
                    dense,
                    out,
                    out_geom,
                    res,
                );
            }
        });
    }

    /// One band of a fused pair or triple: depthwise rows `y0..y1` into `band`, then the
    /// pointwise conv from `band` into the same rows of the output (and residual) maps.
    #[allow(clippy::too_many_arguments)]
    fn depthwise_then_project(
        &self,
        job: kernels::Conv,
        band: *mut f32,
        depthwise_geom: MapGeom,
        (y0, y1): (usize, usize),
        dense: &Dense,
        out: SyncPtr,
        out_geom: MapGeom,
        res: Option<(SyncPtr, MapGeom)>,
    ) {
        let band_geom = MapGeom { h: y1 - y0, w: depthwise_geom.w, c: depthwise_geom.c, pad: 0 };
        let d = job.into_band(band, MapGeom { h: depthwise_geom.h, ..band_geom }, y0);
        unsafe { kernels::depthwise(self.isa, &d, y0, y1) };
        // Rows y0..y1 of the output (and residual) maps, as maps of their own.
        // (wrapping: a ring's base may point before its buffer; the rows themselves are inside.)
        let rows = |p: *mut f32, g: MapGeom| (p.wrapping_add(y0 * g.row_stride()), MapGeom { h: y1 - y0, ..g });
        let (c, c_geom) = rows(out.get(), out_geom);
        let res = res.map(|(p, g)| {
            let (p, g) = rows(p.get(), g);
            (p as *const f32, g)
        });
        let g = dense.job(band, band_geom, c, c_geom, res);
        unsafe { kernels::gemm(self.isa, &g, 0, (y1 - y0) * depthwise_geom.w) };
    }

    /// One layer on whole maps.
    pub(super) fn run_layer(&self, layer: &Layer, ws: &mut Workspace) {
        let isa = self.isa;
        match layer {
            Layer::Direct { output, .. } | Layer::Depthwise { output, .. } | Layer::Pointwise { output, .. } => {
                ws.zero_border(*output)
            }
            Layer::SqueezeExcite { .. } => {}
        }
        match layer {
            Layer::Direct { output, .. } | Layer::Depthwise { output, .. } => {
                let out_geom = ws.geoms[*output];
                let out = ws.ptr_mut(*output);
                let job = layer.conv_job(ws, out, out_geom);
                let depthwise = matches!(layer, Layer::Depthwise { .. });
                for_parts(ws.parts, out_geom.h, &|_, a, b| unsafe {
                    if depthwise {
                        kernels::depthwise(isa, &job, a, b)
                    } else {
                        kernels::direct_conv(isa, &job, a, b)
                    }
                });
            }
            Layer::Pointwise { input, output, residual, dense } => {
                let out_geom = ws.geoms[*output];
                let res = residual.map(|r| (ws.ptr(r), ws.geoms[r]));
                let (inp, out) = (ws.ptr(*input), ws.ptr_mut(*output));
                let g = dense.job(inp, ws.geoms[*input], out, out_geom, res);
                for_parts(ws.parts, out_geom.h * out_geom.w, &|_, a, b| unsafe { kernels::gemm(isa, &g, a, b) });
            }
            Layer::SqueezeExcite { map, channels, squeeze, squeeze_pad, fc1, b1, fc2, b2 } => {
                let se = kernels::SqueezeExcite {
                    x: ws.ptr_mut(*map),
                    geom: ws.geoms[*map],
                    channels: *channels,
                    squeeze: *squeeze,
                    squeeze_pad: *squeeze_pad,
                    fc1: fc1.as_ptr(),
                    b1: b1.as_ptr(),
                    fc2: fc2.as_ptr(),
                    b2: b2.as_ptr(),
                    scratch: ws.scratch.as_mut_ptr(),
                };
                unsafe { kernels::squeeze_excite(isa, &se) };
            }
        }
    }
}
