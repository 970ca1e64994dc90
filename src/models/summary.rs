//! A torchsummary-style table: each layer's path (its torchvision key prefix), type, output
//! shape, parameter count and multiply-accumulates, walked from the model's resolved plan (so
//! it needs no weights, and describes exactly what the burn models and the engine build).
//!
//! MACs count conv and linear layers as the papers do (BatchNorm, activations, pooling and the
//! SE gate's multiply are left out); parameters count trainable tensors only (BatchNorm running
//! statistics are buffers, as in torchsummary).

use mobilenet_engine::arch::{Activation, BlockLayer, ConvLayer, HeadLayer, LinearLayer, Plan, SqueezeExcite, Stage};

/// One line of the summary.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LayerRow {
    pub path: String,
    pub kind: String,
    /// Output shape without the batch dimension.
    pub output_shape: Vec<usize>,
    pub params: usize,
    pub macs: u64,
}

/// What one step of a forward pass does, as [`walk`] reports it.
#[derive(Debug, Clone, Copy)]
pub enum LayerOp<'a> {
    Conv(&'a ConvLayer),
    /// The BatchNorm after a conv.
    BatchNorm(&'a ConvLayer),
    Activation(Activation),
    SqueezeExcite(&'a SqueezeExcite),
    /// A block adding its input to its output.
    Residual,
    /// Global average pooling (`avgpool`).
    Pool,
    Dropout,
    Linear(&'a LinearLayer),
}

/// One step of the walk: a layer, its key, and its input and output shapes (`[C, H, W]`, or
/// `[C]` after the pool; no batch dimension).
#[derive(Debug, Clone)]
pub struct LayerStep<'a> {
    pub path: String,
    pub op: LayerOp<'a>,
    pub input: Vec<usize>,
    pub output: Vec<usize>,
}

/// Every step of `plan`'s forward pass on a `[3, size, size]` input, in order: what the
/// summary table prints and what the per-op training profile times.
pub fn walk(plan: &Plan, image_size: usize) -> Vec<LayerStep<'_>> {
    let mut walker = Walker { steps: Vec::new(), shape: vec![3, image_size, image_size] };
    for stage in &plan.features {
        match stage {
            Stage::Conv(c) => walker.conv(c),
            Stage::Block(block) => {
                let input = walker.shape.clone();
                for layer in &block.layers {
                    match layer {
                        BlockLayer::Conv(c) => walker.conv(c),
                        BlockLayer::SqueezeExcite(se) => walker.same_shape(se.key.clone(), LayerOp::SqueezeExcite(se)),
                    }
                }
                if block.residual {
                    debug_assert_eq!(input, walker.shape);
                    walker.same_shape(format!("{} (+input)", block.key), LayerOp::Residual);
                }
            }
        }
    }
    let pooled = vec![walker.shape[0]];
    walker.push("avgpool".into(), LayerOp::Pool, pooled);
    for layer in &plan.classifier {
        match layer {
            HeadLayer::Dropout { key } => walker.same_shape(key.clone(), LayerOp::Dropout),
            HeadLayer::Activation { key, activation } => {
                walker.same_shape(key.clone(), LayerOp::Activation(*activation))
            }
            HeadLayer::Linear(linear) => {
                walker.push(linear.key.clone(), LayerOp::Linear(linear), vec![linear.out_features])
            }
        }
    }
    walker.steps
}

/// Follows the activation shape through [`walk`].
struct Walker<'a> {
    steps: Vec<LayerStep<'a>>,
    shape: Vec<usize>,
}

impl<'a> Walker<'a> {
    fn push(&mut self, path: String, op: LayerOp<'a>, output: Vec<usize>) {
        let input = std::mem::replace(&mut self.shape, output.clone());
        self.steps.push(LayerStep { path, op, input, output });
    }

    fn same_shape(&mut self, path: String, op: LayerOp<'a>) {
        self.push(path, op, self.shape.clone());
    }

    /// conv → BatchNorm → activation.
    fn conv(&mut self, c: &'a ConvLayer) {
        let out = vec![c.out_channels, c.output_size(self.shape[1]), c.output_size(self.shape[2])];
        self.push(c.conv_key.clone(), LayerOp::Conv(c), out);
        self.same_shape(c.norm_key.clone(), LayerOp::BatchNorm(c));
        if let (Some(act), Some(key)) = (c.activation, c.activation_key()) {
            self.same_shape(key, LayerOp::Activation(act));
        }
    }
}

