#!/usr/bin/env python3
"""CPU inference latency: our engine (`mobilenet bench`) against ONNX Runtime, same weights.

Needs torch, torchvision, safetensors, numpy, onnx and onnxruntime
(pip install torch torchvision safetensors onnx onnxruntime; the legacy TorchScript exporter used
by default needs nothing else, `--exporter dynamo` also needs onnxscript).

For every model (MobileNetV1, V2, V3-Large, V3-Small at width 1.0, 1000 classes):
  1. builds the torch model from a seeded random init (torchvision's constructors; V1 is the class
     in tools/fixtures/make_fixtures.py), randomises every BatchNorm's running stats and affine parameters
     a little, and switches to eval mode;
  2. writes the weights as our binary reads them (safetensors state_dict + `mobilenet.config`
     metadata) and exports an ONNX graph per batch size (static shape, constant folding);
  3. checks ORT's logits against torch's (max abs diff; our engine's numbers are tested elsewhere);
  4. times ORT and our binary in turns for --rounds rounds per configuration (batch, threads),
     with the same policy on both sides: 3 untimed warm-up runs, then at least 10 runs and at least
     --seconds seconds, median and min per round. The reported figure is the median over rounds of
     the per-round medians; the ratio is ORT ms / ours ms (> 1 means ours is faster).

ORT session: CPUExecutionProvider, intra_op_num_threads = T, inter_op_num_threads = 1, sequential
execution, ORT_ENABLE_ALL, intra-op spin-waiting as --ort-allow-spinning says (default on, ORT's
default; on a loaded machine spinning can make ORT ~2x slower at T = 2, so bench on an idle one). Both sides get the same input: pixel i of the NCHW batch is
(i % 251) / 125 - 1, which is what `mobilenet bench` feeds itself.

--int8 (issue 14) times int8 inference instead, on the same random-init weights: ONNX Runtime's
post-training static quantisation (quant_pre_process, then quantize_static with QDQ, per-channel
QInt8 weights, QUInt8 activations, MinMax calibration; tools/quant/ort_int8.py) against ours
(`mobilenet quantize --method minmax`), both calibrated on the same --calibration-images PNG files
(224x224 crops of tests/fixtures/photos, seeded, written to WORK/calibration; ORT gets them through
torchvision's eval transform, ours reads the folder). ORT int8, ours int8 and ours fp32 are timed
in turns (the order rotates each round); the ratios are ORT-int8 ms / ours-int8 ms and ours-fp32 ms
/ ours-int8 ms (> 1: ours int8 is faster).

Example (the default run, ~5-10 minutes):
  python3 tools/bench/bench_engine_vs_ort.py
  python3 tools/bench/bench_engine_vs_ort.py --bin target/release/mobilenet-engine --seconds 0.5 --rounds 1
  python3 tools/bench/bench_engine_vs_ort.py --int8            # int8: ORT int8, ours int8, ours fp32
Prints progress, then a markdown block for docs/BENCHMARKS.md; --json FILE also saves the raw data.
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tools", "fixtures"))
from make_fixtures import MobileNetV1  # noqa: E402  (the V1 with our key layout)
sys.path.insert(0, os.path.join(REPO, "tools", "quant"))

import onnxruntime as ort  # noqa: E402

ALL_MODELS = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]
WARMUP = 3
MIN_RUNS = 10


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---- models and weights ------------------------------------------------------------------------
def model_config(arch):
    v3 = arch.startswith("mobilenet_v3")
    return {
        "arch": arch,
        "num_classes": 1000,
        "width_mult": 1.0,
        "norm_eps": 1e-3 if v3 else 1e-5,
        "dropout": 0.2,
        "norm_momentum": 0.01 if v3 else 0.1,
        "v1_activation": "Relu",
    }


def build_model(arch, seed):
    torch.manual_seed(seed)
    if arch == "mobilenet_v1":
        model = MobileNetV1(num_classes=1000, width_mult=1.0, dropout=0.2)
    else:
        model = getattr(torchvision.models, arch)(num_classes=1000, width_mult=1.0, dropout=0.2)
    # Non-trivial BN: stats and affine parameters away from the (0, 1, 1, 0) of a fresh init.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))  # [0.5, 1.5)
                m.weight.copy_(1.0 + 0.25 * (2 * torch.rand(n, generator=g) - 1))
                m.bias.copy_(0.1 * (2 * torch.rand(n, generator=g) - 1))
    return model.eval()


def save_weights(model, arch, path):
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    save_file(state, path, metadata={"mobilenet.config": json.dumps(model_config(arch))})


def bench_input(batch, size):
    """What `mobilenet bench` feeds itself: pixel i of the NCHW batch is (i % 251) / 125 - 1."""
    n = batch * 3 * size * size
    x = (np.arange(n, dtype=np.int64) % 251).astype(np.float32) / np.float32(125.0) - np.float32(1.0)
    return x.reshape(batch, 3, size, size)


def export_onnx(model, batch, size, path, exporter, opset):
    x = torch.from_numpy(bench_input(batch, size))
    kw = dict(opset_version=opset, do_constant_folding=True, input_names=["input"], output_names=["logits"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        if exporter == "torchscript":
            torch.onnx.export(model, (x,), path, dynamo=False, **kw)
        else:
            torch.onnx.export(model, (x,), path, dynamo=True, external_data=False, **kw)
    import onnx
    m = onnx.load(path)
    return max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def ort_session(path, threads, allow_spinning="1"):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's intra-op workers spin-wait between ops by default ("1"); on a busy machine that can
    # cost ORT a lot at T > 1, so it is an option and is printed with the results.
    so.add_session_config_entry("session.intra_op.allow_spinning", allow_spinning)
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


# ---- timing ------------------------------------------------------------------------------------
def time_ort(sess, x, seconds):
    """Same policy as engine/src/bench.rs: WARMUP untimed runs, then >= MIN_RUNS runs and >= seconds."""
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(WARMUP):
        sess.run(None, feed)
    times = []
    start = time.perf_counter()
    while len(times) < MIN_RUNS or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "runs": len(times)}


def time_ours(bin_path, weights, batch, threads, size, seconds):
    cmd = [bin_path, "bench", "--weights", weights, "--batch", str(batch), "--threads", str(threads),
           "--image-size", str(size), "--seconds", str(seconds)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")

    def field(name, conv=float):
        m = re.search(rf"^{name}:\s*(\S+)", p.stdout, re.M)
        if not m:
            raise RuntimeError(f"no '{name}:' line in the output of {shlex.join(cmd)}:\n{p.stdout}")
        return conv(m.group(1))

    out = {"median_ms": field("median_ms"), "min_ms": field("min_ms")}
    runs = re.search(r"^runs:\s*(\d+)", p.stdout, re.M)
    out["runs"] = int(runs.group(1)) if runs else None
    info = re.search(r"^model:.*$", p.stdout, re.M)
    out["info"] = info.group(0) if info else ""
    return out


# ---- environment -------------------------------------------------------------------------------
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [x for x in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni") if x in flags]
    except OSError:
        pass
    return []


def versions():
    v = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "safetensors", "numpy"):
        try:
            v[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            v[pkg] = None
    return v


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "") if rev else "unknown"
    except OSError:
        return "unknown"


# ---- main --------------------------------------------------------------------------------------
def parse_configs(s):
    out = []
    for part in s.split(","):
        m = re.fullmatch(r"\s*(\d+)x(\d+)\s*", part)
        if not m:
            raise argparse.ArgumentTypeError(f"config '{part}' is not BATCHxTHREADS")
        out.append((int(m.group(1)), int(m.group(2))))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/mobilenet", help="our binary (subcommand `bench`)")
    ap.add_argument("--models", default=",".join(ALL_MODELS), help="comma-separated, from " + ",".join(ALL_MODELS))
    ap.add_argument("--configs", type=parse_configs, default=parse_configs("1x1,32x2"),
                    help="comma-separated BATCHxTHREADS (default 1x1,32x2)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="ORT/ours alternations per model and config")
    ap.add_argument("--work-dir", help="keep weights and ONNX files here (default: a temp dir)")
    ap.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript",
                    help="torch.onnx exporter (torchscript: legacy, opset 17, one file)")
    ap.add_argument("--opset", type=int, help="default 17 (torchscript), 18 (dynamo)")
    ap.add_argument("--ort-allow-spinning", choices=["1", "0"], default="1",
                    help="ORT session.intra_op.allow_spinning (1 = ORT's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--int8", action="store_true",
                    help="time ORT int8 (quantize_static QDQ), ours int8 (`mobilenet quantize`) and ours fp32")
    ap.add_argument("--calibration-images", type=int, default=64,
                    help="--int8: calibration images (photo-derived 224x224 PNGs, same files for both)")
    args = ap.parse_args()

    if args.opset is None:
        args.opset = 17 if args.exporter == "torchscript" else 18
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in ALL_MODELS:
            ap.error(f"unknown model {m}; choose from {', '.join(ALL_MODELS)}")
    bin_path = args.bin if os.path.isabs(args.bin) else os.path.join(os.getcwd(), args.bin)
    if not os.path.exists(bin_path) and os.path.exists(os.path.join(REPO, args.bin)):
        bin_path = os.path.join(REPO, args.bin)
    if not os.access(bin_path, os.X_OK):
        ap.error(f"binary {args.bin} not found or not executable (build it with cargo build --release)")

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tmp = None
    if args.work_dir:
        work = args.work_dir
        os.makedirs(work, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_engine_vs_ort_")
        work = tmp.name

    size = args.image_size
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    env = {
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "versions": versions(),
        "ort_providers": ort.get_available_providers(),
        "git": git_rev(),
        "bin": os.path.relpath(bin_path, REPO) if bin_path.startswith(REPO) else bin_path,
        "bin_mtime": datetime.datetime.fromtimestamp(os.path.getmtime(bin_path)).isoformat(timespec="seconds"),
        "exporter": args.exporter,
        "loadavg_before": [round(x, 2) for x in load_before],
    }
    log(f"# {env['date']}  cpu: {env['cpu']} ({env['logical_cpus']} logical, {' '.join(env['cpu_flags'])})")
    log(f"# versions: {env['versions']}")
    log(f"# load average before: {env['loadavg_before']}  work dir: {work}")

    if args.int8:
        return main_int8(args, models, bin_path, work, tmp, size, started, env)

    results = []
    checks = []
    for arch in models:
        log(f"\n== {arch}")
        model = build_model(arch, args.seed + 100 * ALL_MODELS.index(arch))  # same weights whatever --models
        weights = os.path.join(work, f"{arch}.safetensors")
        save_weights(model, arch, weights)
        onnx_paths = {}
        for batch, threads in args.configs:
            if batch not in onnx_paths:
                path = os.path.join(work, f"{arch}_b{batch}_s{size}.onnx")
                opset = export_onnx(model, batch, size, path, args.exporter, args.opset)
                onnx_paths[batch] = (path, opset)
                # Numbers: ORT against torch on the benchmark input.
                x = bench_input(batch, size)
                with torch.no_grad():
                    ref = model(torch.from_numpy(x)).numpy()
                got = ort_session(path, threads, args.ort_allow_spinning).run(None, {"input": x})[0]
                diff = float(np.max(np.abs(got - ref)))
                scale = float(np.max(np.abs(ref)))
                finite = bool(np.isfinite(ref).all())
                checks.append({"model": arch, "batch": batch, "opset": opset, "max_abs_diff": diff,
                               "max_abs_logit": scale, "logit_std": float(ref.std()), "finite": finite})
                log(f"   ORT vs torch, batch {batch}: max|diff| {diff:.3g} (relative {diff / max(scale, 1e-30):.2g}, max|logit| {scale:.3g}, "
                    f"logit std {ref.std():.3g}, opset {opset})")
                if not finite:
                    log("   WARNING: torch logits are not finite; timings may hit slow paths")

        for batch, threads in args.configs:
            sess = ort_session(onnx_paths[batch][0], threads, args.ort_allow_spinning)
            x = bench_input(batch, size)
            ort_rounds, our_rounds = [], []
            for r in range(args.rounds):
                # Alternate which side goes first, so a drift in machine load hits both equally.
                order = ("ort", "ours") if r % 2 == 0 else ("ours", "ort")
                for side in order:
                    if side == "ort":
                        ort_rounds.append(time_ort(sess, x, args.seconds))
                    else:
                        our_rounds.append(time_ours(bin_path, weights, batch, threads, size, args.seconds))
                log(f"   b{batch} t{threads} round {r + 1}/{args.rounds}: ORT {ort_rounds[-1]['median_ms']:.2f} ms "
                    f"(min {ort_rounds[-1]['min_ms']:.2f}, {ort_rounds[-1]['runs']} runs), ours "
                    f"{our_rounds[-1]['median_ms']:.2f} ms (min {our_rounds[-1]['min_ms']:.2f}, {our_rounds[-1]['runs']} runs)")
            del sess
            ort_ms = statistics.median(r["median_ms"] for r in ort_rounds)
            our_ms = statistics.median(r["median_ms"] for r in our_rounds)
            results.append({
                "model": arch, "batch": batch, "threads": threads, "image_size": size,
                "ort_median_ms": ort_ms, "ort_min_ms": min(r["min_ms"] for r in ort_rounds),
                "ort_images_per_s": batch / (ort_ms / 1e3),
                "ours_median_ms": our_ms, "ours_min_ms": min(r["min_ms"] for r in our_rounds),
                "ours_images_per_s": batch / (our_ms / 1e3),
                "ratio_ort_over_ours": ort_ms / our_ms,
                "ort_rounds_ms": [r["median_ms"] for r in ort_rounds],
                "ours_rounds_ms": [r["median_ms"] for r in our_rounds],
                "ours_info": our_rounds[-1]["info"],
            })

    env["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    env["wall_s"] = round((datetime.datetime.now().astimezone() - started).total_seconds(), 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "args": {k: v for k, v in vars(args).items()}, "checks": checks,
                       "results": results}, f, indent=1)
    if tmp is not None:
        tmp.cleanup()

    v = env["versions"]
    # `mobilenet bench` prints "backend: engine (avx512)"; `mobilenet-engine bench` "isa avx512".
    isa = sorted({m.group(1) for r in results for m in [re.search(r"(?:isa |engine \()([\w+]+)", r["ours_info"])] if m})
    print()
    print(f"## Inference latency: ours vs ONNX Runtime ({started.date().isoformat()})")
    print()
    print("```sh")
    print(env["command"])
    print("```")
    print()
    print(f"CPU: {env['cpu']}, {env['logical_cpus']} logical CPUs ({', '.join(env['cpu_flags']) or 'no AVX2'}); "
          f"our kernels: {', '.join(isa) or 'unknown'}; git {env['git']}, binary `{env['bin']}` built {env['bin_mtime']}.")
    print(f"onnxruntime {v['onnxruntime']} (CPUExecutionProvider, ORT_ENABLE_ALL, sequential, inter-op 1 thread, "
          f"intra-op spinning {'on' if args.ort_allow_spinning == '1' else 'off'}), "
          f"onnx {v['onnx']}, torch {v['torch']}, torchvision {v['torchvision']}, safetensors {v['safetensors']}, "
          f"numpy {v['numpy']}, Python {v['python']}; ONNX from the {env['exporter']} exporter, "
          f"opset {', '.join(sorted({str(c['opset']) for c in checks}))}.")
    print(f"{size}x{size} input, random weights with random BN statistics; each side: {WARMUP} warm-up runs, then "
          f">= {MIN_RUNS} runs and >= {args.seconds:g} s, median; {args.rounds} alternating round(s), "
          f"median of the round medians. Ratio = ORT ms / ours ms (> 1: ours is faster). "
          f"Load average {env['loadavg_before'][0]} before, {env['loadavg_after'][0]} after; run took {env['wall_s']:.0f} s.")
    print()
    print("| model | batch | threads | ORT ms | ORT images/s | ours ms | ours images/s | ORT / ours |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['ort_median_ms']:.2f} | {r['ort_images_per_s']:.1f} "
              f"| {r['ours_median_ms']:.2f} | {r['ours_images_per_s']:.1f} | **{r['ratio_ort_over_ours']:.2f}** |")
    print()
    print("Per-round medians (ms), ORT / ours: " + "; ".join(
        f"{r['model']} b{r['batch']}t{r['threads']}: "
        f"{'/'.join(f'{t:.1f}' for t in r['ort_rounds_ms'])} vs {'/'.join(f'{t:.1f}' for t in r['ours_rounds_ms'])}"
        for r in results) + ".")
    print()
    print("ORT vs torch logits, max abs diff: " + "; ".join(
        f"{c['model']} b{c['batch']}: {c['max_abs_diff']:.2g} (max |logit| {c['max_abs_logit']:.3g}, "
        f"relative {c['max_abs_diff'] / max(c['max_abs_logit'], 1e-30):.2g})" for c in checks) + ".")


# ---- int8 (issue 14) ---------------------------------------------------------------------------
def main_int8(args, models, bin_path, work, tmp, size, started, env):
    import ort_int8  # tools/quant/ort_int8.py
    if size != 224:
        raise RuntimeError("--int8 calibrates with the 256/224 ImageNet transform; use --image-size 224")
    calib_dir = os.path.join(work, "calibration")
    photos = ort_int8.list_images(os.path.join(REPO, "tests", "fixtures", "photos"))
    if not os.path.isdir(calib_dir) or len(ort_int8.list_images(calib_dir)) != args.calibration_images:
        import shutil
        shutil.rmtree(calib_dir, ignore_errors=True)
        ort_int8.write_pngs(ort_int8.photo_crops(photos, args.calibration_images, seed=args.seed), calib_dir, "calib")
    calib_paths = ort_int8.list_images(calib_dir)
    # Our random-init files carry no preprocessing metadata, so both sides use ImageNet's.
    calib = ort_int8.preprocess_files(calib_paths, ort_int8.IMAGENET_PREPROCESS)
    log(f"# calibration: {len(calib_paths)} PNGs in {calib_dir}")

    results, checks, quant_logs = [], [], {}
    sides = ("ort_int8", "ours_int8", "ours_fp32")
    for arch in models:
        log(f"\n== {arch}")
        model = build_model(arch, args.seed + 100 * ALL_MODELS.index(arch))  # same weights as the fp32 mode
        weights = os.path.join(work, f"{arch}.safetensors")
        save_weights(model, arch, weights)
        qweights = os.path.join(work, f"{arch}_int8.safetensors")
        t = time.perf_counter()
        quant_logs[arch] = ort_int8.quantize_ours(bin_path, weights, calib_dir, qweights,
                                                  images=len(calib_paths), method="minmax")
        log(f"   mobilenet quantize: {time.perf_counter() - t:.1f} s")
        with torch.no_grad():
            calib_ref = model(torch.from_numpy(calib)).numpy()
        int8_paths = {}
        for batch, threads in args.configs:
            if batch in int8_paths:
                continue
            fp32_path = os.path.join(work, f"{arch}_b{batch}_s{size}.onnx")
            opset = export_onnx(model, batch, size, fp32_path, args.exporter, args.opset)
            int8_path = os.path.join(work, f"{arch}_b{batch}_s{size}_int8_qdq.onnx")
            t = time.perf_counter()
            ort_int8.quantize_ort(fp32_path, int8_path, calib, batch=batch)
            log(f"   ORT quantize_static, batch {batch}: {time.perf_counter() - t:.1f} s")
            int8_paths[batch] = int8_path
            # Sanity: ORT int8 against torch fp32 on the calibration images (top-1 agreement).
            got = ort_int8.ort_logits(int8_path, calib, batch=batch, threads=threads)
            agree = float((got.argmax(1) == calib_ref.argmax(1)).mean())
            diff = float(np.max(np.abs(got - calib_ref)))
            checks.append({"model": arch, "batch": batch, "opset": opset, "ort_int8_top1_agree_torch": agree,
                           "ort_int8_max_abs_diff": diff, "max_abs_logit": float(np.max(np.abs(calib_ref)))})
            log(f"   ORT int8 vs torch fp32 on the calibration images, batch {batch}: top-1 agreement {agree:.3f}, "
                f"max|diff| {diff:.3g} (max|logit| {np.max(np.abs(calib_ref)):.3g})")

        for batch, threads in args.configs:
            sess = ort_session(int8_paths[batch], threads, args.ort_allow_spinning)
            x = bench_input(batch, size)
            rounds = {s: [] for s in sides}
            for r in range(args.rounds):
                order = sides[r % 3:] + sides[:r % 3]  # rotate who goes first
                for side in order:
                    if side == "ort_int8":
                        rounds[side].append(time_ort(sess, x, args.seconds))
                    else:
                        w = qweights if side == "ours_int8" else weights
                        rounds[side].append(time_ours(bin_path, w, batch, threads, size, args.seconds))
                log(f"   b{batch} t{threads} round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{s} {rounds[s][-1]['median_ms']:.2f} ms (min {rounds[s][-1]['min_ms']:.2f}, {rounds[s][-1]['runs']} runs)"
                    for s in sides))
            del sess
            row = {"model": arch, "batch": batch, "threads": threads, "image_size": size}
            for s in sides:
                row[f"{s}_median_ms"] = statistics.median(r["median_ms"] for r in rounds[s])
                row[f"{s}_min_ms"] = min(r["min_ms"] for r in rounds[s])
                row[f"{s}_rounds_ms"] = [r["median_ms"] for r in rounds[s]]
            row["ort_int8_over_ours_int8"] = row["ort_int8_median_ms"] / row["ours_int8_median_ms"]
            row["ours_fp32_over_ours_int8"] = row["ours_fp32_median_ms"] / row["ours_int8_median_ms"]
            row["ours_int8_info"] = rounds["ours_int8"][-1]["info"]
            row["ours_fp32_info"] = rounds["ours_fp32"][-1]["info"]
            results.append(row)

    env["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    env["wall_s"] = round((datetime.datetime.now().astimezone() - started).total_seconds(), 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "args": {k: v for k, v in vars(args).items()}, "checks": checks,
                       "results": results, "quantize_output": quant_logs,
                       "calibration": [os.path.basename(p) for p in calib_paths]}, f, indent=1)
    if tmp is not None:
        tmp.cleanup()

    v = env["versions"]
    isa = sorted({m.group(1) for r in results for m in [re.search(r"(?:isa |engine (?:int8 )?\()([\w+-]+)", r["ours_int8_info"])] if m})
    isa32 = sorted({m.group(1) for r in results for m in [re.search(r"(?:isa |engine \()([\w+-]+)", r["ours_fp32_info"])] if m})
    print()
    print(f"## int8 inference latency: ours vs ONNX Runtime int8 ({started.date().isoformat()})")
    print()
    print("```sh")
    print(env["command"])
    print("```")
    print()
    print(f"CPU: {env['cpu']}, {env['logical_cpus']} logical CPUs ({', '.join(env['cpu_flags']) or 'no AVX2'}); "
          f"our kernels: int8 {', '.join(isa) or 'unknown'}, fp32 {', '.join(isa32) or 'unknown'}; git {env['git']}, "
          f"binary `{env['bin']}` built {env['bin_mtime']}.")
    print(f"onnxruntime {v['onnxruntime']} (CPUExecutionProvider, ORT_ENABLE_ALL, sequential, inter-op 1 thread, "
          f"intra-op spinning {'on' if args.ort_allow_spinning == '1' else 'off'}); ORT int8: quant_pre_process + "
          f"quantize_static (QDQ, per-channel, QUInt8 activations, QInt8 weights, MinMax); ours: `mobilenet quantize "
          f"--method minmax`; both calibrated on the same {len(calib_paths)} PNGs. onnx {v['onnx']}, torch {v['torch']}, "
          f"torchvision {v['torchvision']}; ONNX from the {env['exporter']} exporter, opset "
          f"{', '.join(sorted({str(c['opset']) for c in checks}))}.")
    print(f"{size}x{size} input, random weights with random BN statistics; each side: {WARMUP} warm-up runs, then "
          f">= {MIN_RUNS} runs and >= {args.seconds:g} s, median; {args.rounds} rotating round(s), median of the round "
          f"medians. Load average {env['loadavg_before'][0]} before, {env['loadavg_after'][0]} after; run took "
          f"{env['wall_s']:.0f} s.")
    print()
    print("| model | batch | threads | ORT int8 ms | ours int8 ms | ours fp32 ms | ORT-int8 / ours-int8 | ours-fp32 / ours-int8 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['model']} | {r['batch']} | {r['threads']} | {r['ort_int8_median_ms']:.2f} | {r['ours_int8_median_ms']:.2f} "
              f"| {r['ours_fp32_median_ms']:.2f} | **{r['ort_int8_over_ours_int8']:.2f}** | {r['ours_fp32_over_ours_int8']:.2f} |")
    print()
    print("Per-round medians (ms), ORT int8 / ours int8 / ours fp32: " + "; ".join(
        f"{r['model']} b{r['batch']}t{r['threads']}: "
        + " vs ".join('/'.join(f'{t:.1f}' for t in r[f'{s}_rounds_ms']) for s in sides)
        for r in results) + ".")
    print()
    print("ORT int8 against torch fp32 on the calibration images, top-1 agreement: " + "; ".join(
        f"{c['model']} b{c['batch']}: {c['ort_int8_top1_agree_torch']:.2f}" for c in checks) + ".")


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        sys.exit(f"error: {e}")
