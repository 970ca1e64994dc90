#!/usr/bin/env bash
# Side-by-side training benchmark on the full Fashion-MNIST (Debian package dataset-fashion-mnist):
# ours (`mobilenet train`, default recipe) then torchvision (tools/bench/torch_train_fashion_mnist.py,
# the same recipe), one after the other on an otherwise idle machine, two threads each.
# Usage: bash tools/bench/bench_train_fashion_mnist.sh MODEL EPOCHS [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-mobilenet_v3_small}; epochs=${2:-10}; out=${3:-runs/bench}
data=/usr/share/datasets/fashion-mnist
mkdir -p "$out"
cargo build --release --quiet
echo "== ours: $model, $epochs epochs"
start=$(date +%s.%N)
target/release/mobilenet train --data "$data" --model "$model" --epochs "$epochs" --output "$out/ours-$model-$epochs" 2>&1 | grep -E "^epoch|top-1:"
echo "ours wall seconds: $(echo "$(date +%s.%N) - $start" | bc)"
echo "== torchvision: $model, $epochs epochs"
start=$(date +%s.%N)
python3 tools/bench/torch_train_fashion_mnist.py --model "$model" --epochs "$epochs" --threads 2 --data "$data" | tee "$out/torch-$model-$epochs.log"
echo "torchvision wall seconds: $(echo "$(date +%s.%N) - $start" | bc)"
