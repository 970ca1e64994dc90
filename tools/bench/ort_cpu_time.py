#!/usr/bin/env python3
"""ONNX Runtime latency as CPU time of the calling thread, for shared, busy machines.

Wall-clock medians swing 10-30% when other processes share the cores; the CPU time a run's
thread spends is the part of it that is ours. With one intra-op thread ORT runs every node on
the calling thread, so `time.thread_time()` around `session.run` is the run's CPU time (the
engine's `mobilenet-engine bench` prints the same as `min_cpu_ms` / `median_cpu_ms`).

  python3 tools/bench/ort_cpu_time.py MODEL.onnx [RUNS]

The ONNX files are those tools/bench/bench_engine_vs_ort.py writes into its --work-dir
(`mobilenet_v1_b1_s224.onnx`, ...). Same session settings as that script (1 thread, sequential,
ORT_ENABLE_ALL) and the same input (pixel i = (i % 251) / 125 - 1). Prints wall and CPU min and
median in ms.
"""
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    path = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = ((np.arange(np.prod(inp.shape)) % 251) / 125.0 - 1).astype(np.float32).reshape(inp.shape)
    for _ in range(5):
        session.run(None, {inp.name: x})
    wall, cpu = [], []
    for _ in range(runs):
        t, tc = time.perf_counter(), time.thread_time()
        session.run(None, {inp.name: x})
        cpu.append((time.thread_time() - tc) * 1e3)
        wall.append((time.perf_counter() - t) * 1e3)
    wall.sort()
    cpu.sort()
    print(f"{path.split('/')[-1]}: wall min {wall[0]:.3f} med {wall[len(wall) // 2]:.3f}  "
          f"cpu min {cpu[0]:.3f} med {cpu[len(cpu) // 2]:.3f}")


if __name__ == "__main__":
    main()
