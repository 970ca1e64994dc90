"""Shared helpers for the int8 comparisons against ONNX Runtime (issue 14).

Used by tools/quant/compare_int8_accuracy.py and tools/bench/bench_engine_vs_ort.py --int8.

* ONNX Runtime's post-training static quantisation as its documentation recommends for CNNs on
  x86: `quant_pre_process` (shape inference, graph optimisation), then `quantize_static` with
  QuantFormat.QDQ, per-channel weights, QUInt8 activations, QInt8 weights and MinMax
  calibration over a `CalibrationDataReader` that feeds preprocessed images.
* The calibration images are PNG files in a folder, so that `mobilenet quantize --calibration DIR`
  reads exactly the same images; on the Python side they go through torchvision's eval transform
  (Resize(resize) with Pillow's antialiased bilinear, CenterCrop(crop), /255, mean/std), which is
  what our `predict`/`quantize` do with a photo folder (within 1/255 per value, README).
* The preprocessing comes from the `mobilenet.preprocess` metadata of our safetensors file when
  there is one (`import` and `train` write it), else torchvision's ImageNet transform.
* Our binary's subcommands: `quantize`, `predict --json`, `eval --json`.
"""
import json
import os
import shlex
import struct
import subprocess
import sys

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
IMAGENET_PREPROCESS = {"resize_size": 256, "crop_size": 224,
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(cmd, timeout=3600, check=True):
    """Runs a command, returns the CompletedProcess; raises with its output when it fails."""
    shown = [str(c) for c in cmd]
    if len(shown) > 16:  # long file lists: the first and last few
        shown = shown[:12] + [f"... ({len(shown) - 14} more)"] + shown[-2:]
    log("$ " + shlex.join(shown))
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{shlex.join(str(c) for c in cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p


# ---- safetensors metadata and preprocessing ----------------------------------------------------
def safetensors_metadata(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)).get("__metadata__", {}) or {}


def preprocess_of(weights_path):
    meta = safetensors_metadata(weights_path)
    if "mobilenet.preprocess" in meta:
        return json.loads(meta["mobilenet.preprocess"])
    return dict(IMAGENET_PREPROCESS)


def list_images(folder):
    """The image files of a folder tree, sorted by path (the extensions our walker takes)."""
    out = []
    for root, _, files in os.walk(folder):
        out += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(out)


def preprocess_pil(image, pre):
    """torchvision's eval transform on a PIL image: [3, crop, crop] float32, normalised."""
    import torch
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode
    rgb = image.convert("RGB")
    x = TF.resize(rgb, pre["resize_size"], interpolation=InterpolationMode.BILINEAR, antialias=True)
    x = TF.center_crop(x, pre["crop_size"])
    t = TF.to_tensor(x)
    t = TF.normalize(t, pre["mean"], pre["std"])
    return t.numpy().astype(np.float32)


def preprocess_files(paths, pre):
    return np.stack([preprocess_pil(Image.open(p), pre) for p in paths]) if paths else None


# ---- calibration images ------------------------------------------------------------------------
def photo_crops(sources, n, seed, size=224):
    """n deterministic crops of the source images: area fraction in [0.1, 1], aspect ratio in
    [3/4, 4/3] (log-uniform), a coin-flip mirror, resized to size x size (Pillow bilinear)."""
    rng = np.random.default_rng(seed)
    images = [Image.open(p).convert("RGB") for p in sources]
    out = []
    for i in range(n):
        im = images[i % len(images)]
        w0, h0 = im.size
        for _ in range(20):
            area = w0 * h0 * rng.uniform(0.1, 1.0)
            ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            w, h = int(round((area * ratio) ** 0.5)), int(round((area / ratio) ** 0.5))
            if 0 < w <= w0 and 0 < h <= h0:
                break
        else:
            w, h = min(w0, h0), min(w0, h0)
        x, y = int(rng.integers(0, w0 - w + 1)), int(rng.integers(0, h0 - h + 1))
        crop = im.crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(crop)
    return out


def write_pngs(images, folder, prefix="img"):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, im in enumerate(images):
        p = os.path.join(folder, f"{prefix}_{i:04d}.png")
        im.save(p)
        paths.append(p)
    return paths


# ---- ONNX Runtime ------------------------------------------------------------------------------
def ort_session(path, threads=1, allow_spinning="1"):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", allow_spinning)
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def ort_logits(path, x, batch=64, threads=None):
    sess = ort_session(path, threads or os.cpu_count() or 1)
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    if isinstance(fixed, int):
        batch = fixed
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        pad = batch - len(chunk) if isinstance(fixed, int) else 0
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
        out = sess.run(None, {name: chunk})[0]
        outs.append(out[:len(out) - pad] if pad else out)
    return np.concatenate(outs)


def export_onnx(model, example, path, dynamic_batch=True, opset=17):
    """The legacy TorchScript exporter (one file, opset 17), constant folding, input `input`."""
    import warnings
    import torch
    kw = dict(opset_version=opset, do_constant_folding=True, input_names=["input"], output_names=["logits"])
    if dynamic_batch:
        kw["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(example),), path, dynamo=False, **kw)


def quantize_ort(fp32_path, out_path, calib, batch=1, method="minmax"):
    """ORT static quantisation: quant_pre_process, then quantize_static (QDQ, per-channel,
    activations QUInt8, weights QInt8, MinMax by default) with `calib` ([N, 3, H, W] float32) fed
    `batch` images at a time (MinMax ranges do not depend on the batching)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(calib):
                return None
            chunk = calib[self.i:self.i + batch]
            self.i += batch
            if len(chunk) < batch:  # a static-batch graph: pad the last chunk by repeating it
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
            return {"input": np.ascontiguousarray(chunk, dtype=np.float32)}

        def rewind(self):
            self.i = 0

    pre_path = out_path + ".pre.onnx"
    try:
        quant_pre_process(fp32_path, pre_path, skip_symbolic_shape=False)
        src = pre_path
    except Exception as e:  # pre-processing is a recommendation, not a requirement
        log(f"   quant_pre_process failed ({e!r}); quantising the exported graph directly")
        src = fp32_path
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    quantize_static(src, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=methods[method])
    if src == pre_path:
        os.remove(pre_path)
    return out_path


# ---- our binary --------------------------------------------------------------------------------
def quantize_ours(bin_path, weights, calibration, out_path, images=None, method=None, percentile=None):
    cmd = [bin_path, "quantize", "--weights", weights, "--calibration", calibration, "--output", out_path]
    if images is not None:
        cmd += ["--calibration-images", str(images)]
    if method is not None:
        cmd += ["--method", method]
    if percentile is not None:
        cmd += ["--percentile", str(percentile)]
    p = run(cmd)
    return p.stdout + p.stderr


def predict_ours(bin_path, weights, paths, top_k=1000, threads=None):
    """`mobilenet predict --json --top-k K`: {path: probs[num_classes]} (classes outside the top-k
    get 0)."""
    cmd = [bin_path, "predict", "--weights", weights, "--json", "--top-k", str(top_k)]
    if threads:
        cmd += ["--threads", str(threads)]
    p = run(cmd + list(paths))
    out = {}
    for line in p.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        top = rec["top"]
        probs = np.zeros(max(t["index"] for t in top) + 1 if top else 0, np.float64)
        for t in top:
            probs[t["index"]] = t["prob"]
        out[os.path.abspath(rec["path"])] = probs
    return out


def eval_ours(bin_path, weights, data, threads=None, extra=()):
    cmd = [bin_path, "eval", "--weights", weights, "--data", data, "--json", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    p = run(cmd)
    line = [l for l in p.stdout.splitlines() if l.strip().startswith("{")]
    if not line:
        raise RuntimeError(f"no JSON line in the output of eval:\n{p.stdout}{p.stderr}")
    return json.loads(line[-1])