impl LayerOp<'_> {
    /// torch's class name.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerOp::Conv(_) => "Conv2d",
            LayerOp::BatchNorm(_) => "BatchNorm2d",
            LayerOp::Activation(act) => act.torch_name(),
            LayerOp::SqueezeExcite(_) => "SqueezeExcitation",
            LayerOp::Residual => "Add",
            LayerOp::Pool => "AdaptiveAvgPool2d",
            LayerOp::Dropout => "Dropout",
            LayerOp::Linear(_) => "Linear",
        }
    }

    /// Trainable parameters (BatchNorm's running statistics are buffers, as in torchsummary).
    pub fn params(&self) -> usize {
        match self {
            LayerOp::Conv(c) => c.weight_shape().iter().product(),
            LayerOp::BatchNorm(c) => 2 * c.out_channels,
            LayerOp::SqueezeExcite(se) => 2 * se.squeeze_channels * se.channels + se.squeeze_channels + se.channels,
            LayerOp::Linear(l) => l.in_features * l.out_features + l.out_features,
            _ => 0,
        }
    }

    /// Multiply-accumulates for an output of `output` (`[C, H, W]` or `[C]`), counted as the
    /// papers count them: convs, the SE convs and Linears.
    pub fn macs(&self, output: &[usize]) -> u64 {
        let area = || output.get(1..).map_or(1, |hw| hw.iter().product::<usize>());
        (match self {
            LayerOp::Conv(c) => area() * c.weight_shape().iter().product::<usize>(),
            LayerOp::SqueezeExcite(se) => 2 * se.squeeze_channels * se.channels,
            LayerOp::Linear(l) => l.in_features * l.out_features,
            _ => 0,
        }) as u64
    }
}

/// The layer table of a model at one input size.
#[derive(Debug, Clone)]
pub struct Summary {
    pub rows: Vec<LayerRow>,
}

impl Summary {
    /// `plan` on a `[3, image_size, image_size]` input.
    pub fn new(plan: &Plan, image_size: usize) -> Self {
        let rows = walk(plan, image_size)
            .into_iter()
            .map(|step| LayerRow {
                kind: step.op.kind().to_string(),
                params: step.op.params(),
                macs: step.op.macs(&step.output),
                output_shape: step.output,
                path: step.path,
            })
            .collect();
        Self { rows }
    }

    pub fn total_params(&self) -> usize {
        self.rows.iter().map(|r| r.params).sum()
    }

    pub fn total_macs(&self) -> u64 {
        self.rows.iter().map(|r| r.macs).sum()
    }

    /// The table as text, with `params:` and `MACs:` total lines at the end.
    pub fn render(&self, title: &str) -> String {
        use std::fmt::Write;
        let shape = |s: &[usize]| {
            let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
            format!("[-1, {}]", dims.join(", "))
        };
        let path_w = self.rows.iter().map(|r| r.path.len()).max().unwrap_or(5).max(5);
        let kind_w = self.rows.iter().map(|r| r.kind.len()).max().unwrap_or(4).max(4);
        let shape_w = self.rows.iter().map(|r| shape(&r.output_shape).len()).max().unwrap_or(12).max(12);
        let width = path_w + kind_w + shape_w + 12 + 16 + 8;
        let mut out = String::new();
        let rule = "-".repeat(width);
        let _ = writeln!(out, "{title}\n{rule}");
        let _ = writeln!(
            out,
            "{:<path_w$}  {:<kind_w$}  {:>shape_w$}  {:>12}  {:>14}",
            "Layer", "Type", "Output Shape", "Param #", "MACs"
        );
        let _ = writeln!(out, "{}", "=".repeat(width));
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<path_w$}  {:<kind_w$}  {:>shape_w$}  {:>12}  {:>14}",
                r.path,
                r.kind,
                shape(&r.output_shape),
                group_thousands(r.params as u64),
                group_thousands(r.macs)
            );
        }
        let _ = writeln!(out, "{}", "=".repeat(width));
        let _ = writeln!(out, "Total params: {}", group_thousands(self.total_params() as u64));
        let _ = writeln!(
            out,
            "Total MACs: {} ({:.1}M)",
            group_thousands(self.total_macs()),
            self.total_macs() as f64 / 1e6
        );
        let _ = writeln!(out, "{rule}");
        let _ = writeln!(out, "params: {}", self.total_params());
        let _ = writeln!(out, "MACs: {}", self.total_macs());
        out
    }
}

/// 1234567 -> "1,234,567".
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
