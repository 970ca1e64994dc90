#!/usr/bin/env python3
"""Generates the fixtures for `mobilenet predict` (tests/predict.rs) from torchvision.

Needs torch, torchvision, Pillow and safetensors, and torchvision's MobileNetV2 ImageNet weights
(`bash tools/fetch_weights.sh` puts them at weights/mobilenet_v2-b0353104.pth). CI does not run
this; it runs the Rust tests against the committed output.

The reference is exactly what a torchvision user runs:
    img = PIL.Image.open(path).convert("RGB")
    x = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()(img)     # resize 256, crop 224, normalise
    probs = model(x[None]).softmax(1)

Outputs:
  tests/fixtures/predict.safetensors   torchvision's preprocessed tensor [3, 224, 224] per photo,
                                       named by the photo's file stem (~1.8 MB)
  tests/fixtures/predict_expected.json torchvision's top-5 (index, label, prob) per photo, and
                                       the resize/crop geometry torchvision computes for a set of
                                       image sizes (odd crop margins, crops larger than the image)
  assets/imagenet_classes.txt          torchvision's 1000 ImageNet category names, one per line

With --opencv-classes FILE (opencv-doc's classification_classes_ILSVRC2012.txt) the script also
checks the shipped names against OpenCV's list: the first name of each OpenCV line must equal
torchvision's, except where torchvision renamed one of a duplicated pair.
"""
import argparse
import json
import os

import torch
import torchvision
import torchvision.transforms.functional as F
from PIL import Image
from safetensors.torch import save_file
from torchvision.models import MobileNet_V2_Weights

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
PHOTOS = ["chelsea.png", "coffee.png", "grace_hopper.jpg"]

# (width, height, resize, crop): real photo sizes, both orientations, odd margins that exercise
# Python's round-half-to-even, a long side that truncates, and crops larger than the resized
# image (torchvision pads with zeros first).
GEOMETRY_CASES = [
    (451, 300, 256, 224), (600, 400, 256, 224), (512, 600, 256, 224), (300, 451, 256, 224),
    (385, 256, 256, 224), (387, 256, 256, 224), (256, 389, 256, 224), (7, 3, 256, 224),
    (1000, 257, 256, 224), (257, 1000, 256, 224), (300, 200, 200, 224), (300, 201, 201, 224),
    (201, 201, 201, 224), (640, 480, 232, 224), (333, 500, 160, 128), (224, 224, 224, 224),
]


def geometry(width, height, resize, crop):
    """torchvision's resized size and the crop window's top-left corner in the resized image
    (negative where the crop is larger and torchvision pads)."""
    new_h, new_w = F._compute_resized_output_size((height, width), [resize])
    # Crop images whose pixels hold their own row (resp. column) index + 1; padding reads 0.
    rows = (torch.arange(new_h, dtype=torch.float64) + 1)[:, None].expand(new_h, new_w)[None]
    cols = (torch.arange(new_w, dtype=torch.float64) + 1)[None, :].expand(new_h, new_w)[None]
    rows, cols = F.center_crop(rows, [crop])[0], F.center_crop(cols, [crop])[0]

    def offset(line):
        first = int(torch.nonzero(line)[0])  # first output position that holds a real pixel
        return int(line[first]) - 1 - first

    return {
        "width": width, "height": height, "resize": resize, "crop": crop,
        "resized_width": new_w, "resized_height": new_h,
        "top": offset(rows.max(dim=1).values), "left": offset(cols.max(dim=0).values),
    }


def check_opencv(categories, path):
    lines = [l for l in open(path, encoding="utf-8").read().split("\n") if l]
    assert len(lines) == len(categories), (len(lines), len(categories))
    renamed = []
    for i, (line, name) in enumerate(zip(lines, categories)):
        first = line.split(",")[0].strip()
        if first != name:
            # torchvision's only changes: the second of two identical names gets a qualifier.
            assert name.startswith(first + " ") and sum(l.split(",")[0].strip() == first for l in lines) == 2, (i, line, name)
            renamed.append(f"{i}: '{first}' -> '{name}'")
    print(f"OpenCV's first names equal torchvision's for {len(lines) - len(renamed)} of {len(lines)} classes; "
          f"torchvision disambiguates {renamed}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", default=os.path.join(ROOT, "weights", "mobilenet_v2-b0353104.pth"))
    parser.add_argument("--opencv-classes", help="opencv-doc's classification_classes_ILSVRC2012.txt, to cross-check")
    args = parser.parse_args()
    torch.set_num_threads(4)

    meta = MobileNet_V2_Weights.IMAGENET1K_V1
    categories = meta.meta["categories"]
    with open(os.path.join(ROOT, "assets", "imagenet_classes.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(categories) + "\n")
    if args.opencv_classes:
        check_opencv(categories, args.opencv_classes)

    transform = meta.transforms()
    print("transform:", transform)
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()

    tensors, photos = {}, {}
    for name in PHOTOS:
        img = Image.open(os.path.join(FIXTURES, "photos", name)).convert("RGB")
        x = transform(img)
        with torch.no_grad():
            probs = model(x[None]).softmax(dim=1)[0]
        top = probs.topk(5)
        tensors[os.path.splitext(name)[0]] = x.contiguous()
        photos[name] = {
            "width": img.width, "height": img.height,
            "top5": [{"index": int(i), "label": categories[int(i)], "prob": float(p)}
                     for p, i in zip(top.values, top.indices)],
        }
        print(name, [(t["label"], round(t["prob"], 4)) for t in photos[name]["top5"]])

    save_file(tensors, os.path.join(FIXTURES, "predict.safetensors"))
    expected = {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "weights": os.path.basename(args.weights), "transform": str(transform),
        "photos": photos,
        "geometry": [geometry(*case) for case in GEOMETRY_CASES],
    }
    with open(os.path.join(FIXTURES, "predict_expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
