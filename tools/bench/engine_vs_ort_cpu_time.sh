#!/usr/bin/env bash
# Batch 1, one thread: ONNX Runtime and two engine binaries (before / after a change) on AVX2 and
# AVX-512, in turns, R rounds per model. Each figure is the run's thread CPU time, minimum over a
# round (1 s of engine runs, 60 ORT runs); the rounds' figures are printed, take the median.
# CPU time rather than wall time: on a shared machine a run that is descheduled keeps its CPU time.
# Usage: R=5 bash tools/bench/engine_vs_ort_cpu_time.sh OLD_BIN NEW_BIN ONNX_DIR [PYTHON]
# (ONNX_DIR: a --work-dir of tools/bench/bench_engine_vs_ort.py, which holds the *_b1_s224.onnx;
# PYTHON: one with onnxruntime, default .venv/bin/python). Both binaries must print min_cpu_ms:
# mobilenet-engine from b89a738 on (for an older one, build it with that commit's src/bin).
set -euo pipefail
OLD=$1; NEW=$2; ONNX=$3; PY=${4:-.venv/bin/python}; R=${R:-5}
HERE=$(dirname "$0")
for m in v1 v2 v3_large v3_small; do
  declare -A C=()
  for r in $(seq "$R"); do
    C[ort]+=" $("$PY" "$HERE/ort_cpu_time.py" "$ONNX/mobilenet_${m}_b1_s224.onnx" 60 | sed 's/.*cpu min \([0-9.]*\).*/\1/')"
    for cfg in old:avx2 new:avx2 old:avx512 new:avx512; do
      bin=$OLD; [ "${cfg%:*}" = new ] && bin=$NEW
      C[$cfg]+=" $(MOBILENET_ENGINE_ISA=${cfg#*:} "$bin" bench --model "$m" --seconds 1 | awk '/min_cpu_ms/{print $2}')"
    done
  done
  for k in ort old:avx2 new:avx2 old:avx512 new:avx512; do echo "$m $k cpu ms:${C[$k]}"; done
  unset C
done
