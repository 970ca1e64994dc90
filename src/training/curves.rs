//! Line charts as PNG: training curves per run, and comparisons for the docs.
//!
//! Drawn with `imageproc` and an embedded DejaVu Sans (assets/fonts, free licence) rather than
//! plotters, whose text rendering in 0.3 needs the C libraries freetype and fontconfig.

use std::path::Path;

use ab_glyph::{FontRef, PxScale};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_line_segment_mut, draw_text_mut, text_size};
use imageproc::rect::Rect;

use crate::error::{Error, Result};
use crate::training::metrics::EpochMetrics;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Distinct, colour-blind-friendly line colours (Okabe-Ito).
pub const COLORS: [[u8; 3]; 6] =
    [[0, 114, 178], [213, 94, 0], [0, 158, 115], [204, 121, 167], [230, 159, 0], [86, 180, 233]];

/// One line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: [u8; 3],
    pub points: Vec<(f64, f64)>,
}

/// One plot area with its own y axis.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
    /// Plot y on a log10 scale (for losses that span decades).
    pub log_y: bool,
}

/// "Nice" tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten.
fn ticks(lo: f64, hi: f64, target: usize, integer: bool) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= target as f64).unwrap_or(10.0 * mag);
    let step = if integer { step.max(1.0) } else { step };
    let start = (lo / step).ceil() * step;
    (0..).map(|i| start + i as f64 * step).take_while(|v| *v <= hi + step * 1e-9).collect()
}

/// Ticks for a log10 axis spanning [lo, hi] (in log10 units): 1, 2, 5 times powers of ten,
/// thinned to 1 and 10^k when there are many decades.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for k in (lo.floor() as i32 - 1)..=(hi.ceil() as i32) {
        let mults: &[f64] = if hi - lo > 3.0 { &[1.0] } else { &[1.0, 2.0, 5.0] };
        for m in mults {
            let v = (m * 10f64.powi(k)).log10();
            if v >= lo && v <= hi {
                out.push(v);
            }
        }
    }
    out
}

fn label(v: f64, log: bool) -> String {
    let v = if log { 10f64.powf(v) } else { v };
    if v == v.round() && v.abs() < 1e6 {
        return format!("{v:.0}");
    }
    // Up to three decimals, trailing zeros dropped: 0.8, 0.45, 0.125.
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn draw_panel(img: &mut RgbImage, font: &FontRef, panel: &Panel, x0: i32, y0: i32, w: i32, h: i32) {
    let black = Rgb([30, 30, 30]);
    let grid = Rgb([225, 225, 225]);
    let small = PxScale::from(14.0);
    let title_scale = PxScale::from(17.0);
    let (ml, mr, mt, mb) = (62, 12, 30, 44);
    let (px0, py0, pw, ph) = (x0 + ml, y0 + mt, w - ml - mr, h - mt - mb);
    draw_text_mut(img, black, px0, y0 + 6, title_scale, font, &panel.title);

    let ty = |v: f64| if panel.log_y { v.max(1e-12).log10() } else { v };
    let points: Vec<(f64, f64)> = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| p.1.is_finite())
        .map(|(x, y)| (x, ty(y)))
        .collect();
    if points.is_empty() {
        return;
    }
    let (mut xmin, mut xmax) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut ymin, mut ymax) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if xmax - xmin < 1e-9 {
        xmin -= 0.5;
        xmax += 0.5;
    }
    let pad = ((ymax - ymin) * 0.06).max(1e-6);
    ymin -= pad;
    ymax += pad;
    let sx = |x: f64| px0 as f32 + ((x - xmin) / (xmax - xmin)) as f32 * pw as f32;
    let sy = |y: f64| (py0 + ph) as f32 - ((y - ymin) / (ymax - ymin)) as f32 * ph as f32;

    let y_ticks = if panel.log_y { log_ticks(ymin, ymax) } else { ticks(ymin, ymax, 6, false) };
    for t in y_ticks {
        let y = sy(t);
        draw_line_segment_mut(img, (px0 as f32, y), ((px0 + pw) as f32, y), grid);
        let text = label(t, panel.log_y);
        let (tw, th) = text_size(small, font, &text);
        draw_text_mut(img, black, px0 - 6 - tw as i32, y as i32 - th as i32 / 2 - 2, small, font, &text);
    }
    for t in ticks(xmin, xmax, 8, true) {
        let x = sx(t);
        draw_line_segment_mut(img, (x, py0 as f32), (x, (py0 + ph) as f32), grid);
        let text = label(t, false);
        let (tw, _) = text_size(small, font, &text);
        draw_text_mut(img, black, x as i32 - tw as i32 / 2, py0 + ph + 6, small, font, &text);
    }
    let (xw, _) = text_size(small, font, &panel.x_label);
    draw_text_mut(img, black, px0 + pw / 2 - xw as i32 / 2, py0 + ph + 24, small, font, &panel.x_label);
    // Axes.
    draw_line_segment_mut(img, (px0 as f32, py0 as f32), (px0 as f32, (py0 + ph) as f32), black);
    draw_line_segment_mut(img, (px0 as f32, (py0 + ph) as f32), ((px0 + pw) as f32, (py0 + ph) as f32), black);

    for series in &panel.series {
        let color = Rgb(series.color);
        let pts: Vec<(f32, f32)> =
            series.points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| (sx(x), sy(ty(y)))).collect();
        for pair in pts.windows(2) {
            // Three offset strokes make a 2-3 px line.
            for (dx, dy) in [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0)] {
                draw_line_segment_mut(img, (pair[0].0 + dx, pair[0].1 + dy), (pair[1].0 + dx, pair[1].1 + dy), color);
            }
        }
        for &(x, y) in &pts {
            draw_filled_rect_mut(img, Rect::at(x as i32 - 2, y as i32 - 2).of_size(5, 5), color);
        }
    }
    // Legend inside the plot, in the right-hand corner (top or bottom) that the lines use least.
    let legend_h = 20 * panel.series.len() as i32 + 6;
    let crowded = |top: bool| {
        points
            .iter()
            .filter(|&&(x, y)| {
                let (px, py) = (sx(x), sy(y));
                px > (px0 + pw / 2) as f32
                    && if top { py < (py0 + legend_h) as f32 } else { py > (py0 + ph - legend_h) as f32 }
            })
            .count()
    };
    let mut ly = if crowded(true) <= crowded(false) { py0 + 6 } else { py0 + ph - legend_h };
    for series in &panel.series {
        let (tw, _) = text_size(small, font, &series.name);
        let lx = px0 + pw - tw as i32 - 34;
        draw_filled_rect_mut(img, Rect::at(lx - 4, ly - 2).of_size(tw + 36, 20), Rgb([255, 255, 255]));
        draw_filled_rect_mut(img, Rect::at(lx, ly + 7).of_size(20, 3), Rgb(series.color));
        draw_text_mut(img, black, lx + 26, ly, small, font, &series.name);
        ly += 20;
    }
}

