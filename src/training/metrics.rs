//! Per-epoch metrics: one row of `metrics.csv` each, written atomically every epoch.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One row of `metrics.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_top1: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub ema_val_loss: Option<f64>,
    pub ema_val_top1: Option<f64>,
    /// Loss on a training batch in train mode (batch statistics) and in eval mode (running
    /// statistics): the BatchNorm-lag probe.
    pub probe_train_mode_loss: f64,
    pub probe_eval_mode_loss: f64,
    pub lr: f64,
    pub seconds: f64,
    pub images_per_s: f64,
}

const CSV_HEADER: &str = "epoch,train_loss,train_top1,val_loss,val_top1,val_top5,ema_val_loss,ema_val_top1,probe_train_mode_loss,probe_eval_mode_loss,lr,seconds,images_per_s";

impl EpochMetrics {
    pub(crate) fn csv(&self) -> String {
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{},{},{:.6},{:.6},{:.8},{:.2},{:.1}",
            self.epoch,
            self.train_loss,
            self.train_top1,
            self.val_loss,
            self.val_top1,
            self.val_top5,
            opt(self.ema_val_loss),
            opt(self.ema_val_top1),
            self.probe_train_mode_loss,
            self.probe_eval_mode_loss,
            self.lr,
            self.seconds,
            self.images_per_s
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 13 {
            return None;
        }
        let n = |i: usize| f[i].parse::<f64>().ok();
        let o = |i: usize| if f[i].is_empty() { Some(None) } else { f[i].parse::<f64>().ok().map(Some) };
        Some(Self {
            epoch: f[0].parse().ok()?,
            train_loss: n(1)?,
            train_top1: n(2)?,
            val_loss: n(3)?,
            val_top1: n(4)?,
            val_top5: n(5)?,
            ema_val_loss: o(6)?,
            ema_val_top1: o(7)?,
            probe_train_mode_loss: n(8)?,
            probe_eval_mode_loss: n(9)?,
            lr: n(10)?,
            seconds: n(11)?,
            images_per_s: n(12)?,
        })
    }
}

/// Reads `metrics.csv`. A missing file is an error naming it; so is a row that does not parse
/// (naming its line), and a header other than ours.
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { path: path.to_path_buf() },
        _ => Error::file(path, e),
    })?;
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(CSV_HEADER) {
        return Err(Error::file(path, "line 1: not the metrics.csv header this program writes"));
    }
    lines
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            EpochMetrics::parse(line.trim_end()).ok_or_else(|| {
                Error::file(
                    path,
                    format!("line {}: corrupt row (expected 13 comma-separated numbers): {line:?}", i + 2),
                )
            })
        })
        .collect()
}

pub(crate) fn write_metrics(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for row in rows {
        text.push_str(&row.csv());
        text.push('\n');
    }
    crate::io::tensor_io::write_atomic(path, text.as_bytes())
}
