#!/usr/bin/env python3
"""torch's twin of `mobilenet bench-train`: full training steps (forward, cross-entropy with label
smoothing 0.1, backward, SGD-Nesterov with weight decay 4e-5) of a torchvision MobileNet on random
data, after 2 warm-up steps, for at least --seconds and 5 steps. Prints `median_ms` and
`images_per_s` of whole steps, as ours does.

Usage: python3 tools/bench/torch_train_step.py --model mobilenet_v2 --batch 128 --image-size 32 \
           --threads 2 [--channels-last] [--seconds 10]
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.model == "mobilenet_v1":
        from make_fixtures import MobileNetV1  # not in torchvision

        model = MobileNetV1(num_classes=10)
    else:
        model = getattr(torchvision.models, a.model)(num_classes=10)
    model.train()
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5)
    x = torch.randn(a.batch, 3, a.image_size, a.image_size).to(memory_format=fmt)
    y = torch.arange(a.batch) % 10

    def step():
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < a.seconds:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2] * 1e3
    print(f"torch {torch.__version__} | {'channels_last' if a.channels_last else 'NCHW'}")
    print(f"median_ms: {med:.3f}\nimages_per_s: {a.batch / (med / 1e3):.1f}\nruns: {len(times)}")


if __name__ == "__main__":
    main()
