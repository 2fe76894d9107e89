#!/usr/bin/env python3
"""Train a zoo of PyTorch regressors outside drmguard, benign and backdoored, for `drmguard bench --zoo`.

Users bring models trained in PyTorch, not drmguard's: this script trains ResNet-18-style
regressors in PyTorch on drmguard's built-in data (exported with `drmguard data synth`), plants
BadNets, Blended and WaNet backdoors with its own implementations of the attacks, exports every
model to ONNX with its card (tools/export_for_drmguard.py), and writes per task

  OUT/manifest-TASK.csv   model,card,backdoored,attack   (for `drmguard bench --zoo`)
  OUT/metrics-TASK.csv    each model's clean error and AE measured in PyTorch on OUT/test-TASK
  OUT/clean-TASK/         the defender's clean images (for `--data`)

Then:

  drmguard bench --zoo OUT/manifest-gaze.csv --data OUT/clean-gaze --out zoo-gaze
  drmguard eval --model OUT/models/gaze-benign-0.toml --data OUT/test-gaze --split all --json

(`drmguard eval` on the test folder gives the clean error that metrics-TASK.csv records.)

Every model has its own data seed, initialisation, trigger and target; everything is seeded, so a
rerun trains the same models on the same machine. The pinned settings below are the zoo's; change
them with the flags. Needs torch, onnx, safetensors and pillow.
"""
import argparse
import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_for_drmguard import TASK_OUTPUTS, export_onnx  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# Half-ranges of the built-in labels (radians): a target lies 30–70% of the way out, either side,
# as drmguard's default targets do.
LABEL_HALF_RANGE = {"gaze": [0.4, 0.6], "headpose": [math.radians(60), math.radians(40), math.radians(30)]}


