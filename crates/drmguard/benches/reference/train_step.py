#!/usr/bin/env python3
"""PyTorch reference of one ResNet-18 training step, for `docs/perf.md`.

The same step as `cargo bench -p drmguard --bench train_step`, which prints drmguard's time beside
this one as a ratio when DRMGUARD_TORCH names a Python with torch: ResNet-18 (torchvision's layout,
ImageNet normalisation inside, the network of `drmguard_step.py`) in training mode, random 64x64
images and 2-D labels, L1 loss, the loss read back as a number, backward, Adam at lr 1e-3.

Prints one JSON line: {"ms_per_step": median over the timed steps, ...}. Needs torch only.
"""

import argparse
import json
import time

import torch

from drmguard_step import ResNet18


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps, after two warm-up steps")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = ResNet18(a.width, 2).train()
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(a.batch_size, 3, a.size, a.size)
    y = torch.rand(a.batch_size, 2) - 0.5
    times = []
    for step in range(a.steps + 2):
        started = time.perf_counter()
        loss = (model(x) - y).abs().mean()
        loss.item()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if step >= 2:
            times.append((time.perf_counter() - started) * 1e3)
    times.sort()
    print(json.dumps({
        "ms_per_step": times[len(times) // 2],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "width": a.width,
        "size": a.size,
        "batch_size": a.batch_size,
        "steps": a.steps,
    }))


if __name__ == "__main__":
    main()
