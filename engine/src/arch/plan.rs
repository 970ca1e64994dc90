//! The resolved plan of a model: every layer with its torchvision key, in forward order.
//!
//! [`Plan::new`] is the one place where a [`ModelSpec`] becomes layers. It reads the papers'
//! tables ([`super::tables`]), scales every width, and decides each rule of the architectures:
//! which table a variant uses, V2's last conv width, V3's `6 · last` conv and scaled classifier,
//! the squeeze width, when a block adds its input back, and how each classifier is laid out.
//! Keys are torchvision's `state_dict` prefixes, counted as its `nn.Sequential`s count them, so
//! a consumer that names tensors from a plan loads torchvision weights with no remapping.
//!
//! Consumers: the `mobilenet` crate's burn models and its summary table, and the engine's
//! lowering (and, through them, training and inference alike).

use super::tables::{
    V1_BLOCKS, V1_STEM_CHANNELS, V2_INVERTED_RESIDUAL_SETTING, V2_LAST_CHANNELS, V2_STEM_CHANNELS, V3_LARGE_BNECK,
    V3_LARGE_LAST_CHANNELS, V3_SMALL_BNECK, V3_SMALL_LAST_CHANNELS,
};
use super::{make_divisible, scale_channels, Activation, Arch, ModelSpec};
use crate::error::Result;

/// A convolution, its BatchNorm and an optional activation: torchvision's
/// `Conv2dNormActivation`, or V2's projection (conv and BN as separate `nn.Sequential` children).
#[derive(Debug, Clone, PartialEq)]
pub struct ConvLayer {
    /// Key prefix of the conv (`features.0.0`): weight `[out, in / groups, k, k]`, no bias.
    pub conv_key: String,
    /// Key prefix of the BatchNorm (`features.0.1`).
    pub norm_key: String,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Square kernel side; padding is torchvision's `(kernel - 1) / 2`.
    pub kernel: usize,
    pub stride: usize,
    /// 1 for a full conv, `in_channels` for a depthwise one.
    pub groups: usize,
    pub activation: Option<Activation>,
}

impl ConvLayer {
    /// torchvision's `Conv2dNormActivation` at `prefix`: conv `prefix.0`, BN `prefix.1`,
    /// activation `prefix.2`; a depthwise conv has as many groups as channels.
    pub fn conv_norm_act(
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        depthwise: bool,
        activation: Option<Activation>,
    ) -> ConvLayer {
        ConvLayer {
            conv_key: format!("{prefix}.0"),
            norm_key: format!("{prefix}.1"),
            in_channels,
            out_channels,
            kernel,
            stride,
            groups: if depthwise { in_channels } else { 1 },
            activation,
        }
    }

    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.in_channels == self.out_channels
    }

    pub fn padding(&self) -> usize {
        (self.kernel - 1) / 2
    }

    /// Output side for an input side.
    pub fn output_size(&self, input: usize) -> usize {
        (input + 2 * self.padding() - self.kernel) / self.stride + 1
    }

    /// The weight's shape, torch's layout.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.out_channels, self.in_channels / self.groups, self.kernel, self.kernel]
    }

    /// The activation's `nn.Sequential` index: the one after the norm (`features.0.2`).
    pub fn activation_key(&self) -> Option<String> {
        self.activation.map(|_| next_sibling(&self.norm_key))
    }
}

/// Squeeze-and-excitation (V3 §5.3, torchvision's `SqueezeExcitation`): pool, `fc1` (1x1 conv
/// with bias) → ReLU → `fc2` (1x1 conv with bias) → hard-sigmoid, times the input.
#[derive(Debug, Clone, PartialEq)]
pub struct SqueezeExcite {
    /// Key prefix; the convs are `{key}.fc1` and `{key}.fc2`.
    pub key: String,
    pub channels: usize,
    pub squeeze_channels: usize,
}

