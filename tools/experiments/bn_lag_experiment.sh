#!/usr/bin/env bash
# Reproduces the V3 validation-loss mystery and its fixes on the embedded Fashion-MNIST subset
# (docs/batchnorm-lag.md). Each run: 10 epochs, default recipe (SGD Nesterov, lr 0.1, cosine).
# Usage: bash tools/experiments/bn_lag_experiment.sh [OUT_DIR]     (about 15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-runs/bn-lag}
mkdir -p "$out"
bin=target/release/mobilenet
cargo build --release --quiet
run() { local name=$1; shift; [ -f "$out/$name/last.ckpt" ] || "$bin" train --output "$out/$name" "$@" 2>&1 | grep -E "^epoch|warning|top-1:" ; }
run v3-momentum-0.01 --model mobilenet_v3_small
run v3-momentum-0.01-adamw --model mobilenet_v3_small --opt adamw --lr 0.001
run v3-momentum-0.1 --model mobilenet_v3_small --bn-momentum 0.1
run v3-momentum-0.01-recalibrated --model mobilenet_v3_small --recalibrate-bn 20
run v2-momentum-0.1 --model mobilenet_v2
"$bin" compare-runs "$out/v3-momentum-0.01" "$out/v3-momentum-0.01-adamw" "$out/v3-momentum-0.1" \
    "$out/v3-momentum-0.01-recalibrated" "$out/v2-momentum-0.1" \
    --labels "V3-Small, BN momentum 0.01 (torchvision);V3-Small, momentum 0.01, AdamW 1e-3;V3-Small, BN momentum 0.1;V3-Small, 0.01 + recalibrated BN;V2, BN momentum 0.1" \
    --title "Fashion-MNIST subset: the V3 validation-loss mystery" --output docs/batchnorm-lag.png
