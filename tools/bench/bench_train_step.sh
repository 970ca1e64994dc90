#!/usr/bin/env bash
# Training-step throughput, ours vs torch, measured one after the other in the same run.
# Usage: bash tools/bench/bench_train_step.sh [MODEL] [SIZE] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-mobilenet_v3_small}; size=${2:-32}; batch=${3:-128}
cargo build --release --quiet --example train_step
ours=$(target/release/examples/train_step "$model" "$size" "$batch" 20)
theirs=$(python3 tools/bench/torch_step_bench.py "$model" "$size" "$batch" 20 2)
echo "== ours (burn flex)"; echo "$ours"
echo "== torch $(python3 -c 'import torch; print(torch.__version__)'), 2 threads"; echo "$theirs"
o=$(echo "$ours" | awk '/images_per_s/{print $2}'); t=$(echo "$theirs" | awk '/images_per_s/{print $2}')
echo "ratio ours/torch images_per_s: $(echo "scale=2; $o / $t" | bc)"
