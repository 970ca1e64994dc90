#!/usr/bin/env python3
"""Accuracy of our int8 inference (`mobilenet quantize`) against ONNX Runtime's int8 and fp32.

Issue 14 asks for int8 inference "at least as accurate as ONNX Runtime's int8". Both sides
quantise the same fp32 weights with post-training static quantisation calibrated on the SAME
image files (a PNG folder this script writes; `mobilenet quantize --calibration DIR` reads it):

* ours: `mobilenet quantize --weights W --calibration DIR --calibration-images N --method minmax`,
  then `mobilenet predict`/`eval --weights Q`;
* ORT: the fp32 weights loaded into torchvision's model (our keys are torchvision's), exported to
  ONNX (TorchScript exporter, opset 17), `quant_pre_process`, `quantize_static` with QDQ,
  per-channel QInt8 weights, QUInt8 activations, MinMax calibration (tools/quant/ort_int8.py);
  the images go through torchvision's eval transform with the preprocessing stored in W.

Two modes:

  imagenet  torchvision's ImageNet MobileNetV2 (IMAGENET1K_V1), imported with `mobilenet import`.
            Calibration: every image file in the repo (tests/fixtures/photos, docs/*.png) plus
            photo-derived crops (random crop/flip of the three photos, 224x224), 64 in all.
            Evaluation: the repo's images one by one (top-1 of each side), and a held-out set of
            200 other crops (different seed): top-1 agreement with fp32 and mean |Δprob| of the fp32
            top class (each int8 against its own pipeline's fp32, and both against ours fp32).
  fmnist    weights trained on Fashion-MNIST by `mobilenet train` (--weights, or --run DIR for
            DIR/last.safetensors). Calibration: N (default 300) training images picked with a seeded
            permutation, written as 28x28 grey PNGs; our data set path (`--calibration DATA`) is
            run too. Test: all 10,000 test images. Reports top-1 of ours fp32 (`eval`), ORT fp32
            (must equal ours: checked per image, our side via `predict` on the test images as
            PNGs), ours int8 (`eval --weights Q`) and ORT int8, and per-image agreement with fp32.
            Preprocessing as `eval` does it (src/data/augment.rs, preprocess.rs): grey to RGB,
            Pillow bilinear resize 28->32 (the file's `mobilenet.preprocess`), /255, the training
            set's mean/std.

Examples:
  python3 tools/quant/compare_int8_accuracy.py imagenet --bin target/release/mobilenet --work-dir /tmp/q-imagenet
  python3 tools/quant/compare_int8_accuracy.py fmnist --bin target/release/mobilenet \
      --run /work/runs-int8/fmnist-v3s --work-dir /tmp/q-fmnist-v3s
Prints a markdown block; --json FILE saves the raw figures.
"""
import argparse
import datetime
import gzip
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import ort_int8 as q  # noqa: E402
from ort_int8 import log  # noqa: E402


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def git_rev():
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return rev or "unknown"


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def torch_model(weights):
    """torchvision's model (V1: tools/fixtures/make_fixtures.py) with our safetensors loaded."""
    import torch
    import torchvision
    from safetensors.torch import load_file
    meta = q.safetensors_metadata(weights)
    cfg = json.loads(meta["mobilenet.config"])
    arch = cfg["arch"]
    if arch == "mobilenet_v1":
        sys.path.insert(0, os.path.join(REPO, "tools", "fixtures"))
        from make_fixtures import MobileNetV1
        model = MobileNetV1(num_classes=cfg["num_classes"], width_mult=cfg["width_mult"])
    else:
        model = getattr(torchvision.models, arch)(num_classes=cfg["num_classes"], width_mult=cfg["width_mult"])
    state = load_file(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"{weights}: missing {missing}, unexpected {unexpected}")
    # BatchNorm eps is part of the config (V3 1e-3, V1/V2 1e-5); torchvision's constructors agree.
    return model.eval(), cfg


