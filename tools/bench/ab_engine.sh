#!/usr/bin/env bash
# A/B timing of two engine binaries (e.g. before and after a change), in turns so that the
# machine's drift hits both alike: 3 rounds per model, median ms of each run printed.
# Usage: bash tools/bench/ab_engine.sh OLD_BIN NEW_BIN ["v1 v2 v3_large v3_small"] [extra bench args]
# (binaries: target/release/mobilenet-engine copies, e.g. cp target/release/mobilenet-engine /tmp/old)
set -euo pipefail
A=$1; B=$2; MODELS=${3:-"v1 v2 v3_large v3_small"}; shift $(( $# < 3 ? $# : 3 )); EXTRA="$*"
for m in $MODELS; do
  a=(); b=()
  for r in 1 2 3; do
    a+=($($A bench --model $m --seconds 1.5 $EXTRA | awk '/median_ms/{print $2}'))
    b+=($($B bench --model $m --seconds 1.5 $EXTRA | awk '/median_ms/{print $2}'))
  done
  echo "$m A: ${a[*]}  B: ${b[*]}"
done
