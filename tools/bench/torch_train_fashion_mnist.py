#!/usr/bin/env python3
"""The torchvision side of docs/BENCHMARKS.md's training comparison.

Trains torchvision's MobileNet on Fashion-MNIST with the recipe `mobilenet train` uses by
default, on the same data and augmentation:
  - images resized 28 -> 32 with PIL bilinear (ours: fast_image_resize, Pillow's filter),
    normalised with the training set's own mean/std (grey replicated to 3 channels);
  - training: RandomCrop(32, padding=2) with zero padding, RandomHorizontalFlip;
  - SGD, momentum 0.9, Nesterov, lr 0.1, weight decay 4e-5 not on BN weights and biases
    (rank-1 tensors), label smoothing 0.1, batch 128, cosine schedule after a 1-epoch linear
    warmup from 0.01·lr (per iteration), dropout 0.2, BN as torchvision (V3: eps 1e-3, momentum 0.01).

Usage: python3 tools/bench/torch_train_fashion_mnist.py --model mobilenet_v3_small --epochs 10 [--threads 2]
Prints one line per epoch and a final JSON line.
"""
import argparse, gzip, json, math, os, struct, sys, time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

p = argparse.ArgumentParser()
p.add_argument("--model", default="mobilenet_v3_small")
p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--batch-size", type=int, default=128)
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--image-size", type=int, default=32)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
rng = np.random.default_rng(args.seed)


def read_idx(name):
    path = os.path.join(args.data, name)
    opener = gzip.open if os.path.exists(path + ".gz") else open
    with opener(path + ".gz" if os.path.exists(path + ".gz") else path, "rb") as f:
        data = f.read()
    rank = data[3]
    dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
    return np.frombuffer(data[4 + 4 * rank:], dtype=np.uint8).reshape(dims)


def resized(images):
    s = args.image_size
    return np.stack([np.asarray(Image.fromarray(im).resize((s, s), Image.BILINEAR)) for im in images])


train_x, train_y = resized(read_idx("train-images-idx3-ubyte")), read_idx("train-labels-idx1-ubyte").astype(np.int64)
test_x, test_y = resized(read_idx("t10k-images-idx3-ubyte")), read_idx("t10k-labels-idx1-ubyte").astype(np.int64)
mean = float(read_idx("train-images-idx3-ubyte").astype(np.float64).mean() / 255.0)
std = float((read_idx("train-images-idx3-ubyte").astype(np.float64) / 255.0).std())
# Our channel_stats are computed on the original 28x28 pixels, like these.


def to_tensor(x):
    t = torch.from_numpy(x).float().div_(255.0).sub_(mean).div_(std)
    return t.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def augment(x):
    """RandomCrop(size, padding=2) + RandomHorizontalFlip on a uint8 batch [N, S, S]."""
    n, s, _ = x.shape
    padded = np.zeros((n, s + 4, s + 4), dtype=np.uint8)
    padded[:, 2:2 + s, 2:2 + s] = x
    out = np.empty_like(x)
    dy, dx = rng.integers(0, 5, n), rng.integers(0, 5, n)
    flip = rng.random(n) < 0.5
    for i in range(n):
        crop = padded[i, dy[i]:dy[i] + s, dx[i]:dx[i] + s]
        out[i] = crop[:, ::-1] if flip[i] else crop
    return out


model = getattr(torchvision.models, args.model)(num_classes=10)
decay, no_decay = [], []
for name, param in model.named_parameters():
    (no_decay if param.ndim <= 1 else decay).append(param)
opt = torch.optim.SGD([{"params": decay, "weight_decay": 4e-5}, {"params": no_decay, "weight_decay": 0.0}],
                      lr=args.lr, momentum=0.9, nesterov=True)
steps = math.ceil(len(train_x) / args.batch_size)


def lr_at(t):
    if t < 1.0:
        return args.lr * (0.01 + 0.99 * t)
    progress = min(max((t - 1.0) / (args.epochs - 1.0), 0.0), 1.0)
    return args.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def evaluate():
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(test_x), 256):
            x, y = to_tensor(test_x[i:i + 256]), torch.from_numpy(test_y[i:i + 256])
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
    return loss / len(test_x), correct / len(test_x)


history, total_train = [], 0.0
for epoch in range(args.epochs):
    model.train()
    order = rng.permutation(len(train_x))
    start = time.time()
    for i in range(steps):
        idx = order[i * args.batch_size:(i + 1) * args.batch_size]
        if len(idx) < 2:
            continue
        for g in opt.param_groups:
            g["lr"] = lr_at(epoch + i / steps)
        x, y = to_tensor(augment(train_x[idx])), torch.from_numpy(train_y[idx])
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.time() - start
    total_train += train_s
    val_loss, val_top1 = evaluate()
    history.append({"epoch": epoch + 1, "val_loss": val_loss, "val_top1": val_top1, "train_s": train_s,
                    "images_per_s": len(train_x) / train_s})
    print(f"epoch {epoch + 1}: val loss {val_loss:.4f} top-1 {100 * val_top1:.2f}% | {len(train_x) / train_s:.0f} img/s, {train_s:.1f} s", flush=True)
print(json.dumps({"model": args.model, "epochs": args.epochs, "final_top1": history[-1]["val_top1"],
                  "train_seconds": total_train, "images_per_s": len(train_x) * args.epochs / total_train,
                  "history": history}))
