#!/usr/bin/env python3
"""Writes the ONNX fixtures of drmguard-onnx's tests (crates/drmguard-onnx/tests/fixtures).

  r18.onnx   the narrow torchvision ResNet-18 of make_torch_fixtures.py (stem width 2, 2 outputs)
  zoo.onnx   a small CNN that uses every other supported operator: PRelu, BatchNormalization
             that cannot be folded into a convolution, MaxPool and AveragePool with pads and
             ceil_mode, F.pad (exported as Pad whose pads a chain of ConstantOfShape, Concat,
             Reshape, Slice, Transpose and Cast computes), grouped Conv, LeakyRelu, Sigmoid, Tanh,
             Concat, Transpose, ReduceMean, Flatten, Clip, Softmax, MatMul, Add, Sub, Mul, Div

  heads.onnx a small model shaped like MTCNN's ONet: PRelu, MaxPool with ceil_mode, a permute and
             `x.view(x.size(0), -1)` (Shape, Gather, Unsqueeze, Concat, Reshape computed at run
             time), and three heads: `box` (4), `landmarks` (10) and `prob` (Softmax of 2)

all exported with torch.onnx.export (TorchScript exporter, opset 19, dynamic batch), and
reference.safetensors with the input (`input`: two 3×16×16 images in [0, 1]) and, per model,
PyTorch's outputs (`NAME.output`; for heads.onnx, its `landmarks`) and the gradients of their
sum with respect to the input (`NAME.input_grad`) and to one weight tensor (`NAME.param_grad`:
the ResNet's `fc.weight`, the small CNN's first convolution's weight, the landmark head's weight).

Usage: python tools/make_onnx_fixtures.py [OUT_DIR]   (needs torch, torchvision)
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock

sys.path.insert(0, str(Path(__file__).parent))
from make_torch_fixtures import narrow_resnet, randomise_batch_norms  # noqa: E402


class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=(1, 2))
        self.prelu = nn.PReLU(4, init=0.1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 2, padding=0, groups=2)
        self.head = nn.Parameter(torch.randn(20, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(3) * 0.1)

    def forward(self, x):
        x = self.bn(self.prelu(self.conv1(x)))
        a = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
        b = F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        a = F.leaky_relu(self.conv2(F.pad(a, (1, 0, 0, 1))), 0.2)  # asymmetric pad, grouped conv
        x = torch.cat([torch.sigmoid(a) - 0.5, torch.tanh(b)], dim=1)  # 10 channels
        x = x.transpose(2, 3) * 2.0
        up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)  # Resize, linear
        near = F.interpolate(x, scale_factor=1.5, mode="nearest")  # Resize, nearest
        pooled = (x.mean(dim=(2, 3)) + 0.3 * (up * up).mean(dim=(2, 3)) - 0.2 * (near * near).mean(dim=(2, 3)))  # [n, 10]
        z = torch.cat([torch.clamp(pooled, -0.3, 0.3), torch.softmax(pooled * 3.0, dim=1)], dim=1)
        return (z @ self.head + self.bias) / 1.5


class Heads(nn.Module):
    """ONet's layout, shrunk: 16×16 input, three outputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.prelu1 = nn.PReLU(4, init=0.2)
        self.conv2 = nn.Conv2d(4, 6, 2)
        self.prelu2 = nn.PReLU(6, init=0.1)
        self.dense = nn.Linear(6 * 3 * 3, 12)
        self.prelu3 = nn.PReLU(12, init=0.3)
        self.box = nn.Linear(12, 4)
        self.landmarks = nn.Linear(12, 10)
        self.prob = nn.Linear(12, 2)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)  # 14 → 7
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 2, 2, ceil_mode=True)  # 6 → 3
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu3(self.dense(x.view(x.shape[0], -1)))
        return self.box(x), self.landmarks(x), torch.softmax(self.prob(x), dim=1)


class First(nn.Module):
    """The landmark output alone, for the reference's gradients."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)[1]


def reference(name, model, x, param):
    """PyTorch's outputs and gradients of their sum, named NAME.output, NAME.input_grad and
    NAME.param_grad (the gradient to `param`, a parameter the export keeps as it is)."""
    xg = x.clone().requires_grad_(True)
    y = model(xg)
    first = param
    grads = torch.autograd.grad(y.sum(), [xg, first])
    return {f"{name}.output": y.detach(), f"{name}.input_grad": grads[0], f"{name}.param_grad": grads[1]}


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("crates/drmguard-onnx/tests/fixtures")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=generator)
    r18 = narrow_resnet(BasicBlock, [2, 2, 2, 2], 2, 2).eval()
    zoo = Zoo().eval()
    with torch.no_grad():
        randomise_batch_norms(r18, generator)
        randomise_batch_norms(zoo, generator)
    heads = Heads().eval()
    refs = {"input": x}
    # The exporter folds BatchNorm into the preceding convolution, so the ResNet's convolution
    # weights are not in the file as they are in PyTorch: its head is.
    for name, model, param in [("r18", r18, r18.fc.weight), ("zoo", zoo, zoo.conv1.weight)]:
        torch.onnx.export(model, (x,), str(out / f"{name}.onnx"), dynamo=False, opset_version=19,
                          input_names=["image"], output_names=["output"],
                          dynamic_axes={"image": {0: "n"}, "output": {0: "n"}})
        refs.update(reference(name, model, x, param))
    torch.onnx.export(heads, (x,), str(out / "heads.onnx"), dynamo=False, opset_version=19,
                      input_names=["image"], output_names=["box", "landmarks", "prob"],
                      dynamic_axes={"image": {0: "n"}})
    refs.update(reference("heads", First(heads), x, heads.landmarks.weight))
    save_file({k: v.contiguous() for k, v in refs.items()}, str(out / "reference.safetensors"))
    for p in sorted(out.iterdir()):
        print(f"{p.stat().st_size:>8}  {p}")


if __name__ == "__main__":
    main()
