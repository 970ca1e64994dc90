//! The papers' architecture tables, before width scaling. [`super::plan`] is their only reader:
//! everything else builds from the resolved [`super::Plan`].

use super::{make_divisible, scale_channels, Activation};

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
    bneck(16, 3, 16, 16, true, RE, 2),  // C1
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
