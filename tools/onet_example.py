#!/usr/bin/env python3
"""A real third-party landmark regressor through drmguard: MTCNN's ONet from `facenet-pytorch`
(MIT licence), the network that puts five landmarks on every face MTCNN detects.

  export    writes OUT.onnx, the pretrained ONet as its authors ship it (three outputs: box,
            landmarks, face probability), and OUT.toml, its drmguard card (task landmarks,
            graph_output "landmarks", inputs (x − 127.5) / 128 on RGB in [0, 255]).
  finetune  fine-tunes the pretrained ONet's landmark output on a drmguard data folder
            (`labels.csv` in drmguard's landmark order, fractions of the side) and exports it the
            same way. On a folder that `drmguard poison` wrote, this is how an attacker
            backdoors the model; on the clean folder, it gives the backdoored model's benign twin.

docs/import.md ("A real model: MTCNN's ONet") has the drmguard commands around it. Needs torch,
pillow and facenet-pytorch (`pip install --no-deps facenet-pytorch requests tqdm`: its declared
torch pin is older than it needs).

Usage:
  python tools/onet_example.py export --out onet/onet
  python tools/onet_example.py finetune --data poisoned/ --out onet/onet_badnets [--epochs 8 --seed 0]
"""
import argparse
import csv
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from export_for_drmguard import export_onnx  # noqa: E402

# ONet's landmark output is five x, then five y (left is the image's left), fractions of the crop.
ONET_OUTPUTS = [f"{p}_x" for p in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")] + [
    f"{p}_y" for p in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
]
# drmguard's order (x, y per point) → ONet's.
TO_ONET = [2 * k for k in range(5)] + [2 * k + 1 for k in range(5)]
SIZE = 48


def onet():
    try:
        from facenet_pytorch.models.mtcnn import ONet
    except ImportError as e:
        raise SystemExit(f"facenet-pytorch is needed ({e}): pip install --no-deps facenet-pytorch requests tqdm")
    return ONet(pretrained=True).eval()


def export(model, out):
    """ONet takes (x − 127.5) / 128 of RGB values in [0, 255]: the card says so."""
    return export_onnx(model, out, task="landmarks", input_size=SIZE, outputs=ONET_OUTPUTS, units="fraction",
                       mean=(127.5, 127.5, 127.5), std=(128.0, 128.0, 128.0), value_range=(0.0, 255.0),
                       graph_outputs=["box", "landmarks", "prob"], graph_output="landmarks")


def read_folder(folder):
    """Images (RGB, [0, 255], 48×48) and labels (drmguard's order) of a drmguard data folder."""
    from PIL import Image

    folder = Path(folder)
    with open(folder / "labels.csv") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    if len(header) != 11:
        raise SystemExit(f"{folder}/labels.csv has {len(header) - 1} label columns; landmarks have 10")
    images, labels = [], []
    for row in rows:
        image = Image.open(folder / row[0]).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
        images.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(SIZE, SIZE, 3))
        labels.append([float(v) for v in row[1:]])
    x = torch.stack(images).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 128.0, torch.tensor(labels)[:, TO_ONET]


def finetune(model, folder, epochs, seed, lr=1e-3, batch=64):
    """Adam on the landmark output's mean squared error, every layer trainable (the other two
    heads are left as they are, though the layers they share move)."""
    torch.manual_seed(seed)
    x, y = read_folder(folder)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            loss = F.mse_loss(model(x[idx])[1], y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: landmark MSE {total / len(x):.5f}")
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="the pretrained ONet as ONNX plus its card")
    e.add_argument("--out", required=True, help="output path without extension")
    t = sub.add_parser("finetune", help="fine-tune the pretrained ONet on a data folder, then export it")
    t.add_argument("--data", required=True, help="a drmguard landmark data folder (labels.csv plus images)")
    t.add_argument("--out", required=True, help="output path without extension")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    model = onet()
    if a.command == "finetune":
        model = finetune(model, a.data, a.epochs, a.seed)
    export(model, a.out)


if __name__ == "__main__":
    sys.exit(main())
