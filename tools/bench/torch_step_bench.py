#!/usr/bin/env python3
"""torch twin of examples/train_step.rs: forward, backward and SGD step of a torchvision
MobileNet on random data, medians over STEPS steps after 3 warm-up steps.
Usage: python3 tools/bench/torch_step_bench.py [MODEL] [SIZE] [BATCH] [STEPS] [THREADS]"""
import sys, time
import torch, torch.nn.functional as F, torchvision

model_name = sys.argv[1] if len(sys.argv) > 1 else "mobilenet_v3_small"
size, batch, steps, threads = (int(a) for a in (sys.argv[2:6] + ["32", "128", "20", "2"][len(sys.argv[2:6]):]))
torch.set_num_threads(threads)
torch.manual_seed(0)
model = getattr(torchvision.models, model_name)(num_classes=10).train()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=4e-5)
x, y = torch.randn(batch, 3, size, size), torch.arange(batch) % 10
fwd, bwd, stp = [], [], []
for i in range(steps + 3):
    t0 = time.perf_counter()
    loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
    t1 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    t3 = time.perf_counter()
    if i >= 3:
        fwd.append(t1 - t0); bwd.append(t2 - t1); stp.append(t3 - t2)
med = lambda v: sorted(v)[len(v) // 2] * 1e3
f, b, o = med(fwd), med(bwd), med(stp)
print(f"forward_ms: {f:.1f}\nbackward_ms: {b:.1f}\noptimizer_ms: {o:.1f}\nimages_per_s: {batch / ((f + b + o) / 1e3):.0f}")