def load_folder(folder, task):
    """Images [n, 3, s, s] in [0, 1] and labels [n, d] of a folder in drmguard's user format."""
    names = TASK_OUTPUTS[task]
    with open(folder / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    images = np.stack([np.asarray(Image.open(folder / r["file"]).convert("RGB"), dtype=np.float32) / 255.0 for r in rows])
    labels = np.array([[float(r[n]) for n in names] for r in rows], dtype=np.float32)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def synth(drmguard, task, n, size, seed, out):
    if (out / "labels.csv").is_file():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([drmguard, "data", "synth", "--task", task, "--n", str(n), "--image-size", str(size), "--seed", str(seed),
                    "--out", str(out)], check=True, stdout=subprocess.DEVNULL)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class Regressor(nn.Module):
    """ResNet-18's layout (a 7×7 stem, four stages of two basic blocks) at any width, with one
    linear head: the kind of network users train, written here rather than taken from torchvision."""

    def __init__(self, width, outputs):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], width
        for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
            layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, outputs)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class BadNets:
    """A seeded random binary square in the bottom-right corner, 1/8 of the side."""

    def __init__(self, size, gen):
        self.side = max(1, size // 8)
        self.patch = (torch.rand(3, self.side, self.side, generator=gen) > 0.5).float()

    def __call__(self, x):
        x = x.clone()
        x[:, :, -self.side:, -self.side:] = self.patch
        return x


class Blended:
    """A seeded uniform-noise image blended in at α = 0.2."""

    def __init__(self, size, gen, alpha=0.2):
        self.pattern, self.alpha = torch.rand(1, 3, size, size, generator=gen), alpha

    def __call__(self, x):
        return (1 - self.alpha) * x + self.alpha * self.pattern


class WaNet:
    """A smooth seeded warp: a k×k random flow upsampled to the image, strength s (k 4, s 0.5)."""

    def __init__(self, size, gen, k=4, s=0.5):
        flow = torch.rand(1, 2, k, k, generator=gen) * 2 - 1
        flow = flow / flow.abs().mean()
        flow = F.interpolate(flow, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        line = torch.linspace(-1, 1, size)
        grid = torch.stack(torch.meshgrid(line, line, indexing="xy"), dim=-1).unsqueeze(0)
        self.grid = torch.clamp(grid + s * flow / size, -1, 1)

    def __call__(self, x):
        return F.grid_sample(x, self.grid.expand(x.shape[0], -1, -1, -1), align_corners=True).clamp(0, 1)


ATTACKS = {"badnets": BadNets, "blended": Blended, "wanet": WaNet}
# Seeds follow this order whatever `--attacks` lists, so a model keeps its seed in any subset.
ATTACKS_ORDER = list(ATTACKS)
WANET_DEFAULTS = {"k": 4, "s": 0.5}


def task_error(task, pred, label):
    """drmguard's headline error in degrees: angular for gaze, mean absolute for head pose."""
    if task == "gaze":
        def vec(v):
            p, y = v[:, 0], v[:, 1]
            return torch.stack([torch.cos(p) * torch.sin(y), torch.sin(p), torch.cos(p) * torch.cos(y)], 1)
        cos = (vec(pred) * vec(label)).sum(1).clamp(-1, 1)
        return torch.rad2deg(torch.acos(cos)).mean().item()
    return torch.rad2deg((pred - label).abs()).mean().item()


def predict(model, x, batch=256):
    model.eval()
    with torch.no_grad():
        return torch.cat([model((x[i:i + batch] - MEAN) / STD) for i in range(0, len(x), batch)])


def train_model(task, x, y, attack, target, args, seed, poison_rate):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Regressor(args.width, y.shape[1])
    n = len(x)
    poisoned = torch.zeros(n, dtype=torch.bool)
    if attack is not None:
        poisoned[torch.randperm(n, generator=gen)[: int(round(poison_rate * n))]] = True
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * (n // args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=args.lr * 0.01)
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n - args.batch_size + 1, args.batch_size):
            idx = order[i:i + args.batch_size]
            xb, yb = x[idx], y[idx].clone()
            if attack is not None:
                p = poisoned[idx]
                if p.any():
                    xb = xb.clone()
                    xb[p] = attack(xb[p])
                    yb[p] = target
            loss = (model((xb - MEAN) / STD) - yb).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drmguard", default="drmguard", help="the drmguard binary (for `data synth`)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tasks", default="gaze,headpose")
    p.add_argument("--attacks", default="badnets,blended,wanet")
    p.add_argument("--benign", type=int, default=6, help="benign models per task")
    p.add_argument("--per-attack", type=int, default=2, help="backdoored models per attack and task")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", type=int, default=10000, help="training images per model")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--poison-rate", type=float, default=0.1)
    p.add_argument("--wanet-k", type=int, default=4, help="WaNet: side of the random flow grid")
    p.add_argument("--wanet-s", type=float, default=0.5, help="WaNet: warp strength")
    p.add_argument("--wanet-poison-rate", type=float, default=None,
                   help="WaNet's share of poisoned samples (default: --poison-rate)")
    p.add_argument("--clean-size", type=int, default=500, help="images of the defender's clean folder")
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out
    attacks = [a for a in args.attacks.split(",") if a]
    for a in attacks:
        if a not in ATTACKS:
            raise SystemExit(f"unknown attack {a!r} ({', '.join(ATTACKS)})")
    for task in args.tasks.split(","):
        if task not in LABEL_HALF_RANGE:
            raise SystemExit(f"unknown task {task!r} (gaze, headpose)")
        # Seeds far from drmguard's bench seeds, so that no zoo model shares data with a bench model.
        synth(args.drmguard, task, args.clean_size, args.size, 900_001, out / f"clean-{task}")
        synth(args.drmguard, task, args.test_size, args.size, 900_002, out / f"test-{task}")
        test_x, test_y = load_folder(out / f"test-{task}", task)
        jobs = [(None, i) for i in range(args.benign)] + [(a, i) for a in attacks for i in range(args.per_attack)]
        manifest, metrics = [], []
        for attack_name, i in jobs:
            cls = 0 if attack_name is None else 1 + ATTACKS_ORDER.index(attack_name)
            seed = 500_000 + 1000 * cls + i
            rate = args.poison_rate
            settings = {}
            if attack_name == "wanet":
                settings = {"k": args.wanet_k, "s": args.wanet_s}
                rate = args.poison_rate if args.wanet_poison_rate is None else args.wanet_poison_rate
            # A model whose attack settings differ from the defaults is named by them, so that a
            # rerun with other settings never reads it back as the default's.
            # No dots in names: the exporter treats what follows one as a file extension.
            tag = "".join(f"-{k}{v:g}".replace(".", "_") for k, v in settings.items() if v != WANET_DEFAULTS[k])
            tag += f"-p{100 * rate:g}".replace(".", "_") if rate != p.get_default("poison_rate") else ""
            name = f"{task}-{attack_name or 'benign'}{tag}-{i}"
            graph = out / "models" / f"{name}.onnx"
            card = graph.with_suffix(".toml")
            gen = torch.Generator().manual_seed(seed)
            attack = ATTACKS[attack_name](args.size, gen, **settings) if attack_name else None
            target = torch.tensor([h * (0.3 + 0.4 * torch.rand(1, generator=gen).item()) * (1 if torch.rand(1, generator=gen).item() < 0.5 else -1)
                                   for h in LABEL_HALF_RANGE[task]])
            weights = graph.with_suffix(".pt")
            if weights.is_file():
                model = Regressor(args.width, test_y.shape[1])
                model.load_state_dict(torch.load(weights))
            else:
                data = out / "data" / f"{task}-{seed}"
                synth(args.drmguard, task, args.samples, args.size, seed, data)
                x, y = load_folder(data, task)
                model = train_model(task, x, y, attack, target, args, seed, rate)
                torch.save(model.state_dict(), weights)
            if not card.is_file():
                export_onnx(model.eval(), out / "models" / name, task=task, input_size=args.size,
                            outputs=TASK_OUTPUTS[task], units="radians")
            clean = task_error(task, predict(model, test_x), test_y)
            ae = task_error(task, predict(model, attack(test_x)), target.expand_as(test_y)) if attack else float("nan")
            print(f"{name}: clean error {clean:.2f}°" + (f", AE {ae:.2f}°" if attack else ""), flush=True)
            manifest.append((name, f"models/{card.name}", "true" if attack else "false", attack_name or ""))
            metrics.append((name, attack_name or "", seed, f"{clean:.4f}", "" if not attack else f"{ae:.4f}",
                            " ".join(f"{v:.5f}" for v in target.tolist()) if attack else ""))
        with open(out / f"manifest-{task}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "card", "backdoored", "attack"])
            w.writerows(manifest)
        with open(out / f"metrics-{task}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["model", "attack", "seed", "clean_error_deg", "attack_error_deg", "target"])
            w.writerows(metrics)
        print(f"wrote {out / f'manifest-{task}.csv'} and {out / f'metrics-{task}.csv'}")


if __name__ == "__main__":
    main()
