//! Every `train` option on the CPU trainer (`--train-backend engine`) against burn: the same
//! run on both step paths gives the same losses, validation figures, weights and EMA within
//! float rounding (the two sum in different orders), and frozen tensors stay bit-identical on the
//! new path. Small runs: V3-Small x0.25 at 32x32, one epoch of 8 steps, no dropout (the paths
//! draw different masks). Longer runs drift apart by float rounding that train-mode BatchNorm
//! amplifies (a channel with a small batch variance scales its input's rounding by 1/σ): the
//! losses still agree to ~1e-4 after 32 steps, but single tensors no longer do; with frozen
//! BatchNorm the two paths agree to 1e-6.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::train::small_idx;
use mobilenet::io::tensor_io::{read_tensors, HostTensor};
use mobilenet::training::metrics::{read_metrics, EpochMetrics};

struct Run {
    metrics: Vec<EpochMetrics>,
    weights: HashMap<String, HostTensor>,
    ema: Option<HashMap<String, HostTensor>>,
    log: String,
}

fn train(data: &Path, out: PathBuf, backend: &str, extra: &[&str]) -> Run {
    let mut args: Vec<String> = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--model",
        "v3_small",
        "--width-mult",
        "0.25",
        "--batch-size",
        "32",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--seed",
        "3",
        "--dropout",
        "0",
        "--train-backend",
        backend,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let out_cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mobilenet")).args(&args).output().unwrap();
    let log = String::from_utf8_lossy(&out_cmd.stderr).to_string();
    assert!(out_cmd.status.success(), "mobilenet {args:?} failed:\n{log}");
    let ema = out.join("ema.safetensors");
    Run {
        metrics: read_metrics(&out.join("metrics.csv")).unwrap(),
        weights: read_tensors(&out.join("last.safetensors")).unwrap(),
        ema: ema.exists().then(|| read_tensors(&ema).unwrap()),
        log,
    }
}

/// The largest difference of any tensor between two runs, relative to that tensor's largest
/// value (at least 1e-3), or with `global` to the largest value in the model. (With Adam and
/// RMSProp, which divide by the gradient's running magnitude, a parameter whose gradient is zero
/// in exact arithmetic, e.g. a BatchNorm bias followed by a conv and another BatchNorm, moves by
/// about ±lr per step in the direction of its float noise on either path: only a model-wide
/// scale measures those.)
fn worst_rel(a: &HashMap<String, HostTensor>, b: &HashMap<String, HostTensor>, global: bool) -> (f32, String) {
    assert_eq!(a.len(), b.len());
    let model_scale = a.values().map(|t| max_abs(&t.data)).fold(0.0f32, f32::max);
    let mut worst = (0.0f32, String::new());
    for (key, ta) in a {
        let scale = if global { model_scale } else { max_abs(&ta.data).max(1e-3) };
        let e = max_abs_diff(&ta.data, &b[key].data) / scale;
        if e > worst.0 {
            worst = (e, key.clone());
        }
    }
    worst
}

