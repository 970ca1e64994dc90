//! The four architectures as data: the papers' tables, shared with the `mobilenet` crate's burn
//! models so that both build exactly the same network.

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// The four architectures, named as torchvision names its constructors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "mobilenet_v1")]
    V1,
    #[serde(rename = "mobilenet_v2")]
    V2,
    #[serde(rename = "mobilenet_v3_large")]
    V3Large,
    #[serde(rename = "mobilenet_v3_small")]
    V3Small,
}

impl Arch {
    pub const ALL: [Arch; 4] = [Arch::V1, Arch::V2, Arch::V3Large, Arch::V3Small];

    pub fn name(&self) -> &'static str {
        match self {
            Arch::V1 => "mobilenet_v1",
            Arch::V2 => "mobilenet_v2",
            Arch::V3Large => "mobilenet_v3_large",
            Arch::V3Small => "mobilenet_v3_small",
        }
    }

    /// Accepts `mobilenet_v3_small`, `v3_small`, `v3-small`, any case.
    pub fn parse(s: &str) -> Option<Arch> {
        let key = s.trim().to_ascii_lowercase().replace('-', "_");
        Arch::ALL.into_iter().find(|a| a.name() == key || a.name().trim_start_matches("mobilenet_") == key)
    }

    /// BatchNorm eps: PyTorch's for V1/V2, TensorFlow's for V3 (as torchvision).
    pub fn default_norm_eps(&self) -> f64 {
        match self {
            Arch::V1 | Arch::V2 => 1e-5,
            Arch::V3Large | Arch::V3Small => 1e-3,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        Arch::parse(s).ok_or_else(|| EngineError::UnknownModel(s.to_string()))
    }
}

/// The parameter-free activations of the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// max(x, 0): V1 (paper), V2-V3 "RE" blocks.
    Relu,
    /// min(max(x, 0), 6): V2 everywhere, V1 in TF-slim and the write-up.
    Relu6,
    /// x · ReLU6(x + 3) / 6: V3 "HS" blocks, stem, last conv, classifier.
    Hardswish,
    /// ReLU6(x + 3) / 6: the gate of V3's squeeze-excite.
    Hardsigmoid,
}

/// torchvision's `_make_divisible`: round `value` to the nearest multiple of `divisor`, never
/// below `divisor` and never more than 10% below `value`.
pub fn make_divisible(value: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_value = ((value + d / 2.0) as usize / divisor * divisor).max(divisor);
    if (new_value as f64) < 0.9 * value {
        new_value += divisor;
    }
    new_value
}

/// `_make_divisible(c · width_mult, 8)`: how every family scales a channel count.
pub fn scale_channels(channels: usize, width_mult: f64) -> usize {
    make_divisible(channels as f64 * width_mult, 8)
}

// ---------------------------------------------------------------------------------------------
// MobileNetV1 (Howard et al., 2017, Table 1)

/// The stem is a full 3x3/2 conv to 32 channels.
pub const V1_STEM_CHANNELS: usize = 32;
/// (output channels, stride) of each depthwise separable block after the stem.
pub const V1_BLOCKS: [(usize, usize); 13] = [
    (64, 1),
    (128, 2), // 112 -> 56
    (128, 1),
    (256, 2), // 56 -> 28
    (256, 1),
    (512, 2), // 28 -> 14
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2), // 14 -> 7
    (1024, 1),
];

// ---------------------------------------------------------------------------------------------
// MobileNetV2 (Sandler et al., 2018, Table 2)

/// Expansion t, output channels c, repeats n, first stride s.
pub const V2_INVERTED_RESIDUAL_SETTING: [[usize; 4]; 7] = [
    // t, c, n, s
    [1, 16, 1, 1],
    [6, 24, 2, 2], // 112 -> 56
    [6, 32, 3, 2], // 56 -> 28
    [6, 64, 4, 2], // 28 -> 14
    [6, 96, 3, 1],
    [6, 160, 3, 2], // 14 -> 7
    [6, 320, 1, 1],
];
pub const V2_STEM_CHANNELS: usize = 32;
/// The last conv never shrinks below this (torchvision: `1280 · max(1, width_mult)`).
pub const V2_LAST_CHANNELS: usize = 1280;

// ---------------------------------------------------------------------------------------------
// MobileNetV3 (Howard et al., 2019, Tables 1 and 2)

/// One row of V3's `bneck_conf` tables, before width scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BneckConfig {
    pub input_channels: usize,
    pub kernel: usize,
    pub expanded_channels: usize,
    pub out_channels: usize,
    pub use_se: bool,
    pub activation: Activation,
    pub stride: usize,
}

