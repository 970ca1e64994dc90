#!/usr/bin/env python3
"""Generates the torchvision parity fixtures under tests/fixtures/.

Needs torch, torchvision and safetensors (pip install torch torchvision safetensors). CI does not
run this; it runs the Rust tests against the committed output.

Weights and inputs are not committed: both this script and the Rust tests fill every tensor from
a deterministic generator keyed by the tensor's name (`fill` below, `tests/common/mod.rs`), so
only torchvision's outputs need to be stored. Every BatchNorm gets random running statistics and
affine parameters, so BN is really exercised.

Outputs:
  parity.safetensors    eval logits for every case, V3-Small train-mode loss, grads, BN stats
  torchvision_keys.json state_dict keys and shapes for every case (keys must match exactly)
  tiny_v3_small.pth / tiny_v3_small_legacy.pth / tiny_v3_small.safetensors: a real torchvision
      state_dict (with num_batches_tracked) in the zip, legacy and safetensors formats, and its
      logits, for the loader tests.
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
torch.set_num_threads(2)

MASK64 = (1 << 64) - 1


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def uniform(name: str, n: int) -> np.ndarray:
    """n floats in [-1, 1), exactly representable in f32: splitmix64 keyed by FNV-1a(name)."""
    seed = np.uint64(fnv1a64(name))
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)  # [0, 1), 24 bits
    return (u * 2.0 - 1.0).astype(np.float32)


def fill(name: str, shape) -> torch.Tensor:
    """The deterministic value of a state_dict tensor. Mirrored in tests/common/mod.rs."""
    n = int(np.prod(shape)) if len(shape) else 1
    u = uniform(name, n)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        v = np.float32(1.0) + np.float32(0.5) * u  # [0.5, 1.5)
    elif leaf == "running_mean":
        v = np.float32(0.1) * u
    elif leaf == "bias":
        v = np.float32(0.1) * u
    elif leaf == "weight" and len(shape) == 1:  # BN gamma
        v = np.float32(1.0) + np.float32(0.25) * u
    else:  # conv [out, in/g, k, k] or linear [out, in]: uniform(-a, a), a = sqrt(3 / fan_in)
        fan_in = int(np.prod(shape[1:]))
        v = u * np.float32(math.sqrt(3.0 / fan_in))
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def fill_model(model: nn.Module):
    sd = model.state_dict()
    new = {}
    for k, t in sd.items():
        if k.endswith("num_batches_tracked"):
            new[k] = t
        else:
            new[k] = fill(k, list(t.shape))
    model.load_state_dict(new)


def make_input(name: str, shape) -> torch.Tensor:
    return torch.from_numpy(uniform(name, int(np.prod(shape))).reshape(shape))


# ---- MobileNetV1: not in torchvision; the layout our crate uses (see src/v1.rs) ----
def _make_divisible(v, divisor=8, min_value=None):
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_bn_act(inp, oup, k, s, groups, act):
    return nn.Sequential(
        nn.Conv2d(inp, oup, k, s, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        act(),
    )


class MobileNetV1(nn.Module):
    BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def __init__(self, num_classes=1000, width_mult=1.0, dropout=0.2, act=nn.ReLU):
        super().__init__()
        c = _make_divisible(32 * width_mult)
        layers = [conv_bn_act(3, c, 3, 2, 1, act)]
        for out, s in self.BLOCKS:
            o = _make_divisible(out * width_mult)
            layers.append(nn.Sequential(conv_bn_act(c, c, 3, s, c, act), conv_bn_act(c, o, 1, 1, 1, act)))
            c = o
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def build(arch, width, classes, dropout=0.2):
    if arch == "mobilenet_v1":
        return MobileNetV1(num_classes=classes, width_mult=width, dropout=dropout)
    if arch == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(num_classes=classes, width_mult=width, dropout=dropout)
    return getattr(torchvision.models, arch)(num_classes=classes, width_mult=width, dropout=dropout)


EVAL_CASES = [
    ("mobilenet_v1", 1.0),
    ("mobilenet_v2", 1.0),
    ("mobilenet_v3_large", 1.0),
    ("mobilenet_v3_small", 1.0),
    ("mobilenet_v2", 0.5),
    ("mobilenet_v3_large", 0.5),
    ("mobilenet_v3_small", 0.5),
]


def case_name(arch, width):
    return f"{arch}_w{width}"


def main():
    os.makedirs(OUT, exist_ok=True)
    tensors = {}
    keys = {}
    x = make_input("input", [2, 3, 224, 224])
    for arch, width in EVAL_CASES:
        name = case_name(arch, width)
        model = build(arch, width, 1000)
        fill_model(model)
        model.eval()
        with torch.no_grad():
            tensors[f"{name}.logits"] = model(x).contiguous()
        keys[name] = [[k, list(t.shape)] for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked")]
        print(name, "logit std", float(tensors[f"{name}.logits"].std()), file=sys.stderr)

    # Train mode: V3-Small, dropout 0, 10 classes, batch 4 at 96x96.
    model = build("mobilenet_v3_small", 1.0, 10, dropout=0.0)
    fill_model(model)
    model.train()
    xt = make_input("train_input", [4, 3, 96, 96])
    target = torch.tensor([3, 7, 0, 9])
    logits = model(xt)
    loss = F.cross_entropy(logits, target)
    loss.backward()
    sd = dict(model.named_parameters())
    tensors["train.logits"] = logits.detach().contiguous()
    tensors["train.loss"] = loss.detach().reshape(1)
    for k in ["features.0.0.weight", "features.1.block.0.0.weight", "features.4.block.1.0.weight", "classifier.3.weight"]:
        tensors[f"train.grad.{k}"] = sd[k].grad.contiguous()
    state = model.state_dict()
    for k in ["features.0.1", "features.1.block.0.1", "features.12.1"]:
        tensors[f"train.{k}.running_mean"] = state[k + ".running_mean"].contiguous()
        tensors[f"train.{k}.running_var"] = state[k + ".running_var"].contiguous()
    keys["train_v3_small_10"] = [[k, list(t.shape)] for k, t in state.items() if not k.endswith("num_batches_tracked")]

    save_file(tensors, os.path.join(OUT, "parity.safetensors"))
    with open(os.path.join(OUT, "torchvision_keys.json"), "w") as f:
        json.dump(keys, f)

    # A real torchvision state_dict, as torch.save writes it, in three formats.
    torch.manual_seed(0)
    tiny = torchvision.models.mobilenet_v3_small(num_classes=5, width_mult=0.25)
    tiny.train()
    with torch.no_grad():  # a few train-mode passes so running stats and num_batches_tracked move
        for _ in range(3):
            tiny(torch.randn(4, 3, 64, 64))
    tiny.eval()
    sd = tiny.state_dict()
    torch.save(sd, os.path.join(OUT, "tiny_v3_small.pth"))
    torch.save(sd, os.path.join(OUT, "tiny_v3_small_legacy.pth"), _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(OUT, "tiny_v3_small.safetensors"))
    xi = make_input("tiny_input", [2, 3, 64, 64])
    with torch.no_grad():
        save_file({"input": xi, "logits": tiny(xi).contiguous()}, os.path.join(OUT, "tiny_v3_small_io.safetensors"))
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)), file=sys.stderr)


if __name__ == "__main__":
    main()