/// The f32 tensors of a safetensors file (a torchvision state dict also holds i64 counters).
fn f32_tensors(path: &Path) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() == safetensors::Dtype::F32)
        .map(|(k, v)| (k, v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
        .collect()
}

fn close(what: &str, a: f64, b: f64, tol: f64) {
    assert!((a - b).abs() <= tol * a.abs().max(1e-3), "{what}: burn {a}, CPU trainer {b}");
}

#[test]
fn every_option_gives_the_burn_result_on_the_cpu_trainer() {
    let dir = temp_dir("train-paths");
    let data = dir.join("data");
    small_idx(&data, 256, 64);
    // A torchvision state dict with 5 classes (the data has 10: the last classifier layer is
    // replaced).
    let init_path = fixture("tiny_v3_small.safetensors");
    let init = f32_tensors(&init_path);
    let cases: &[(&str, &[&str])] = &[
        ("sgd", &["--lr", "0.02"]),
        ("ema", &["--lr", "0.02", "--ema-decay", "0.9"]),
        ("clip", &["--lr", "0.02", "--clip-grad-norm", "0.05"]),
        ("adamw", &["--opt", "adamw", "--lr", "0.003"]),
        ("rmsproptf", &["--opt", "rmsproptf", "--lr", "0.003"]),
        ("recalibrate", &["--lr", "0.02", "--recalibrate-bn", "3"]),
        ("freeze-bn", &["--lr", "0.02", "--freeze-bn", "--init", init_path.to_str().unwrap()]),
    ];
    let mut baseline: Option<HashMap<String, HostTensor>> = None;
    for (name, extra) in cases {
        let burn = train(&data, dir.join(format!("{name}-burn")), "burn", extra);
        let cpu = train(&data, dir.join(format!("{name}-engine")), "engine", extra);
        assert!(cpu.log.contains("steps on CPU trainer"), "{name}: {}", cpu.log);
        let (a, b) = (&burn.metrics[0], &cpu.metrics[0]);
        close(&format!("{name}: train loss"), a.train_loss, b.train_loss, 1e-3);
        close(&format!("{name}: val loss"), a.val_loss, b.val_loss, 2e-3);
        close(&format!("{name}: probe (train mode)"), a.probe_train_mode_loss, b.probe_train_mode_loss, 2e-3);
        close(&format!("{name}: probe (eval mode)"), a.probe_eval_mode_loss, b.probe_eval_mode_loss, 2e-3);
        let adaptive = extra.contains(&"--opt");
        let (err, key) = worst_rel(&burn.weights, &cpu.weights, adaptive);
        eprintln!(
            "{name}: train loss {:.6} / {:.6}, worst weight difference {err:.1e} ({key})",
            a.train_loss, b.train_loss
        );
        assert!(err <= 1e-2, "{name}: {key} differs by {err:e} of its scale");
        // The option does something: it moves burn's result much further from plain SGD's than
        // the two paths are apart (the EMA: its own weights).
        match &baseline {
            None => baseline = Some(burn.weights.clone()),
            Some(sgd) => {
                let (effect, _) = worst_rel(burn.ema.as_ref().unwrap_or(&burn.weights), sgd, false);
                assert!(effect > 5.0 * err, "{name}: the option changes the weights by {effect:e} only");
            }
        }
        match (&burn.ema, &cpu.ema, a.ema_val_loss, b.ema_val_loss) {
            (Some(ea), Some(eb), Some(la), Some(lb)) => {
                let (err, key) = worst_rel(ea, eb, false);
                eprintln!("{name}: EMA worst difference {err:.1e} ({key})");
                assert!(err <= 1e-2, "{name}: EMA {key} differs by {err:e}");
                close(&format!("{name}: EMA val loss"), la, lb, 2e-3);
            }
            (None, None, None, None) => assert!(!extra.contains(&"--ema-decay"), "{name}: no EMA written"),
            _ => panic!("{name}: one path wrote an EMA, the other not"),
        }
        if *name == "freeze-bn" {
            // Every BatchNorm tensor (affine and running statistics) is the pretrained one, bit
            // for bit, on both paths; the convs moved.
            let pretrained = &init;
            let mut frozen = 0;
            for (key, t) in &cpu.weights {
                let bn = key.contains(".running_")
                    || (t.shape.len() == 1 && !key.contains("fc") && !key.starts_with("classifier"));
                if bn {
                    assert_eq!(t.data, pretrained[key], "{key} moved under --freeze-bn");
                    assert_eq!(burn.weights[key].data, pretrained[key], "{key} moved under --freeze-bn (burn)");
                    frozen += 1;
                }
            }
            assert!(frozen > 40, "{frozen} BatchNorm tensors checked");
            assert_ne!(cpu.weights["features.0.0.weight"].data, pretrained["features.0.0.weight"]);
        }
    }
}
