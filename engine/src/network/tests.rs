//! Property tests: random shapes and weights per layer type, every ISA this CPU has, against
//! [`crate::reference`]. Each test builds a one- or two-layer network through the real
//! [`Folder`] and [`Network::lower`] (so BatchNorm folding and weight packing are under test too), runs it twice on a
//! reused workspace (garbage left in the interiors must not leak into results; only borders are
//! guaranteed zero) and compares every output value with the plain-loop reference.

use std::collections::HashMap;

use crate::arch::{Activation, Arch, ConvLayer, LinearLayer, ModelSpec, SqueezeExcite};
use crate::reference::{self, Chw};
use crate::simd::{pad_channels, Isa};

use super::folded::{FoldedModel, Folder};
use super::{NamedTensors, Network, TensorSource, Workspace};

/// splitmix64: reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-scale, scale)).collect()
    }
    fn act(&mut self) -> Option<Activation> {
        [None, Some(Activation::Relu), Some(Activation::Relu6), Some(Activation::Hardswish)][self.range(0, 3)]
    }
}

struct Bn {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

fn random_bn(rng: &mut Rng, c: usize) -> Bn {
    Bn {
        gamma: rng.vec(c, 1.5),
        beta: rng.vec(c, 1.0),
        mean: rng.vec(c, 0.5),
        var: (0..c).map(|_| rng.uniform(0.2, 2.0)).collect(),
    }
}

fn insert_conv_bn(t: &mut NamedTensors, p: &str, w: &[f32], shape: Vec<usize>, bn: &Bn) {
    let c = bn.gamma.len();
    t.insert(format!("{p}.0.weight"), (shape, w.to_vec()));
    t.insert(format!("{p}.1.weight"), (vec![c], bn.gamma.clone()));
    t.insert(format!("{p}.1.bias"), (vec![c], bn.beta.clone()));
    t.insert(format!("{p}.1.running_mean"), (vec![c], bn.mean.clone()));
    t.insert(format!("{p}.1.running_var"), (vec![c], bn.var.clone()));
}

/// Runs the layers `build` adds on `input`, returning map `out` as CHW.
fn run(isa: Isa, tensors: NamedTensors, input: &Chw, build: impl FnOnce(&mut Folder) -> usize) -> Chw {
    let mut src = TensorSource::new(tensors);
    let mut b = Folder { source: &mut src, norm_eps: 1e-3, maps: vec![input.c], layers: Vec::new() };
    let out = build(&mut b);
    let (maps, layers) = (b.maps, b.layers);
    src_finish(&src);
    let model = FoldedModel { spec: ModelSpec::new(Arch::V1), maps, layers, features: out, head: Vec::new() };
    let net = Network::lower(&model, isa, pad_channels(input.c));
    let mut ws = Workspace::new(&net, input.h, input.w);
    // Garbage in the interiors must not leak: only borders are guaranteed zero.
    net.run_layers(&mut ws, &input.data);
    net.run_layers(&mut ws, &input.data);
    let g = ws.geoms[out];
    let c = net.maps[out].channels;
    let mut data = vec![0.0; c * g.h * g.w];
    for ch in 0..c {
        for y in 0..g.h {
            for x in 0..g.w {
                data[(ch * g.h + y) * g.w + x] = ws.map(out)[g.offset(y, x) + ch];
            }
        }
    }
    Chw { c, h: g.h, w: g.w, data }
}

fn src_finish(src: &TensorSource) {
    src.finish().expect("every tensor used");
}

fn assert_close(ours: &Chw, want: &Chw, what: &str) {
    assert_eq!((ours.c, ours.h, ours.w), (want.c, want.h, want.w), "{what}: shape");
    for (i, (a, b)) in ours.data.iter().zip(&want.data).enumerate() {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{what}: element {i}: {a} vs {b}");
    }
}

fn random_input(rng: &mut Rng, c: usize, h: usize, w: usize) -> Chw {
    Chw { c, h, w, data: rng.vec(c * h * w, 2.0) }
}

#[test]
fn pointwise_conv_matches_reference() {
    let mut rng = Rng(1);
    for isa in Isa::all_available() {
        for case in 0..60 {
            let (cin, cout) = (rng.range(1, 70), rng.range(1, 70));
            let (h, w) = (rng.range(1, 9), rng.range(1, 9));
            let act = rng.act();
            let residual = cin == cout || case % 4 == 0;
            let cout = if residual { cin } else { cout };
            let x = random_input(&mut rng, cin, h, w);
            let wts = rng.vec(cout * cin, 0.5);
            let bn = random_bn(&mut rng, cout);
            let mut want =
                reference::conv_bn_act(&x, &wts, cout, 1, 1, 1, (&bn.gamma, &bn.beta, &bn.mean, &bn.var, 1e-3), act);
            if residual {
                want.data.iter_mut().zip(&x.data).for_each(|(y, r)| *y += r);
            }
            let mut t = HashMap::new();
            insert_conv_bn(&mut t, "pw", &wts, vec![cout, cin, 1, 1], &bn);
            let ours = run(isa, t, &x, |b| {
                b.conv(&ConvLayer::conv_norm_act("pw", cin, cout, 1, 1, false, act), 0, residual.then_some(0)).unwrap()
            });
            assert_close(&ours, &want, &format!("{isa} pointwise {cin}->{cout} {h}x{w} {act:?} residual {residual}"));
        }
    }
}

#[test]
fn depthwise_conv_matches_reference() {
    let mut rng = Rng(2);
    for isa in Isa::all_available() {
        for _ in 0..60 {
            let c = rng.range(1, 70);
            let kernel = [3, 5][rng.range(0, 1)];
            let stride = rng.range(1, 2);
            let (h, w) = (rng.range(1, 13), rng.range(1, 13));
            let act = rng.act();
            let x = random_input(&mut rng, c, h, w);
            let wts = rng.vec(c * kernel * kernel, 0.5);
            let bn = random_bn(&mut rng, c);
            let want = reference::conv_bn_act(
                &x,
                &wts,
                c,
                kernel,
                stride,
                c,
                (&bn.gamma, &bn.beta, &bn.mean, &bn.var, 1e-3),
                act,
            );
            let mut t = HashMap::new();
            insert_conv_bn(&mut t, "dw", &wts, vec![c, 1, kernel, kernel], &bn);
            let ours = run(isa, t, &x, |b| {
                b.conv(&ConvLayer::conv_norm_act("dw", c, c, kernel, stride, true, act), 0, None).unwrap()
            });
            assert_close(&ours, &want, &format!("{isa} depthwise c{c} k{kernel} s{stride} {h}x{w} {act:?}"));
        }
    }
}

#[test]
fn stem_conv_matches_reference() {
    let mut rng = Rng(3);
    for isa in Isa::all_available() {
        for _ in 0..40 {
            let (cin, cout) = (rng.range(1, 4), rng.range(1, 40));
            let stride = rng.range(1, 2);
            let (h, w) = (rng.range(1, 15), rng.range(1, 15));
            let act = rng.act();
            let x = random_input(&mut rng, cin, h, w);
            let wts = rng.vec(cout * cin * 9, 0.5);
            let bn = random_bn(&mut rng, cout);
            let want = reference::conv_bn_act(
                &x,
                &wts,
                cout,
                3,
                stride,
                1,
                (&bn.gamma, &bn.beta, &bn.mean, &bn.var, 1e-3),
                act,
            );
            let mut t = HashMap::new();
            insert_conv_bn(&mut t, "stem", &wts, vec![cout, cin, 3, 3], &bn);
            let ours = run(isa, t, &x, |b| {
                b.conv(&ConvLayer::conv_norm_act("stem", cin, cout, 3, stride, false, act), 0, None).unwrap()
            });
            assert_close(&ours, &want, &format!("{isa} stem {cin}->{cout} s{stride} {h}x{w} {act:?}"));
        }
    }
}

#[test]
fn squeeze_excite_matches_reference() {
    let mut rng = Rng(4);
    for isa in Isa::all_available() {
        for _ in 0..40 {
            let (c, s) = (rng.range(1, 70), rng.range(1, 24));
            let (h, w) = (rng.range(1, 9), rng.range(1, 9));
            let x = random_input(&mut rng, c, h, w);
            let (w1, b1, w2, b2) = (rng.vec(s * c, 0.5), rng.vec(s, 0.5), rng.vec(c * s, 0.5), rng.vec(c, 0.5));
            let want = reference::squeeze_excite(&x, &w1, &b1, &w2, &b2);
            let mut t = HashMap::new();
            t.insert("se.fc1.weight".into(), (vec![s, c, 1, 1], w1));
            t.insert("se.fc1.bias".into(), (vec![s], b1));
            t.insert("se.fc2.weight".into(), (vec![c, s, 1, 1], w2));
            t.insert("se.fc2.bias".into(), (vec![c], b2));
            let ours = run(isa, t, &x, |b| {
                b.squeeze_excite(&SqueezeExcite { key: "se".into(), channels: c, squeeze_channels: s }, 0).unwrap();
                0
            });
            assert_close(&ours, &want, &format!("{isa} squeeze-excite c{c} s{s} {h}x{w}"));
        }
    }
}

#[test]
fn pooling_and_linear_head_match_reference() {
    let mut rng = Rng(5);
    for isa in Isa::all_available() {
        for _ in 0..30 {
            let (c, hidden, classes) = (rng.range(1, 80), rng.range(1, 80), rng.range(1, 40));
            let (h, w, batch) = (rng.range(1, 7), rng.range(1, 7), rng.range(1, 30));
            let act = rng.act();
            let (w1, b1, w2, b2) =
                (rng.vec(hidden * c, 0.5), rng.vec(hidden, 0.5), rng.vec(classes * hidden, 0.5), rng.vec(classes, 0.5));
            let mut t = HashMap::new();
            t.insert("h.0.weight".into(), (vec![hidden, c], w1.clone()));
            t.insert("h.0.bias".into(), (vec![hidden], b1.clone()));
            t.insert("h.1.weight".into(), (vec![classes, hidden], w2.clone()));
            t.insert("h.1.bias".into(), (vec![classes], b2.clone()));
            let mut src = TensorSource::new(t);
            let mut b = Folder { source: &mut src, norm_eps: 1e-3, maps: vec![c], layers: Vec::new() };
            let linear =
                |key: &str, in_features, out_features| LinearLayer { key: key.into(), in_features, out_features };
            let head = vec![
                b.linear(&linear("h.0", c, hidden), act).unwrap(),
                b.linear(&linear("h.1", hidden, classes), None).unwrap(),
            ];
            let spec = ModelSpec::new(Arch::V1).with_num_classes(classes);
            let model = FoldedModel { spec, maps: b.maps, layers: Vec::new(), features: 0, head };
            let net = Network::lower(&model, isa, pad_channels(c));
            let mut ws = Workspace::new(&net, h, w);
            let stride = net.pooled_stride();
            let mut pooled = vec![0.0; batch * stride];
            let inputs: Vec<Chw> = (0..batch).map(|_| random_input(&mut rng, c, h, w)).collect();
            for (i, x) in inputs.iter().enumerate() {
                net.features_into(&mut ws, &x.data, &mut pooled[i * stride..(i + 1) * stride]);
            }
            let mut logits = vec![0.0; batch * classes];
            net.head(&pooled, batch, &mut logits);
            for (i, x) in inputs.iter().enumerate() {
                let want =
                    reference::linear(&reference::linear(&reference::mean_pool(x), &w1, &b1, act), &w2, &b2, None);
                for (j, (a, b)) in logits[i * classes..(i + 1) * classes].iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{isa} head c{c} hidden{hidden} image {i} class {j}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
