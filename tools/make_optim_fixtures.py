#!/usr/bin/env python3
"""tests/fixtures/optim.safetensors: three steps of torch.optim.SGD (Nesterov, weight decay),
torch.optim.AdamW, and timm's RMSpropTF (transcribed below; timm is not needed) on a matrix
parameter (decayed) and a vector parameter (not decayed, like BN weights and biases)."""
import os
import torch
from safetensors.torch import save_file

torch.manual_seed(0)
W0, B0 = torch.randn(3, 4), torch.randn(5)
GRADS = [(torch.randn(3, 4), torch.randn(5)) for _ in range(3)]
LRS = [0.1, 0.05, 0.02]
WD = 0.01
out = {"w0": W0, "b0": B0}
for i, (gw, gb) in enumerate(GRADS):
    out[f"gw{i}"], out[f"gb{i}"] = gw, gb


def run(make):
    w, b = W0.clone().requires_grad_(), B0.clone().requires_grad_()
    opt = make([{"params": [w], "weight_decay": WD}, {"params": [b], "weight_decay": 0.0}])
    for (gw, gb), lr in zip(GRADS, LRS):
        for g in opt.param_groups:
            g["lr"] = lr
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
    return w.detach(), b.detach()


out["sgd.w"], out["sgd.b"] = run(lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, nesterov=True))
out["adamw.w"], out["adamw.b"] = run(lambda g: torch.optim.AdamW(g, lr=0.1, betas=(0.9, 0.999), eps=1e-8))


def rmsprop_tf(p, grads, lrs, wd, alpha=0.9, eps=1e-3, momentum=0.9):
    """timm.optim.RMSpropTF with lr_in_momentum=True, decoupled_decay=False."""
    p = p.clone().double()
    square_avg = torch.ones_like(p)
    buf = torch.zeros_like(p)
    for g, lr in zip(grads, lrs):
        g = g.double() + wd * p
        square_avg.add_((g * g - square_avg) * (1 - alpha))  # = alpha*sa + (1-alpha)*g^2
        avg = square_avg.add(eps).sqrt()
        buf.mul_(momentum).add_(g / avg * lr)
        p = p - buf
    return p.float()


out["rmsproptf.w"] = rmsprop_tf(W0, [g for g, _ in GRADS], LRS, WD)
out["rmsproptf.b"] = rmsprop_tf(B0, [g for _, g in GRADS], LRS, 0.0)
save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "optim.safetensors"))
