#!/usr/bin/env python3
"""Export a PyTorch regression model for drmguard: its weights as safetensors plus the model card.

drmguard imports torchvision-style ResNet-18/34/50 regressors (any stem width) whose last layer
is one linear `fc`. This script writes

  OUT.safetensors   the state dict (float32, contiguous; `module.` and checkpoint nesting removed)
  OUT.toml          the model card: task, input size, channel order, value range, normalisation,
                    output names (in the model's order) and units

and checks the state dict's names against torchvision's before writing anything. Then:

  drmguard inspect OUT.toml
  drmguard scan --model OUT.toml --data CLEAN_FOLDER --out scan/

From a checkpoint file:

  python tools/export_for_drmguard.py --weights gaze.pth --state-dict-key model \\
      --task gaze --input-size 224 --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 \\
      --outputs pitch yaw --units radians --out exported/gaze

From Python, with the model object:

  from export_for_drmguard import export, export_onnx
  export(model, "exported/gaze", task="gaze", input_size=224, outputs=["pitch", "yaw"], ...)
  # any CNN regressor whose last layer is linear, as an ONNX graph plus its card:
  export_onnx(model, "exported/gaze", task="gaze", input_size=224, outputs=["pitch", "yaw"], ...)

Output names are the task's (gaze: pitch, yaw; headpose: yaw, pitch, roll; landmarks: left_eye_x,
left_eye_y, right_eye_x, …, mouth_right_y, with left the image's left) in the model's output
order, each angle prefixed with "-" where the model's sign convention is the opposite of
drmguard's (yaw > 0 looks or turns towards the image's right, pitch > 0 up, roll > 0 tilts the
top of the head towards the image's right). Units: radians or degrees for angles, fraction (of
the input side) or pixels for landmarks. Needs torch and safetensors.
"""
import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

TASK_OUTPUTS = {
    "gaze": ["pitch", "yaw"],
    "headpose": ["yaw", "pitch", "roll"],
    "landmarks": [f"{point}_{axis}" for point in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right") for axis in "xy"],
}
TASK_UNITS = {"gaze": ("radians", "degrees"), "headpose": ("radians", "degrees"), "landmarks": ("fraction", "pixels")}
STAGE_BLOCKS = {(False, (2, 2, 2, 2)): "resnet18", (False, (3, 4, 6, 3)): "resnet34", (True, (3, 4, 6, 3)): "resnet50"}


def flatten(tree, prefix=""):
    """Every tensor of nested dicts, named by its dotted path."""
    for k, v in tree.items():
        if torch.is_tensor(v):
            yield prefix + str(k), v
        elif isinstance(v, dict):
            yield from flatten(v, f"{prefix}{k}.")


def state_dict_of(checkpoint, key=None):
    """The network's name → tensor dict inside a checkpoint: a state dict, a model, or a dict
    that nests one (found under `key`, or by its stem convolution's name, as drmguard does)."""
    if isinstance(checkpoint, torch.nn.Module):
        checkpoint = checkpoint.state_dict()
    if key is not None:
        for part in key.split("."):
            checkpoint = checkpoint[part]
    if not isinstance(checkpoint, dict):
        raise SystemExit(f"the checkpoint is a {type(checkpoint).__name__}, not a state dict")
    tensors = dict(flatten(checkpoint))
    stems = [k[: -len("conv1.weight")] for k in tensors if k.endswith("conv1.weight") and "layer" not in k]
    stems = [p for p in stems if p == "" or p.endswith(".")]
    if not stems:
        raise SystemExit(f"no stem convolution `conv1.weight` among {list(tensors)[:6]}: not a torchvision ResNet")
    prefix = min(stems, key=len)
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix) and not k.endswith("num_batches_tracked")}


def check_resnet(state):
    """The torchvision architecture name the state dict is, or an explanation of why it is none."""
    stem = state.get("conv1.weight")
    if stem is None or tuple(stem.shape[1:]) != (3, 7, 7):
        raise SystemExit("`conv1.weight` is not a ResNet stem [width, 3, 7, 7]")
    bottleneck = "layer1.0.conv3.weight" in state
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}) for s in range(1, 5))
    name = STAGE_BLOCKS.get((bottleneck, blocks))
    if name is None:
        raise SystemExit(f"a ResNet with {list(blocks)} blocks per stage (bottleneck: {bottleneck}) is not one drmguard imports")
    fc = state.get("fc.weight")
    if fc is None or fc.dim() != 2:
        raise SystemExit("no linear head `fc.weight`: rename the last layer to `fc` (or use key_remap in the card)")
    return name, stem.shape[0], fc.shape[0]


def check_card_values(task, input_size, outputs, channel_order, units):
    if task not in TASK_OUTPUTS:
        raise SystemExit(f"unknown task {task!r} ({', '.join(TASK_OUTPUTS)})")
    if sorted(n.lstrip("-") for n in outputs) != sorted(TASK_OUTPUTS[task]):
        raise SystemExit(f"outputs {outputs} must name each of {TASK_OUTPUTS[task]} once (in the model's order, '-' to flip)")
    if task == "landmarks" and any(n.startswith("-") for n in outputs):
        raise SystemExit("a sign flip ('-') applies to angles, not to landmark coordinates")
    if input_size % 8 or not 16 <= input_size <= 1024:
        raise SystemExit(f"input size {input_size} must be divisible by 8 and within 16..=1024")
    if channel_order not in ("rgb", "bgr"):
        raise SystemExit("channel order is rgb or bgr")
    if units not in TASK_UNITS[task]:
        raise SystemExit(f"units of task {task} are {' or '.join(TASK_UNITS[task])}, not {units!r}")