/// One layer inside a block.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockLayer {
    Conv(ConvLayer),
    SqueezeExcite(SqueezeExcite),
}

/// A block of `features`: V1's depthwise separable conv, V2's inverted residual, V3's
/// bottleneck. Its layers run in order; with `residual`, the block's input is added to the
/// output of its last layer (after that layer's BatchNorm, which has no activation).
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// `features.3`.
    pub key: String,
    pub layers: Vec<BlockLayer>,
    /// torchvision's `use_res_connect`: stride 1 and as many channels out as in.
    pub residual: bool,
}

impl Block {
    pub fn in_channels(&self) -> usize {
        self.convs().next().map_or(0, |c| c.in_channels)
    }

    pub fn out_channels(&self) -> usize {
        self.convs().last().map_or(0, |c| c.out_channels)
    }

    pub fn convs(&self) -> impl DoubleEndedIterator<Item = &ConvLayer> {
        self.layers.iter().filter_map(|l| match l {
            BlockLayer::Conv(c) => Some(c),
            BlockLayer::SqueezeExcite(_) => None,
        })
    }

    pub fn squeeze_excite(&self) -> Option<&SqueezeExcite> {
        self.layers.iter().find_map(|l| match l {
            BlockLayer::SqueezeExcite(se) => Some(se),
            BlockLayer::Conv(_) => None,
        })
    }
}

/// One top-level child of `features` (`features.{index}`).
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// The stem, and V2's and V3's last 1x1 conv.
    Conv(ConvLayer),
    Block(Block),
}

impl Stage {
    pub fn out_channels(&self) -> usize {
        match self {
            Stage::Conv(c) => c.out_channels,
            Stage::Block(b) => b.out_channels(),
        }
    }

    /// Every conv of the stage, in order.
    pub fn convs(&self) -> Box<dyn Iterator<Item = &ConvLayer> + '_> {
        match self {
            Stage::Conv(c) => Box::new(std::iter::once(c)),
            Stage::Block(b) => Box::new(b.convs()),
        }
    }
}

/// A fully connected layer (`nn.Linear`, weight `[out, in]` in torch's layout, with bias).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearLayer {
    pub key: String,
    pub in_features: usize,
    pub out_features: usize,
}

/// One child of `classifier`, which runs on the globally average-pooled features.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadLayer {
    Dropout { key: String },
    Linear(LinearLayer),
    Activation { key: String, activation: Activation },
}

/// A model, resolved: see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub spec: ModelSpec,
    /// `features.0`, `features.1`, …: the stem, the blocks, and (V2, V3) the last conv.
    pub features: Vec<Stage>,
    /// `classifier.0`, …: V1/V2 `Dropout, Linear`; V3 `Linear, Hardswish, Dropout, Linear`.
    pub classifier: Vec<HeadLayer>,
}

impl Plan {
    /// Resolves `spec` (validated first).
    pub fn new(spec: &ModelSpec) -> Result<Plan> {
        spec.validate()?;
        let features = match spec.arch {
            Arch::V1 => v1_features(spec),
            Arch::V2 => v2_features(spec),
            Arch::V3Large | Arch::V3Small => v3_features(spec),
        };
        let pooled = features.last().map_or(0, Stage::out_channels);
        let classifier = match spec.arch {
            // `nn.Sequential(nn.Dropout(p), nn.Linear(pooled, classes))`.
            Arch::V1 | Arch::V2 => vec![
                HeadLayer::Dropout { key: "classifier.0".into() },
                linear("classifier.1", pooled, spec.num_classes),
            ],
            // `nn.Sequential(Linear, Hardswish, Dropout, Linear)`; unlike V2, V3 scales its
            // hidden width with the multiplier.
            Arch::V3Large | Arch::V3Small => {
                let last = if spec.arch == Arch::V3Small { V3_SMALL_LAST_CHANNELS } else { V3_LARGE_LAST_CHANNELS };
                let hidden = scale_channels(last, spec.width_mult);
                vec![
                    linear("classifier.0", pooled, hidden),
                    HeadLayer::Activation { key: "classifier.1".into(), activation: Activation::Hardswish },
                    HeadLayer::Dropout { key: "classifier.2".into() },
                    linear("classifier.3", hidden, spec.num_classes),
                ]
            }
        };
        Ok(Plan { spec: *spec, features, classifier })
    }

