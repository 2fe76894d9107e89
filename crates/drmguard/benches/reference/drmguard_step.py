#!/usr/bin/env python3
"""PyTorch reference of one DRMGuard reverse-engineering step, for `docs/perf.md`.

It mirrors `crates/drmguard/src/defenses/drmguard.rs` operation for operation at the same sizes,
so that `cargo bench -p drmguard --bench drmguard_step` can print drmguard's step time beside
PyTorch's as a ratio (set DRMGUARD_TORCH to a Python that has torch):

- the suspect: ResNet-18 at a given width (torchvision's layout, ImageNet normalisation inside),
  frozen, in inference mode (BatchNorm on running statistics), gradients flowing to the images;
- the generator: drmguard's U-Net or encoder-decoder (3x3 conv + BatchNorm + ReLU, three 2x
  max-pool down-samplings, bilinear up-sampling with corners aligned, tanh(x) / (2 + 1e-7) + 0.5
  output), training mode;
- one step: the MTR input-gradient pass (|d sum f(x) / dx| averaged over batch and channels,
  divided by its maximum, momentum 0.9), G(x), the suspect's features and outputs on G(x), output
  variance, L1 weighted by 1 + gamma M, the variance of the feature angles, the loss read back as a
  number (drmguard checks it is finite), backward, Adam.

Prints one JSON line: {"ms_per_step": mean over the timed steps, ...}. Needs torch only.
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, k, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = conv_bn(cin, cout, 3, stride)
        self.b = conv_bn(cout, cout, 3, 1)
        self.down = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.b(F.relu(self.a(x)))
        return F.relu(out + (self.down(x) if self.down is not None else x))


class ResNet18(nn.Module):
    def __init__(self, width, outputs):
        super().__init__()
        ch = [width, 2 * width, 4 * width, 8 * width]
        self.stem = conv_bn(3, width, 7, 2)
        stages = []
        cin = width
        for i, c in enumerate(ch):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(cin, c, stride), BasicBlock(c, c, 1)]
            cin = c
        self.blocks = nn.Sequential(*stages)
        self.fc = nn.Linear(ch[3], outputs)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def features(self, x):
        x = (x - self.mean) / self.std
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2, 1)
        return self.blocks(x).mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.features(x))


class Generator(nn.Module):
    def __init__(self, kind, w):
        super().__init__()
        w1, w2, w3 = w, 2 * w, 4 * w
        if kind == "unet":
            layout = [(3, w1), (w1, w1), (w1, w2), (w2, w2), (w2, w3), (w3, w3), (w3, w3),
                      (2 * w3, w2), (w2, w2), (2 * w2, w1), (w1, w1), (2 * w1, 3), (3, 3)]
        else:
            layout = [(3, w1), (w1, w1), (w1, w2), (w2, w2), (w2, w3), (w3, w3),
                      (w3, w3), (w3, w3), (w3, w2), (w2, w2), (w2, w1), (w1, w1), (w1, 3)]
        self.kind = kind
        self.c = nn.ModuleList(
            nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout)) for cin, cout in layout
        )

    def forward(self, x):
        c = self.c
        r = lambda i, t: F.relu(c[i](t))  # noqa: E731
        pool = lambda t: F.max_pool2d(t, 2, 2)  # noqa: E731
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)  # noqa: E731
        if self.kind == "unet":
            s1 = r(1, r(0, x))
            s2 = r(3, r(2, pool(s1)))
            s3 = r(5, r(4, pool(s2)))
            b = up(r(6, pool(s3)))
            u3 = r(8, r(7, torch.cat([b, s3], 1)))
            u2 = r(10, r(9, torch.cat([up(u3), s2], 1)))
            u1 = r(11, torch.cat([up(u2), s1], 1))
            out = c[12](u1)
        else:
            for stage in range(3):
                x = pool(r(2 * stage + 1, r(2 * stage, x)))
            x = up(r(6, x))
            x = up(r(8, r(7, x)))
            x = up(r(10, r(9, x)))
            out = c[12](r(11, x))
        return torch.tanh(out) / (2.0 + 1e-7) + 0.5


def feature_angles(z, weight):
    cos = (z @ weight.t()) / (z.norm(dim=1, keepdim=True) * weight.norm(dim=1).view(1, -1) + 1e-8)
    return torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=16, help="suspect ResNet-18 width")
    p.add_argument("--generator", choices=["unet", "encoder-decoder"], default="unet")
    p.add_argument("--generator-width", type=int, default=16)
    p.add_argument("--mtr", choices=["loss", "off"], default="loss")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--clean", type=int, default=100, help="images in the clean set")
    p.add_argument("--steps", type=int, default=5, help="timed steps, after one warm-up step")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    lambda1, lambda2, beta, gamma = 20.0, 800.0, 0.9, 4.0

    model = ResNet18(a.width, 2).to(dev).eval().requires_grad_(False)
    weight = model.fc.weight.detach()
    gen = Generator(a.generator, a.generator_width).to(dev).train()
    optim = torch.optim.Adam(gen.parameters(), lr=1e-3)
    clean = torch.rand(a.clean, 3, a.size, a.size, device=dev)
    attention = None

    def step(i):
        nonlocal attention
        idx = torch.randperm(a.clean, device=dev)[: a.batch_size]
        x = clean[idx]
        w4 = None
        if a.mtr == "loss":
            xs = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(model(xs).sum(), xs)
            s = g.abs().mean(dim=(0, 1))
            s = s / (s.max() + 1e-12)
            attention = s if attention is None else attention * beta + s * (1 - beta)
            w4 = (attention * gamma + 1.0).view(1, 1, a.size, a.size)
        reversed_ = gen(x)
        z = model.features(reversed_)
        y = model.fc(z)
        output_variance = y.var(dim=0, unbiased=False).mean()
        diff = (reversed_ - x).abs()
        similarity = (diff * w4).mean() if w4 is not None else diff.mean()
        feature_term = feature_angles(z, weight).var(dim=0, unbiased=False).mean()
        loss = output_variance * lambda1 + similarity + feature_term * lambda2
        if not torch.isfinite(loss).item():
            raise SystemExit(f"loss became {loss.item()} at step {i}")
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    step(-1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for i in range(a.steps):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - started) * 1e3 / a.steps
    print(json.dumps({
        "ms_per_step": ms,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": a.device,
        "width": a.width,
        "generator": a.generator,
        "generator_width": a.generator_width,
        "mtr": a.mtr,
        "size": a.size,
        "batch_size": a.batch_size,
        "steps": a.steps,
    }))


if __name__ == "__main__":
    main()
