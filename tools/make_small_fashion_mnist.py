#!/usr/bin/env python3
"""Builds data/fashion-mnist-small from the Debian package dataset-fashion-mnist
(/usr/share/datasets/fashion-mnist): the first 1000 training and 200 test images of each class,
in their original order, as gzipped idx files (the format of the original)."""
import gzip, os, struct, sys
import numpy as np

SRC = "/usr/share/datasets/fashion-mnist"
DST = os.path.join(os.path.dirname(__file__), "..", "data", "fashion-mnist-small")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

def read(name):
    with gzip.open(os.path.join(SRC, name)) as f:
        data = f.read()
    rank = data[3]
    dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
    return np.frombuffer(data[4 + 4 * rank:], dtype=np.uint8).reshape(dims)

def write(name, array):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    # mtime=0 keeps the files byte-identical from run to run.
    with open(os.path.join(DST, name + ".gz"), "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(header + array.tobytes())

os.makedirs(DST, exist_ok=True)
for prefix, per_class in [("train", 1000), ("t10k", 200)]:
    images, labels = read(f"{prefix}-images-idx3-ubyte.gz"), read(f"{prefix}-labels-idx1-ubyte.gz")
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
    write(f"{prefix}-images-idx3-ubyte", images[keep])
    write(f"{prefix}-labels-idx1-ubyte", labels[keep])
    print(prefix, len(keep), file=sys.stderr)
with open(os.path.join(DST, "classes.txt"), "w") as f:
    f.write("\n".join(CLASSES) + "\n")