def agreement(ref_probs, probs):
    """Top-1 agreement with the reference and mean |Δprob| of the reference's top class."""
    ref_top = ref_probs.argmax(1)
    top = probs.argmax(1)
    idx = np.arange(len(ref_top))
    return {"n": int(len(ref_top)), "top1_agree": float((ref_top == top).mean()),
            "agree_count": int((ref_top == top).sum()),
            "mean_abs_dprob": float(np.abs(ref_probs[idx, ref_top] - probs[idx, ref_top]).mean()),
            "max_abs_dprob": float(np.abs(ref_probs[idx, ref_top] - probs[idx, ref_top]).max())}


def ours_probs(bin_path, weights, paths, num_classes, top_k):
    got = q.predict_ours(bin_path, weights, paths, top_k=top_k)
    out = np.zeros((len(paths), num_classes))
    for i, p in enumerate(paths):
        v = got[os.path.abspath(p)]
        out[i, :len(v)] = v
    return out


# ---- ImageNet ----------------------------------------------------------------------------------
def repo_images():
    out = []
    for folder in ("tests/fixtures/photos", "docs", "assets"):
        out += q.list_images(os.path.join(REPO, folder))
    return out


def run_imagenet(args):
    import torch
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    weights = os.path.join(work, "mobilenet_v2_imagenet.safetensors")
    pth = args.pth if os.path.isabs(args.pth) else os.path.join(REPO, args.pth)
    q.run([args.bin, "import", "--model", "mobilenet_v2", "--from", pth, "--output", weights])
    pre = q.preprocess_of(weights)
    with open(os.path.join(REPO, "assets", "imagenet_classes.txt")) as f:
        labels = [l.strip() for l in f]

    originals = repo_images()
    photos = q.list_images(os.path.join(REPO, "tests", "fixtures", "photos"))
    calib_dir = os.path.join(work, "calibration")
    shutil.rmtree(calib_dir, ignore_errors=True)
    os.makedirs(calib_dir)
    calib_paths = []
    for p in originals:  # the repo's own files, byte for byte
        dst = os.path.join(calib_dir, "repo_" + os.path.relpath(p, REPO).replace("/", "_"))
        shutil.copyfile(p, dst)
        calib_paths.append(dst)
    calib_paths += q.write_pngs(q.photo_crops(photos, args.calibration_images - len(originals), seed=0),
                                calib_dir, "crop")
    calib_paths = sorted(calib_paths)
    heldout_dir = os.path.join(work, "heldout")
    shutil.rmtree(heldout_dir, ignore_errors=True)
    heldout = q.write_pngs(q.photo_crops(photos, args.heldout_images, seed=1), heldout_dir, "heldout")
    log(f"calibration: {len(calib_paths)} images in {calib_dir}; held out: {len(heldout)}")

    # ORT: fp32 ONNX from torchvision's model with the same weights, then quantize_static.
    model, cfg = torch_model(weights)
    fp32_onnx = os.path.join(work, "mobilenet_v2_fp32.onnx")
    int8_onnx = os.path.join(work, "mobilenet_v2_int8_qdq.onnx")
    calib = q.preprocess_files(calib_paths, pre)
    q.export_onnx(model, calib[:1], fp32_onnx, dynamic_batch=True)
    q.quantize_ort(fp32_onnx, int8_onnx, calib, batch=8)

    # Ours: quantize, same folder.
    systems = {}
    quant_logs = {}
    for method in args.ours_methods:
        out = os.path.join(work, f"mobilenet_v2_int8_{method}.safetensors")
        quant_logs[method] = q.quantize_ours(args.bin, weights, calib_dir, out, images=len(calib_paths), method=method)
        systems[f"ours int8 ({method})"] = ("ours", out)

    eval_sets = {"repo images": originals, "held-out crops": heldout}
    results = {}
    for set_name, paths in eval_sets.items():
        x = q.preprocess_files(paths, pre)
        with torch.no_grad():
            torch_fp32 = softmax(model(torch.from_numpy(x)).numpy().astype(np.float64))
        r = {"paths": [os.path.relpath(p, REPO) if p.startswith(REPO) else os.path.basename(p) for p in paths]}
        r["ours fp32"] = ours_probs(args.bin, weights, paths, 1000, 1000)
        r["ORT fp32"] = softmax(q.ort_logits(fp32_onnx, x).astype(np.float64))
        r["ORT int8"] = softmax(q.ort_logits(int8_onnx, x).astype(np.float64))
        for name, (_, path) in systems.items():
            r[name] = ours_probs(args.bin, path, paths, 1000, 1000)
        r["torch fp32"] = torch_fp32
        results[set_name] = r

    # Report.
    names = [n for n in systems] + ["ORT int8"]
    lines = []
    lines.append(f"### ImageNet MobileNetV2 (torchvision IMAGENET1K_V1), calibrated on {len(calib_paths)} images")
    lines.append("")
    lines.append("Top-1 per repo image (probability):")
    lines.append("")
    cols = ["ours fp32", "ORT fp32"] + names
    lines.append("| image | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    r = results["repo images"]
    for i, p in enumerate(r["paths"]):
        cells = []
        for c in cols:
            k = int(r[c][i].argmax())
            cells.append(f"{labels[k]} ({k}) {r[c][i, k]:.3f}")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Against fp32: top-1 agreement, mean (max) |Δprob| of the fp32 top class. Each int8 is compared "
                 "with its own pipeline's fp32 (ours: `predict` fp32; ORT: the fp32 ONNX on torchvision's "
                 "preprocessing) and with ours fp32.")
    lines.append("")
    lines.append("| set | int8 | vs own fp32: top-1 agree | mean (max) \\|Δp\\| | vs ours fp32: top-1 agree | mean (max) \\|Δp\\| |")
    lines.append("|---|---|---:|---:|---:|---:|")
    summary = {}
    for set_name, r in results.items():
        for n in names:
            own = r["ORT fp32"] if n.startswith("ORT") else r["ours fp32"]
            a, b = agreement(own, r[n]), agreement(r["ours fp32"], r[n])
            summary[f"{set_name} / {n}"] = {"vs_own_fp32": a, "vs_ours_fp32": b}
            lines.append(f"| {set_name} ({a['n']}) | {n} | {a['agree_count']}/{a['n']} | {a['mean_abs_dprob']:.4f} ({a['max_abs_dprob']:.3f}) "
                         f"| {b['agree_count']}/{b['n']} | {b['mean_abs_dprob']:.4f} ({b['max_abs_dprob']:.3f}) |")
        c = agreement(r["ours fp32"], r["ORT fp32"])
        summary[f"{set_name} / ORT fp32 vs ours fp32"] = c
        lines.append(f"| {set_name} ({c['n']}) | (ORT fp32 vs ours fp32) | | | {c['agree_count']}/{c['n']} | {c['mean_abs_dprob']:.4f} ({c['max_abs_dprob']:.3f}) |")
    lines.append("")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": "imagenet", "summary": summary, "calibration": [os.path.basename(p) for p in calib_paths],
                       "quantize_output": quant_logs,
                       "per_image": {s: {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}
                                     for s, r in results.items() if s == "repo images"}}, f, indent=1)