impl BneckConfig {
    /// torchvision's `InvertedResidualConfig`: every channel count through `_make_divisible`.
    pub fn scaled(&self, width_mult: f64) -> Self {
        Self {
            input_channels: scale_channels(self.input_channels, width_mult),
            expanded_channels: scale_channels(self.expanded_channels, width_mult),
            out_channels: scale_channels(self.out_channels, width_mult),
            ..*self
        }
    }

    /// torchvision's squeeze width: `_make_divisible(expanded // 4, 8)`.
    pub fn squeeze_channels(&self) -> usize {
        make_divisible((self.expanded_channels / 4) as f64, 8)
    }
}

const RE: Activation = Activation::Relu;
const HS: Activation = Activation::Hardswish;

/// One `bneck_conf` row: input, kernel, expanded, output, SE, activation, stride.
const fn bneck(
    input_channels: usize,
    kernel: usize,
    expanded_channels: usize,
    out_channels: usize,
    use_se: bool,
    activation: Activation,
    stride: usize,
) -> BneckConfig {
    BneckConfig { input_channels, kernel, expanded_channels, out_channels, use_se, activation, stride }
}

/// The paper's Table 1 (MobileNetV3-Large).
pub const V3_LARGE_BNECK: [BneckConfig; 15] = [
    bneck(16, 3, 16, 16, false, RE, 1),
    bneck(16, 3, 64, 24, false, RE, 2), // C1
    bneck(24, 3, 72, 24, false, RE, 1),
    bneck(24, 5, 72, 40, true, RE, 2), // C2
    bneck(40, 5, 120, 40, true, RE, 1),
    bneck(40, 5, 120, 40, true, RE, 1),
    bneck(40, 3, 240, 80, false, HS, 2), // C3
    bneck(80, 3, 200, 80, false, HS, 1),
    bneck(80, 3, 184, 80, false, HS, 1),
    bneck(80, 3, 184, 80, false, HS, 1),
    bneck(80, 3, 480, 112, true, HS, 1),
    bneck(112, 3, 672, 112, true, HS, 1),
    bneck(112, 5, 672, 160, true, HS, 2), // C4
    bneck(160, 5, 960, 160, true, HS, 1),
    bneck(160, 5, 960, 160, true, HS, 1),
];
/// Hidden width of the Large classifier (before width scaling).
pub const V3_LARGE_LAST_CHANNELS: usize = 1280; // C5

/// The paper's Table 2 (MobileNetV3-Small).
pub const V3_SMALL_BNECK: [BneckConfig; 11] = [
    bneck(16, 3, 16, 16, true, RE, 2), // C1
    bneck(16, 3, 72, 24, false, RE, 2), // C2
    bneck(24, 3, 88, 24, false, RE, 1),
    bneck(24, 5, 96, 40, true, HS, 2), // C3
    bneck(40, 5, 240, 40, true, HS, 1),
    bneck(40, 5, 240, 40, true, HS, 1),
    bneck(40, 5, 120, 48, true, HS, 1),
    bneck(48, 5, 144, 48, true, HS, 1),
    bneck(48, 5, 288, 96, true, HS, 2), // C4
    bneck(96, 5, 576, 96, true, HS, 1),
    bneck(96, 5, 576, 96, true, HS, 1),
];
/// Hidden width of the Small classifier (before width scaling).
pub const V3_SMALL_LAST_CHANNELS: usize = 1024; // C5

/// What the engine needs to know about a trained model besides its tensors. Reads the
/// `mobilenet.config` metadata the `mobilenet` tool writes (extra fields are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub arch: Arch,
    pub num_classes: usize,
    pub width_mult: f64,
    pub norm_eps: f64,
    /// V1 only: ReLU (the paper) or ReLU6 (TF-slim).
    #[serde(default = "default_v1_activation")]
    pub v1_activation: Activation,
}

fn default_v1_activation() -> Activation {
    Activation::Relu
}

impl ModelSpec {
    /// torchvision's defaults: 1000 classes, width 1.0.
    pub fn new(arch: Arch) -> Self {
        Self { arch, num_classes: 1000, width_mult: 1.0, norm_eps: arch.default_norm_eps(), v1_activation: Activation::Relu }
    }

    pub fn with_num_classes(mut self, num_classes: usize) -> Self {
        self.num_classes = num_classes;
        self
    }

    pub fn with_width_mult(mut self, width_mult: f64) -> Self {
        self.width_mult = width_mult;
        self
    }
}
