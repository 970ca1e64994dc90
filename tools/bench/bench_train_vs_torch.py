#!/usr/bin/env python3
"""Training-step speed, ours against torch, measured in turns in one run: `mobilenet bench-train`
(the CPU trainer, or --backend burn) and tools/bench/torch_train_step.py in NCHW and channels_last
(the faster of the two counts as torch's figure). Prints one table row per configuration with
the ratio ours / torch's best.

Usage: python3 tools/bench/bench_train_vs_torch.py --bin target/release/mobilenet [--rounds 3]
           [--configs "mobilenet_v3_small:128:32 mobilenet_v2:128:32 mobilenet_v2:32:224 ..."]
           [--threads 2] [--seconds 8] [--python .venv/bin/python] [--backend engine|burn]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIGS = "mobilenet_v3_small:128:32 mobilenet_v2:128:32 mobilenet_v2:32:224 mobilenet_v3_large:32:224"


def figure(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"images_per_s: ([0-9.]+)", out).group(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/mobilenet")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--configs", default=DEFAULT_CONFIGS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--backend", default="engine")
    a = p.parse_args()
    isa = os.environ.get("MOBILENET_ENGINE_ISA", "best available")
    print(f"threads {a.threads}, {a.rounds} rounds in turns, median images/s; engine ISA: {isa}")
    print("| model | batch | size | ours | torch NCHW | torch channels_last | ours / torch's best |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for config in a.configs.split():
        model, batch, size = config.split(":")
        common = ["--batch", batch, "--image-size", size, "--threads", str(a.threads), "--seconds", str(a.seconds)]
        ours_cmd = [a.bin, "bench-train", "--model", model, "--backend", a.backend] + common
        torch_cmd = [a.python, os.path.join(HERE, "torch_train_step.py"), "--model", model] + common
        ours, nchw, cl = [], [], []
        for _ in range(a.rounds):
            ours.append(figure(ours_cmd))
            nchw.append(figure(torch_cmd))
            cl.append(figure(torch_cmd + ["--channels-last"]))
        o, n, c = (statistics.median(v) for v in (ours, nchw, cl))
        print(f"| {model} | {batch} | {size} | {o:,.1f} | {n:,.1f} | {c:,.1f} | **{o / max(n, c):.2f}** |", flush=True)


if __name__ == "__main__":
    main()