# ---- Fashion-MNIST -----------------------------------------------------------------------------
def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def idx_file(data, prefix):
    for name in (f"{prefix}-ubyte", f"{prefix}-ubyte.gz", f"{prefix}.idx3-ubyte"):
        p = os.path.join(data, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"{prefix} in {data}")


def run_fmnist(args):
    import torch
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    source = os.path.abspath(args.weights or os.path.join(args.run, "last.safetensors"))
    # A snapshot: a run still training rewrites last.safetensors every epoch.
    weights = os.path.join(work, "fp32_" + os.path.basename(source))
    shutil.copyfile(source, weights)
    pre = q.preprocess_of(weights)
    model, cfg = torch_model(weights)
    arch = cfg["arch"]
    log(f"{weights}: {arch}, preprocessing {pre}")

    train_x = read_idx(idx_file(args.data, "train-images-idx3"))
    test_x = read_idx(idx_file(args.data, "t10k-images-idx3"))
    test_y = read_idx(idx_file(args.data, "t10k-labels-idx1")).astype(np.int64)
    if args.test_limit:
        test_x, test_y = test_x[:args.test_limit], test_y[:args.test_limit]

    # Calibration: N training images (seeded permutation), as grey PNGs.
    pick = np.random.default_rng(args.seed).permutation(len(train_x))[:args.calibration_images]
    calib_dir = os.path.join(work, "calibration")
    shutil.rmtree(calib_dir, ignore_errors=True)
    calib_paths = q.write_pngs([Image.fromarray(train_x[i], "L") for i in pick], calib_dir, "train")
    # The test set as PNGs too, for our per-image predictions (`predict` walks the folder).
    test_dir = os.path.join(work, "test")
    shutil.rmtree(test_dir, ignore_errors=True)
    test_paths = q.write_pngs([Image.fromarray(a, "L") for a in test_x], test_dir, "test")

    calib = np.stack([q.preprocess_pil(Image.fromarray(train_x[i], "L"), pre) for i in pick])
    x = np.stack([q.preprocess_pil(Image.fromarray(a, "L"), pre) for a in test_x])
    log(f"calibration {calib.shape}, test {x.shape}")

    fp32_onnx = os.path.join(work, f"{arch}_fp32.onnx")
    int8_onnx = os.path.join(work, f"{arch}_int8_qdq.onnx")
    q.export_onnx(model, calib[:1], fp32_onnx, dynamic_batch=True)
    q.quantize_ort(fp32_onnx, int8_onnx, calib, batch=50)
    with torch.no_grad():
        torch_logits = np.concatenate([model(torch.from_numpy(x[i:i + 500])).numpy() for i in range(0, len(x), 500)])
    ort_fp32 = q.ort_logits(fp32_onnx, x, batch=500)
    ort_int8 = q.ort_logits(int8_onnx, x, batch=500)

    full = not args.test_limit
    res = {"weights": source, "arch": arch, "calibration_images": len(calib_paths), "test_images": len(x)}
    res["ours_fp32_eval"] = q.eval_ours(args.bin, weights, args.data)["top1"] if full else None
    rows = {}
    per_image = {}
    per_image["ours fp32"] = ours_probs(args.bin, weights, test_paths, cfg["num_classes"], cfg["num_classes"])
    quant_logs = {}
    for method in args.ours_methods:
        for calib_kind, calib_arg in (("PNG folder", calib_dir), ("data set", args.data)):
            if calib_kind == "data set" and not args.dataset_calibration:
                continue
            tag = f"ours int8 ({method}, {calib_kind})"
            out = os.path.join(work, f"{arch}_int8_{method}_{'folder' if calib_kind == 'PNG folder' else 'data'}.safetensors")
            quant_logs[tag] = q.quantize_ours(args.bin, weights, calib_arg, out, images=args.calibration_images, method=method)
            rows[tag] = {"eval_top1": q.eval_ours(args.bin, out, args.data)["top1"] if full else None}
            per_image[tag] = ours_probs(args.bin, out, test_paths, cfg["num_classes"], cfg["num_classes"])
    per_image["ORT fp32"] = softmax(ort_fp32.astype(np.float64))
    per_image["ORT int8"] = softmax(ort_int8.astype(np.float64))
    per_image["torch fp32"] = softmax(torch_logits.astype(np.float64))

    acc = {k: float((v.argmax(1) == test_y).mean()) for k, v in per_image.items()}
    ref = per_image["ours fp32"]
    checks = {
        "ORT fp32 vs ours fp32 (predict)": agreement(ref, per_image["ORT fp32"]),
        "torch fp32 vs ours fp32 (predict)": agreement(ref, per_image["torch fp32"]),
    }
    res.update({"top1_from_predictions": acc, "checks": checks, "ours_int8": rows, "quantize_output": quant_logs})
    agree = {}
    for k in per_image:
        if "int8" in k:
            own = per_image["ORT fp32"] if k.startswith("ORT") else ref
            agree[k] = agreement(own, per_image[k])
    res["agreement_with_own_fp32"] = agree

    lines = [f"### {arch} on Fashion-MNIST ({source})", ""]
    ev = res["ours_fp32_eval"]
    c = checks["ORT fp32 vs ours fp32 (predict)"]
    lines.append((f"fp32 check: `mobilenet eval` top-1 {ev * 100:.2f}%; " if ev is not None else "fp32 check: ")
                 + f"our `predict` on the test PNGs {acc['ours fp32'] * 100:.2f}%; ORT fp32 {acc['ORT fp32'] * 100:.2f}%, "
                 f"torch fp32 {acc['torch fp32'] * 100:.2f}%; ORT fp32's top-1 equals ours on {c['agree_count']}/{c['n']} images "
                 f"(mean |Δp| {c['mean_abs_dprob']:.2g}, max {c['max_abs_dprob']:.2g}).")
    lines.append("")
    lines.append(f"| {len(x):,} test images | test top-1 | top-1 agreement with own fp32 | mean (max) \\|Δp\\| of fp32's top class |")
    lines.append("|---|---:|---:|---:|")
    lines.append(f"| fp32 (ours, `eval`) | {ev * 100:.2f}% | | |" if ev is not None else f"| fp32 (ours, predict) | {acc['ours fp32'] * 100:.2f}% | | |")
    lines.append(f"| fp32 (ORT) | {acc['ORT fp32'] * 100:.2f}% | | |")
    for k in per_image:
        if "int8" not in k:
            continue
        a = agree[k]
        top1 = rows.get(k, {}).get("eval_top1")
        shown = f"{top1 * 100:.2f}%" if top1 is not None else f"{acc[k] * 100:.2f}%"
        if top1 is not None and abs(top1 - acc[k]) > 1e-9:
            shown += f" (predict: {acc[k] * 100:.2f}%)"
        lines.append(f"| {k} | **{shown}** | {a['top1_agree'] * 100:.2f}% ({a['n'] - a['agree_count']} differ) "
                     f"| {a['mean_abs_dprob']:.4f} ({a['max_abs_dprob']:.3f}) |")
    lines.append("")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    for name in ("imagenet", "fmnist"):
        p = sub.add_parser(name)
        p.add_argument("--bin", default="target/release/mobilenet")
        p.add_argument("--work-dir", required=True)
        p.add_argument("--ours-methods", default="minmax", type=lambda s: [m for m in s.split(",") if m],
                       help="comma-separated `mobilenet quantize --method` values (default minmax, as ORT's)")
        p.add_argument("--json")
        if name == "imagenet":
            p.add_argument("--pth", default="weights/mobilenet_v2-b0353104.pth")
            p.add_argument("--calibration-images", type=int, default=64)
            p.add_argument("--heldout-images", type=int, default=200)
        else:
            p.add_argument("--run", help="a `mobilenet train` run folder (its last.safetensors)")
            p.add_argument("--weights", help="or the weights directly")
            p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
            p.add_argument("--calibration-images", type=int, default=300)
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--no-dataset-calibration", dest="dataset_calibration", action="store_false",
                           help="skip `mobilenet quantize --calibration DATA` (the data set path)")
            p.add_argument("--test-limit", type=int, help="only the first N test images (a quick check)")
    args = ap.parse_args()
    b = args.bin if os.path.isabs(args.bin) else os.path.join(os.getcwd(), args.bin)
    if not os.path.exists(b) and os.path.exists(os.path.join(REPO, args.bin)):
        b = os.path.join(REPO, args.bin)
    args.bin = b
    if args.mode == "fmnist" and not (args.run or args.weights):
        ap.error("fmnist needs --run DIR or --weights FILE")
    log(f"# {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  git {git_rev()}  cpu {cpu_model()}")
    (run_imagenet if args.mode == "imagenet" else run_fmnist)(args)


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        sys.exit(f"error: {e}")