/// Draws `panels` side by side into a PNG at `path` (written atomically).
pub fn line_chart(panels: &[Panel], title: &str, path: &Path) -> Result<()> {
    let font = FontRef::try_from_slice(FONT).expect("embedded font parses");
    let (pw, h) = (520i32, 400i32);
    let w = pw * panels.len().max(1) as i32;
    let mut img = RgbImage::from_pixel(w as u32, (h + 30) as u32, Rgb([255, 255, 255]));
    draw_text_mut(&mut img, Rgb([0, 0, 0]), 12, 6, PxScale::from(19.0), &font, title);
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut img, &font, panel, i as i32 * pw, 30, pw, h);
    }
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).map_err(|e| Error::file(path, e))?;
    crate::io::tensor_io::write_atomic(path, &bytes)
}

/// The per-run chart: losses and top-1 accuracy per epoch (train, val, EMA val).
pub fn training_curves(rows: &[EpochMetrics], path: &Path, title: &str) -> Result<()> {
    let series = |name: &str, color: usize, f: &dyn Fn(&EpochMetrics) -> Option<f64>| Series {
        name: name.to_string(),
        color: COLORS[color],
        points: rows.iter().filter_map(|r| f(r).map(|v| ((r.epoch + 1) as f64, v))).collect(),
    };
    let has_ema = rows.iter().any(|r| r.ema_val_top1.is_some());
    let mut loss = vec![series("train", 0, &|r| Some(r.train_loss)), series("val", 1, &|r| Some(r.val_loss))];
    let mut acc =
        vec![series("train", 0, &|r| Some(100.0 * r.train_top1)), series("val", 1, &|r| Some(100.0 * r.val_top1))];
    if has_ema {
        loss.push(series("EMA val", 2, &|r| r.ema_val_loss));
        acc.push(series("EMA val", 2, &|r| r.ema_val_top1.map(|v| 100.0 * v)));
    }
    let panels = [
        Panel { title: "loss".into(), x_label: "epoch".into(), series: loss, log_y: false },
        Panel { title: "top-1 accuracy (%)".into(), x_label: "epoch".into(), series: acc, log_y: false },
    ];
    line_chart(&panels, title, path)
}