    /// Channels of the pooled features that enter the classifier.
    pub fn num_features(&self) -> usize {
        self.features.last().map_or(0, Stage::out_channels)
    }

    /// Every Linear of the classifier, in order.
    pub fn linears(&self) -> impl Iterator<Item = &LinearLayer> {
        self.classifier.iter().filter_map(|l| match l {
            HeadLayer::Linear(linear) => Some(linear),
            _ => None,
        })
    }

    /// The last Linear: the layer a classifier reset replaces (`classifier.1` or `classifier.3`).
    pub fn output_layer(&self) -> &LinearLayer {
        self.linears().last().expect("every plan ends in a Linear")
    }

    /// Whether `key` (a full tensor key) is the weight of a Linear layer: stored `[out, in]` by
    /// torch, which frameworks that keep `[in, out]` must transpose.
    pub fn is_linear_weight(&self, key: &str) -> bool {
        self.linears().any(|l| key.strip_prefix(l.key.as_str()) == Some(".weight"))
    }

    /// Whether `key` (a full tensor key) belongs to the classifier (what a frozen backbone
    /// leaves trainable).
    pub fn is_classifier_key(&self, key: &str) -> bool {
        self.classifier.iter().any(|l| {
            let prefix = match l {
                HeadLayer::Dropout { key } | HeadLayer::Activation { key, .. } => key,
                HeadLayer::Linear(linear) => &linear.key,
            };
            key.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

fn linear(key: &str, in_features: usize, out_features: usize) -> HeadLayer {
    HeadLayer::Linear(LinearLayer { key: key.into(), in_features, out_features })
}

/// `a.b.3` → `a.b.4`: the next child of the same `nn.Sequential`.
fn next_sibling(key: &str) -> String {
    let (parent, last) = key.rsplit_once('.').expect("a sequential child key has a parent");
    let index: usize = last.parse().expect("a sequential child key ends in its index");
    format!("{parent}.{}", index + 1)
}

/// The stem: a full 3x3/2 conv from RGB.
fn stem(out_channels: usize, activation: Activation) -> Stage {
    Stage::Conv(ConvLayer::conv_norm_act("features.0", 3, out_channels, 3, 2, false, Some(activation)))
}

/// torchvision's `use_res_connect`.
fn adds_input(in_channels: usize, out_channels: usize, stride: usize) -> bool {
    stride == 1 && in_channels == out_channels
}

/// V1 (not in torchvision; laid out in its style): `features.{i}.0` depthwise 3x3,
/// `features.{i}.1` pointwise, each conv → BN → act. No residuals.
fn v1_features(spec: &ModelSpec) -> Vec<Stage> {
    let act = spec.v1_activation;
    let mut channels = scale_channels(V1_STEM_CHANNELS, spec.width_mult);
    let mut features = vec![stem(channels, act)];
    for (i, &(out, stride)) in V1_BLOCKS.iter().enumerate() {
        let key = format!("features.{}", i + 1);
        let out = scale_channels(out, spec.width_mult);
        let layers = vec![
            BlockLayer::Conv(ConvLayer::conv_norm_act(
                &format!("{key}.0"),
                channels,
                channels,
                3,
                stride,
                true,
                Some(act),
            )),
            BlockLayer::Conv(ConvLayer::conv_norm_act(&format!("{key}.1"), channels, out, 1, 1, false, Some(act))),
        ];
        features.push(Stage::Block(Block { key, layers, residual: false }));
        channels = out;
    }
    features
}

/// V2 (torchvision's `mobilenet_v2`): inverted residuals `features.{i}.conv.{j}`, ReLU6
/// everywhere but the linear bottleneck.
fn v2_features(spec: &ModelSpec) -> Vec<Stage> {
    let width = spec.width_mult;
    let act = Some(Activation::Relu6);
    let mut channels = scale_channels(V2_STEM_CHANNELS, width);
    let mut features = vec![stem(channels, Activation::Relu6)];
    for [expansion, c, repeats, first_stride] in V2_INVERTED_RESIDUAL_SETTING {
        let out = scale_channels(c, width);
        for i in 0..repeats {
            let stride = if i == 0 { first_stride } else { 1 };
            let key = format!("features.{}", features.len());
            let p = format!("{key}.conv");
            // torchvision: hidden_dim = int(round(inp * expand_ratio)); the ratio is an integer.
            let hidden = channels * expansion;
            let mut layers = Vec::new();
            if expansion != 1 {
                layers.push(BlockLayer::Conv(ConvLayer::conv_norm_act(
                    &format!("{p}.0"),
                    channels,
                    hidden,
                    1,
                    1,
                    false,
                    act,
                )));
            }
            let j = layers.len();
            layers.push(BlockLayer::Conv(ConvLayer::conv_norm_act(
                &format!("{p}.{j}"),
                hidden,
                hidden,
                3,
                stride,
                true,
                act,
            )));
            // The linear bottleneck: conv and BN are separate children of `conv`, no activation.
            layers.push(BlockLayer::Conv(ConvLayer {
                conv_key: format!("{p}.{}", j + 1),
                norm_key: format!("{p}.{}", j + 2),
                in_channels: hidden,
                out_channels: out,
                kernel: 1,
                stride: 1,
                groups: 1,
                activation: None,
            }));
            features.push(Stage::Block(Block { key, layers, residual: adds_input(channels, out, stride) }));
            channels = out;
        }
    }
    // The last conv never shrinks below 1280 channels (torchvision: `1280 · max(1, width_mult)`).
    let last = make_divisible(V2_LAST_CHANNELS as f64 * width.max(1.0), 8);
    let key = format!("features.{}", features.len());
    features.push(Stage::Conv(ConvLayer::conv_norm_act(&key, channels, last, 1, 1, false, act)));
    features
}

/// V3 (torchvision's `mobilenet_v3_large` / `_small`): bottlenecks `features.{i}.block.{j}`
/// from the `bneck_conf` table, then a 1x1 conv to six times the last block's width.
fn v3_features(spec: &ModelSpec) -> Vec<Stage> {
    let table = if spec.arch == Arch::V3Small { &V3_SMALL_BNECK[..] } else { &V3_LARGE_BNECK[..] };
    let hs = Activation::Hardswish;
    let rows: Vec<_> = table.iter().map(|row| row.scaled(spec.width_mult)).collect();
    let mut features = vec![stem(rows[0].input_channels, hs)];
    for row in &rows {
        let key = format!("features.{}", features.len());
        let p = format!("{key}.block");
        let (inp, exp, out) = (row.input_channels, row.expanded_channels, row.out_channels);
        let act = Some(row.activation);
        let mut layers = Vec::new();
        if exp != inp {
            layers.push(BlockLayer::Conv(ConvLayer::conv_norm_act(&format!("{p}.0"), inp, exp, 1, 1, false, act)));
        }
        let j = layers.len();
        layers.push(BlockLayer::Conv(ConvLayer::conv_norm_act(
            &format!("{p}.{j}"),
            exp,
            exp,
            row.kernel,
            row.stride,
            true,
            act,
        )));
        if row.use_se {
            let key = format!("{p}.{}", layers.len());
            layers.push(BlockLayer::SqueezeExcite(SqueezeExcite {
                key,
                channels: exp,
                squeeze_channels: row.squeeze_channels(),
            }));
        }
        let j = layers.len();
        layers.push(BlockLayer::Conv(ConvLayer::conv_norm_act(&format!("{p}.{j}"), exp, out, 1, 1, false, None)));
        features.push(Stage::Block(Block { key, layers, residual: adds_input(inp, out, row.stride) }));
    }
    let last_in = rows[rows.len() - 1].out_channels;
    let key = format!("features.{}", features.len());
    features.push(Stage::Conv(ConvLayer::conv_norm_act(&key, last_in, 6 * last_in, 1, 1, false, Some(hs))));
    features
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_keys(plan: &Plan) -> Vec<String> {
        let mut keys = Vec::new();
        for stage in &plan.features {
            let layers: Vec<BlockLayer> = match stage {
                Stage::Conv(c) => vec![BlockLayer::Conv(c.clone())],
                Stage::Block(b) => b.layers.clone(),
            };
            for layer in layers {
                match layer {
                    BlockLayer::Conv(c) => keys.extend([c.conv_key, c.norm_key]),
                    BlockLayer::SqueezeExcite(se) => keys.push(se.key),
                }
            }
        }
        keys.extend(plan.linears().map(|l| l.key.clone()));
        keys
    }

    #[test]
    fn keys_follow_torchvision() {
        let v2 = Plan::new(&ModelSpec::new(Arch::V2)).unwrap();
        let keys = all_keys(&v2);
        // t = 1 block has no expand conv: its depthwise conv is `conv.0`, projection `conv.1`/`conv.2`.
        assert_eq!(
            &keys[2..6],
            ["features.1.conv.0.0", "features.1.conv.0.1", "features.1.conv.1", "features.1.conv.2"]
        );
        assert_eq!(keys.last().unwrap(), "classifier.1");
        assert!(keys.contains(&"features.18.0".to_string()));
        let v3 = Plan::new(&ModelSpec::new(Arch::V3Small)).unwrap();
        let keys = all_keys(&v3);
        assert!(keys.contains(&"features.1.block.1".to_string()), "first V3-Small block: depthwise, SE at 1");
        assert!(keys.contains(&"features.12.0".to_string()));
        assert_eq!(v3.output_layer().key, "classifier.3");
        assert!(v3.is_linear_weight("classifier.0.weight") && !v3.is_linear_weight("classifier.0.bias"));
        assert!(v3.is_classifier_key("classifier.3.bias") && !v3.is_classifier_key("features.1.block.0.0.weight"));
    }

    #[test]
    fn widths_follow_torchvision() {
        let v2 = Plan::new(&ModelSpec::new(Arch::V2).with_width_mult(0.5)).unwrap();
        assert_eq!(v2.num_features(), 1280, "V2 keeps its last conv at 1280 below width 1");
        assert_eq!(v2.features.len(), 19);
        let large = Plan::new(&ModelSpec::new(Arch::V3Large).with_width_mult(0.5)).unwrap();
        assert_eq!(large.num_features(), 6 * 80);
        assert_eq!(large.linears().next().unwrap().out_features, 640, "V3 scales its hidden width");
        let v1 = Plan::new(&ModelSpec::new(Arch::V1)).unwrap();
        assert_eq!(v1.num_features(), 1024);
        let residuals = |p: &Plan| p.features.iter().filter(|s| matches!(s, Stage::Block(b) if b.residual)).count();
        assert_eq!((residuals(&v1), residuals(&v2)), (0, 10));
        assert_eq!(residuals(&Plan::new(&ModelSpec::new(Arch::V3Small)).unwrap()), 6);
    }

    #[test]
    fn invalid_specs_are_rejected() {
        let err = Plan::new(&ModelSpec::new(Arch::V1).with_num_classes(0)).unwrap_err();
        assert_eq!(err.to_string(), "invalid model configuration: num_classes must be at least 1");
        assert!(Plan::new(&ModelSpec::new(Arch::V2).with_width_mult(0.0)).is_err());
    }
}