def card_text(weights_name, architecture, task, input_size, channel_order, value_range, mean, std, outputs, units,
              graph_output=None):
    floats = lambda v: "[" + ", ".join(repr(float(x)) for x in v) + "]"
    names = ", ".join(f'"{n}"' for n in outputs)
    return (
        "# drmguard model card (written by tools/export_for_drmguard.py)\n"
        f'task = "{task}"\n'
        f'weights = "{weights_name}"\n'
        + (f'architecture = "{architecture}"\n' if architecture else "")
        + "\n[input]\n"
        f"size = {input_size}\n"
        f'channel_order = "{channel_order}"\n'
        f"range = {floats(value_range)}\n"
        f"mean = {floats(mean)}\n"
        f"std = {floats(std)}\n"
        "\n[output]\n"
        f"names = [{names}]\n"
        f'units = "{units}"\n'
        + (f'graph_output = "{graph_output}"\n' if graph_output else "")
    )


def export(model_or_state, out, *, task, input_size, outputs, units="radians", mean=(0.485, 0.456, 0.406),
           std=(0.229, 0.224, 0.225), channel_order="rgb", value_range=(0.0, 1.0), state_dict_key=None):
    """Writes OUT.safetensors and OUT.toml; returns their paths."""
    check_card_values(task, input_size, outputs, channel_order, units)
    state = state_dict_of(model_or_state, state_dict_key)
    architecture, width, n_out = check_resnet(state)
    if n_out != len(outputs):
        raise SystemExit(f"the model has {n_out} outputs, {len(outputs)} names given")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    weights = out.with_suffix(".safetensors")
    card = out.with_suffix(".toml")
    tensors = {k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(weights))
    card.write_text(card_text(weights.name, architecture, task, input_size, channel_order, value_range, mean, std, outputs, units))
    print(f"{architecture} (stem width {width}, {n_out} outputs): wrote {weights} and {card}")
    return weights, card


def export_onnx(model, out, *, task, input_size, outputs, units="radians", mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225), channel_order="rgb", value_range=(0.0, 1.0), opset=17,
                graph_outputs=None, graph_output=None):
    """Writes OUT.onnx (torch.onnx.export with a free batch axis) and OUT.toml; returns their
    paths. `model` takes the normalised image batch [n, 3, size, size] (the card states the
    normalisation) and returns the regression outputs from a linear last layer: one tensor, or
    a tuple whose values `graph_outputs` names, of which `graph_output` is the regression
    (MTCNN's ONet returns box, landmarks and face probability)."""
    check_card_values(task, input_size, outputs, channel_order, units)
    model = model.eval()
    x = torch.zeros(2, 3, input_size, input_size)
    with torch.no_grad():
        y = model(x)
    names = ["output"]
    if isinstance(y, (tuple, list)):
        if not graph_outputs or len(graph_outputs) != len(y) or graph_output not in graph_outputs:
            raise SystemExit(f"the model returns {len(y)} values: name them with graph_outputs and pick the regression with graph_output")
        names, y = list(graph_outputs), y[graph_outputs.index(graph_output)]
    if not torch.is_tensor(y) or y.dim() != 2 or y.shape[1] != len(outputs):
        shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise SystemExit(f"the model returns {shape}; drmguard needs one [n, {len(outputs)}] tensor")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    graph, card = out.with_suffix(".onnx"), out.with_suffix(".toml")
    torch.onnx.export(model, (x,), str(graph), dynamo=False, opset_version=opset, input_names=["image"],
                      output_names=names, dynamic_axes={"image": {0: "n"}, **{n: {0: "n"} for n in names}})
    card.write_text(card_text(graph.name, None, task, input_size, channel_order, value_range, mean, std, outputs, units,
                              graph_output if len(names) > 1 else None))
    print(f"ONNX graph ({len(outputs)} outputs): wrote {graph} and {card}")
    return graph, card


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="a .pt/.pth checkpoint or a safetensors file")
    p.add_argument("--state-dict-key", help="the checkpoint entry that holds the state dict, dotted for deeper nesting")
    p.add_argument("--task", required=True, choices=sorted(TASK_OUTPUTS))
    p.add_argument("--input-size", type=int, required=True)
    p.add_argument("--channel-order", default="rgb", choices=["rgb", "bgr"])
    p.add_argument("--range", type=float, nargs=2, default=[0.0, 1.0], metavar=("LOW", "HIGH"))
    p.add_argument("--mean", type=float, nargs=3, required=True)
    p.add_argument("--std", type=float, nargs=3, required=True)
    p.add_argument("--outputs", nargs="+", required=True, help="output names in the model's order")
    p.add_argument("--units", default="radians", choices=["radians", "degrees", "fraction", "pixels"])
    p.add_argument("--out", required=True, help="output path without extension")
    a = p.parse_args(argv)
    if a.weights.endswith(".safetensors"):
        from safetensors.torch import load_file
        checkpoint = load_file(a.weights)
    else:
        checkpoint = torch.load(a.weights, map_location="cpu", weights_only=True)
    export(checkpoint, a.out, task=a.task, input_size=a.input_size, outputs=a.outputs, units=a.units, mean=a.mean,
           std=a.std, channel_order=a.channel_order, value_range=a.range, state_dict_key=a.state_dict_key)


if __name__ == "__main__":
    sys.exit(main())
