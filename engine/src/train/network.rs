//! The trainer's layers, built from the resolved [`Plan`] alone: one [`Node`] per conv (with
//! its BatchNorm and activation) or squeeze-excite, in forward order, each with its maps in
//! the arena; then the classifier's layers. Nothing about an architecture is decided here.

use super::activation::{act_code, ACT_HARDSWISH};
use super::arena::{ArenaPlan, Buf};
use super::conv::Dense;
use super::depthwise::DwGeom;
use super::params::{ParamKind, ParamStore};
use crate::arch::{BlockLayer, ConvLayer, HeadLayer, Plan, SqueezeExcite, Stage};
use crate::error::{EngineError, Result};
use crate::simd::pad_channels;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// A full k x k conv reading the NCHW images (the stem), through im2col and the GEMM.
    Stem,
    /// 1x1, stride 1: the GEMM on the NHWC map.
    Pointwise,
    Depthwise,
}

impl ConvKind {
    pub fn name(&self) -> &'static str {
        match self {
            ConvKind::Stem => "stem",
            ConvKind::Pointwise => "pointwise",
            ConvKind::Depthwise => "depthwise",
        }
    }
}

/// BatchNorm's parameter ids and its per-step state (`[c_p]` each, zero past the real
/// channels).
#[derive(Debug, Clone)]
pub struct BnState {
    pub gamma: usize,
    pub beta: usize,
    pub running_mean: usize,
    pub running_var: usize,
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    /// The per-channel shift of the statistics sums (the batch's first row).
    pub shift_row: Vec<f32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub cc: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct ConvNode {
    pub layer: ConvLayer,
    pub kind: ConvKind,
    pub act: u8,
    pub h_in: usize,
    pub w_in: usize,
    pub h_out: usize,
    pub w_out: usize,
    pub cin_p: usize,
    pub cout_p: usize,
    /// The map read (the stem: its im2col patches).
    pub input: Buf,
    /// Conv output (what BatchNorm's backward needs).
    pub z: Buf,
    /// `act(bn(z)) (+ block input)`: the next layer's input.
    pub y: Buf,
    /// The block input added after BatchNorm (the last conv of a residual block).
    pub residual: Option<Buf>,
    /// First layer of a residual block: its input gradient also gets the skip's.
    pub opens_residual: bool,
    pub weight: usize,
    /// Stem and pointwise.
    pub dense: Option<Dense>,
    /// Depthwise: weights `[k·k][c_p]` and their gradient.
    pub taps: Vec<f32>,
    pub taps_grad: Vec<f32>,
    pub bn: BnState,
}

impl ConvNode {
    pub fn dw_geom(&self) -> DwGeom {
        DwGeom::new(self.h_in, self.w_in, self.cout_p, self.layer.kernel, self.layer.stride)
    }
    pub fn out_rows_per_image(&self) -> usize {
        self.h_out * self.w_out
    }
}

#[derive(Debug, Clone)]
pub struct SeNode {
    pub se: SqueezeExcite,
    pub h: usize,
    pub w: usize,
    pub cp: usize,
    pub input: Buf,
    pub output: Buf,
    /// fc1: `[squeeze][channels]`, fc2: `[channels][squeeze]`, with biases.
    pub fc1: Dense,
    pub fc2: Dense,
    /// `[batch][c_p]` / `[batch][s_p]` per-step values.
    pub pooled: Vec<f32>,
    pub hidden_pre: Vec<f32>,
    pub hidden: Vec<f32>,
    pub gate_pre: Vec<f32>,
    pub gate: Vec<f32>,
    /// Backward scratch.
    pub d_gate: Vec<f32>,
    pub d_hidden: Vec<f32>,
    pub d_pooled: Vec<f32>,
    pub sums: Vec<f64>,
}

#[derive(Debug, Clone)]
pub enum Node {
    Conv(ConvNode),
    Se(SeNode),
}

#[derive(Debug, Clone)]
pub enum HeadNode {
    Linear(Dense),
    Act(u8),
    Dropout,
}

/// Everything [`build`] lays out.
pub struct Built {
    pub nodes: Vec<Node>,
    pub head: Vec<HeadNode>,
    /// Padded width of each classifier tensor: `[0]` the pooled features, `[i + 1]` layer i's
    /// output.
    pub head_widths: Vec<usize>,
    pub arena: ArenaPlan,
    /// Three gradient buffers, each as large as the largest map.
    pub grads: [Buf; 3],
    pub max_cp: usize,
}

fn bn_state(params: &mut ParamStore, layer: &ConvLayer) -> BnState {
    let c = layer.out_channels;
    let cp = pad_channels(c);
    let key = &layer.norm_key;
    BnState {
        gamma: params.register(format!("{key}.weight"), vec![c], ParamKind::Weight),
        beta: params.register(format!("{key}.bias"), vec![c], ParamKind::Weight),
        running_mean: params.register(format!("{key}.running_mean"), vec![c], ParamKind::Buffer),
        running_var: params.register(format!("{key}.running_var"), vec![c], ParamKind::Buffer),
        mean: vec![0.0; cp],
        rstd: vec![0.0; cp],
        scale: vec![0.0; cp],
        shift: vec![0.0; cp],
        shift_row: vec![0.0; cp],
        a: vec![0.0; cp],
        b: vec![0.0; cp],
        cc: vec![0.0; cp],
    }
}

/// Lays out the layers of `plan` for batches of up to `batch` images of `height x width`,
/// registering every parameter in `params` (in plan order).
pub fn build(plan: &Plan, batch: usize, height: usize, width: usize, params: &mut ParamStore) -> Result<Built> {
    let mut arena = ArenaPlan::default();
    let mut nodes = Vec::new();
    let (mut h, mut w) = (height, width);
    let mut channels = 3usize;
    // The current map (None: the images).
    let mut current: Option<Buf> = None;
    let mut max_map = 0usize;
    let mut max_cp = 16usize;
    let conv_node = |layer: &ConvLayer,
                     input: Option<Buf>,
                     h: usize,
                     w: usize,
                     arena: &mut ArenaPlan,
                     params: &mut ParamStore|
     -> Result<ConvNode> {
        let (h_out, w_out) = (layer.output_size(h), layer.output_size(w));
        let cout_p = pad_channels(layer.out_channels);
        let cin_p = pad_channels(layer.in_channels);
        let weight =
            params.register(format!("{}.weight", layer.conv_key), layer.weight_shape().to_vec(), ParamKind::Weight);
        let (kind, input, dense) = match input {
            None => {
                if layer.groups != 1 {
                    return Err(EngineError::Spec(format!(
                        "{}: a grouped first layer is not supported",
                        layer.conv_key
                    )));
                }
                let inp = layer.in_channels * layer.kernel * layer.kernel;
                let dense = Dense::new(layer.out_channels, inp, weight, None);
                let col = arena.alloc(batch * h_out * w_out * dense.in_p);
                (ConvKind::Stem, col, Some(dense))
            }
            Some(input) if layer.kernel == 1 && layer.stride == 1 && layer.groups == 1 => {
                (ConvKind::Pointwise, input, Some(Dense::new(layer.out_channels, layer.in_channels, weight, None)))
            }
            Some(input) if layer.is_depthwise() && matches!(layer.kernel, 3 | 5) => (ConvKind::Depthwise, input, None),
            Some(_) => {
                return Err(EngineError::Spec(format!(
                    "{}: {}x{} conv, stride {}, groups {} is not supported by the trainer",
                    layer.conv_key, layer.kernel, layer.kernel, layer.stride, layer.groups
                )))
            }
        };
        let map = batch * h_out * w_out * cout_p;
        let taps = if kind == ConvKind::Depthwise { layer.kernel * layer.kernel * cout_p } else { 0 };
        Ok(ConvNode {
            layer: layer.clone(),
            kind,
            act: act_code(layer.activation),
            h_in: h,
            w_in: w,
            h_out,
            w_out,
            cin_p,
            cout_p,
            input,
            z: arena.alloc(map),
            y: arena.alloc(map),
            residual: None,
            opens_residual: false,
            weight,
            dense,
            taps: vec![0.0; taps],
            taps_grad: vec![0.0; taps],
            bn: bn_state(params, layer),
        })
    };
    for stage in &plan.features {
        let (layers, residual): (Vec<BlockLayer>, bool) = match stage {
            Stage::Conv(c) => (vec![BlockLayer::Conv(c.clone())], false),
            Stage::Block(b) => (b.layers.clone(), b.residual),
        };
        let block_input = current;
        let first_node = nodes.len();
        for layer in &layers {
            match layer {
                BlockLayer::Conv(conv) => {
                    if conv.in_channels != channels {
                        return Err(EngineError::Spec(format!(
                            "{}: {} input channels, the map has {channels}",
                            conv.conv_key, conv.in_channels
                        )));
                    }
                    let node = conv_node(conv, current, h, w, &mut arena, params)?;
                    (h, w, channels) = (node.h_out, node.w_out, conv.out_channels);
                    max_map = max_map.max(batch * h * w * node.cout_p).max(batch * node.h_in * node.w_in * node.cin_p);
                    max_cp = max_cp.max(node.cout_p);
                    current = Some(node.y);
                    nodes.push(Node::Conv(node));
                }
                BlockLayer::SqueezeExcite(se) => {
                    let input = current
                        .ok_or_else(|| EngineError::Spec(format!("{}: squeeze-excite on the images", se.key)))?;
                    if se.channels != channels {
                        return Err(EngineError::Spec(format!(
                            "{}: {} channels, the map has {channels}",
                            se.key, se.channels
                        )));
                    }
                    let (c, s) = (se.channels, se.squeeze_channels);
                    let k1 = format!("{}.fc1", se.key);
                    let k2 = format!("{}.fc2", se.key);
                    let w1 = params.register(format!("{k1}.weight"), vec![s, c, 1, 1], ParamKind::Weight);
                    let b1 = params.register(format!("{k1}.bias"), vec![s], ParamKind::Weight);
                    let w2 = params.register(format!("{k2}.weight"), vec![c, s, 1, 1], ParamKind::Weight);
                    let b2 = params.register(format!("{k2}.bias"), vec![c], ParamKind::Weight);
                    let fc1 = Dense::new(s, c, w1, Some(b1));
                    let fc2 = Dense::new(c, s, w2, Some(b2));
                    let (cp, sp) = (fc1.in_p, fc1.out_p);
                    let output = arena.alloc(batch * h * w * cp);
                    nodes.push(Node::Se(SeNode {
                        se: se.clone(),
                        h,
                        w,
                        cp,
                        input,
                        output,
                        fc1,
                        fc2,
                        pooled: vec![0.0; batch * cp],
                        hidden_pre: vec![0.0; batch * sp],
                        hidden: vec![0.0; batch * sp],
                        gate_pre: vec![0.0; batch * cp],
                        gate: vec![0.0; batch * cp],
                        d_gate: vec![0.0; batch * cp],
                        d_hidden: vec![0.0; batch * sp],
                        d_pooled: vec![0.0; batch * cp],
                        sums: vec![0.0; batch * cp],
                    }));
                    current = Some(output);
                }
            }
        }
        if residual {
            let input = block_input.ok_or_else(|| EngineError::Spec("a residual block on the images".into()))?;
            match nodes.last_mut() {
                Some(Node::Conv(last)) if last.act == super::activation::ACT_NONE && last.layer.in_channels > 0 => {
                    last.residual = Some(input);
                }
                _ => {
                    return Err(EngineError::Spec(
                        "a residual block must end in a conv + BatchNorm without activation".into(),
                    ))
                }
            }
            match &mut nodes[first_node] {
                Node::Conv(first) => first.opens_residual = true,
                Node::Se(_) => return Err(EngineError::Spec("a residual block must start with a conv".into())),
            }
        }
    }
    if current.is_none() {
        return Err(EngineError::Spec("a model without features".into()));
    }
    // The classifier, on the pooled features.
    let mut head = Vec::new();
    let mut head_widths = vec![pad_channels(channels)];
    let mut features = channels;
    for layer in &plan.classifier {
        match layer {
            HeadLayer::Linear(linear) => {
                if linear.in_features != features {
                    return Err(EngineError::Spec(format!(
                        "{}: {} inputs, got {features}",
                        linear.key, linear.in_features
                    )));
                }
                let wid = params.register(
                    format!("{}.weight", linear.key),
                    vec![linear.out_features, linear.in_features],
                    ParamKind::Weight,
                );
                let bid = params.register(format!("{}.bias", linear.key), vec![linear.out_features], ParamKind::Weight);
                head.push(HeadNode::Linear(Dense::new(linear.out_features, linear.in_features, wid, Some(bid))));
                features = linear.out_features;
            }
            HeadLayer::Activation { activation, .. } => {
                let code = act_code(Some(*activation));
                debug_assert!(code == ACT_HARDSWISH || code != 0);
                head.push(HeadNode::Act(code));
            }
            HeadLayer::Dropout { .. } => head.push(HeadNode::Dropout),
        }
        head_widths.push(pad_channels(features));
        max_cp = max_cp.max(pad_channels(features));
    }
    let grads = [arena.alloc(max_map), arena.alloc(max_map), arena.alloc(max_map)];
    Ok(Built { nodes, head, head_widths, arena, grads, max_cp })
}
