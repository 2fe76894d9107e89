#!/usr/bin/env python3
"""Writes the PyTorch fixtures of drmguard's import tests (crates/drmguard/tests/fixtures/torch).

Three narrow torchvision ResNets (stem width 2, so that the files stay small) built from
torchvision's own blocks, hence with torchvision's parameter names, each saved the way models
reach users:

  r18: a nested checkpoint {"epoch", "state_dict"} with DataParallel's `module.` prefix (.pth);
       gaze, BGR input in [0, 255], outputs (pitch, yaw) in radians.
  r34: a plain state dict in safetensors; head pose, outputs (roll, yaw, -pitch) in degrees;
       also exported with torch.onnx.export as r34.onnx, with the same card (r34-onnx.toml).
  r50: a plain state dict (.pt); head pose, outputs (yaw, pitch, roll) in radians.

Each comes with its drmguard model card (TOML). reference.safetensors holds two RGB images in
[0, 1] (`input`) and, per model, the outputs in drmguard's convention (task order, radians:
`NAME.output`) and the gradient of their sum with respect to the input (`NAME.input_grad`),
both computed here, independently of drmguard.

Usage: python tools/make_torch_fixtures.py [OUT_DIR]   (needs torch, torchvision, safetensors)
"""
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

SIZE = 32
WIDTH = 2


def narrow_resnet(block, layers, width, outputs):
    """torchvision's ResNet with a stem of `width` channels instead of 64."""
    model = ResNet(block, layers, num_classes=outputs)
    model.inplanes = width
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.layer1 = model._make_layer(block, width, layers[0])
    model.layer2 = model._make_layer(block, 2 * width, layers[1], stride=2)
    model.layer3 = model._make_layer(block, 4 * width, layers[2], stride=2)
    model.layer4 = model._make_layer(block, 8 * width, layers[3], stride=2)
    model.fc = nn.Linear(8 * width * block.expansion, outputs)
    return model


def randomise_batch_norms(model, generator):
    """Running statistics and affine parameters away from their initial values, so that the test
    sees whether they are loaded."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            m.weight.data.copy_(1.0 + 0.2 * torch.randn(n, generator=generator))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=generator))


def preprocess(x, card):
    lo, hi = card["range"]
    x = x * (hi - lo) + lo
    if card["channel_order"] == "bgr":
        x = x.flip(1)
    mean = torch.tensor(card["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(card["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


TASK_OUTPUTS = {"gaze": ["pitch", "yaw"], "headpose": ["yaw", "pitch", "roll"]}


def to_task_convention(raw, card):
    """Model outputs to drmguard's: the task's order, radians."""
    scale = math.pi / 180.0 if card["units"] == "degrees" else 1.0
    columns = []
    for name in TASK_OUTPUTS[card["task"]]:
        for i, declared in enumerate(card["names"]):
            if declared.lstrip("-") == name:
                sign = -1.0 if declared.startswith("-") else 1.0
                columns.append(sign * scale * raw[:, i])
    return torch.stack(columns, dim=1)


def card_toml(name, weights, card, extra=""):
    names = ", ".join(f'"{n}"' for n in card["names"])
    fmt = lambda v: "[" + ", ".join(repr(float(x)) for x in v) + "]"
    return (
        f"# Model card of the {name} fixture (written by tools/make_torch_fixtures.py).\n"
        f'task = "{card["task"]}"\n'
        f'weights = "{weights}"\n'
        f"{extra}"
        "\n[input]\n"
        f"size = {SIZE}\n"
        f'channel_order = "{card["channel_order"]}"\n'
        f"range = {fmt(card['range'])}\n"
        f"mean = {fmt(card['mean'])}\n"
        f"std = {fmt(card['std'])}\n"
        "\n[output]\n"
        f"names = [{names}]\n"
        f'units = "{card["units"]}"\n'
    )


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("crates/drmguard/tests/fixtures/torch")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, SIZE, SIZE, generator=generator)
    reference = {"input": x.contiguous()}
    specs = [
        ("r18", BasicBlock, [2, 2, 2, 2], "r18.pth", {
            "task": "gaze", "channel_order": "bgr", "range": [0.0, 255.0],
            "mean": [104.0, 117.0, 123.0], "std": [58.0, 57.0, 59.0],
            "names": ["pitch", "yaw"], "units": "radians"}),
        ("r34", BasicBlock, [3, 4, 6, 3], "r34.safetensors", {
            "task": "headpose", "channel_order": "rgb", "range": [0.0, 1.0],
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "names": ["roll", "yaw", "-pitch"], "units": "degrees"}),
        ("r50", Bottleneck, [3, 4, 6, 3], "r50.pt", {
            "task": "headpose", "channel_order": "rgb", "range": [0.0, 1.0],
            "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
            "names": ["yaw", "pitch", "roll"], "units": "radians"}),
    ]
    for name, block, layers, weights, card in specs:
        model = narrow_resnet(block, layers, WIDTH, len(card["names"])).eval()
        with torch.no_grad():
            randomise_batch_norms(model, generator)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if name == "r18":
            torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, out / weights)
        elif weights.endswith(".safetensors"):
            save_file(state, str(out / weights))
        else:
            torch.save(state, out / weights)
        (out / f"{name}.toml").write_text(card_toml(name, weights, card))
        if name == "r34":
            torch.onnx.export(model, (preprocess(x, card),), str(out / "r34.onnx"), dynamo=False, opset_version=17,
                              input_names=["image"], output_names=["pose"],
                              dynamic_axes={"image": {0: "n"}, "pose": {0: "n"}})
            (out / "r34-onnx.toml").write_text(card_toml("r34 (ONNX)", "r34.onnx", card))
        xg = x.clone().requires_grad_(True)
        y = to_task_convention(model(preprocess(xg, card)), card)
        y.sum().backward()
        reference[f"{name}.output"] = y.detach().contiguous()
        reference[f"{name}.input_grad"] = xg.grad.contiguous()
    save_file(reference, str(out / "reference.safetensors"))
    for p in sorted(out.iterdir()):
        print(f"{p.stat().st_size:>8}  {p}")


if __name__ == "__main__":
    main()
