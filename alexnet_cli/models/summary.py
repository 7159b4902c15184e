"""Layer-by-layer arithmetic: output shapes, parameters, multiply-adds and the size formula of each layer.

The model runs once on the `meta` device: shapes and operation counts without allocating 240 MB of weights
or doing any arithmetic. Multiply-adds come from torch.utils.flop_counter, which counts 2 FLOPs per MAC.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from alexnet_cli.models.alexnet import build_model
from alexnet_cli.models.registry import arch_info, check_image_size

# Layers that do not change the shape are folded into the row before them ("Conv2d+ReLU").
_FOLDED = ("ReLU", "Dropout")


def _pair(value) -> int:
    return value[0] if isinstance(value, tuple) else value


def size_arithmetic(size_in: int, kernel: int, stride: int, padding: int) -> str:
    """`(227 - 11 + 2*0)/4 + 1 = 55`, with floor brackets when the division is not exact."""
    numerator = size_in - kernel + 2 * padding
    size_out = numerator // stride + 1
    body = f"({size_in} - {kernel} + 2*{padding})/{stride}"
    if numerator % stride:
        body = f"⌊{body}⌋"
    return f"{body} + 1 = {size_out}"


def summarize(arch: str, num_classes: int, image_size: int, frozen: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The summary as plain data: what `alexnet summary --json` prints and the table is drawn from.

    `frozen` names parameters that would not train (for a model fine-tuned with frozen features).
    """
    arch_info(arch)
    check_image_size(arch, image_size)
    with torch.device("meta"):
        model = build_model(arch, num_classes=num_classes).eval()
        calls, counter = _trace(model, torch.empty(1, 3, image_size, image_size))
    layers, activations = _layers(calls, counter.get_flop_counts(), type(model).__name__)
    total = sum(p.numel() for p in model.parameters())
    frozen_count = sum(p.numel() for n, p in model.named_parameters() if n in frozen)
    flops = counter.get_total_flops()
    return {
        "arch": arch,
        "image_size": image_size,
        "num_classes": num_classes,
        "layers": layers,
        "total_params": total,
        "trainable_params": total - frozen_count,
        "frozen_params": frozen_count,
        "macs": flops // 2,
        "flops": flops,
        "activations": activations,
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }


def _trace(model, x):
    """One forward pass on meta tensors: (name, module, input shape, output shape) per leaf module, in call
    order, and torch's FLOP counter over it."""
    calls: list[tuple[str, torch.nn.Module, tuple[int, ...], tuple[int, ...]]] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_hook(
                lambda m, inp, out, name=name: calls.append((name, m, tuple(inp[0].shape[1:]), tuple(out.shape[1:])))
            ))
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return calls, counter


def _layers(calls, flops_by_module, root: str) -> tuple[list[dict[str, Any]], int]:
    """The table's rows (ReLU, Dropout and kin folded into the layer before them), and the activations."""
    counters = {"conv": 0, "pool": 0, "lrn": 0, "fc": 5}  # the paper numbers the FC layers 6, 7, 8
    layers: list[dict[str, Any]] = []
    activations = 0
    for name, module, shape_in, shape_out in calls:
        kind = type(module).__name__
        if kind in _FOLDED:
            if layers:
                layers[-1]["type"] += f"+{kind}"
            continue
        if kind == "AdaptiveAvgPool2d" and shape_in == shape_out:
            continue  # a no-op at this input size; it only matters for other sizes
        arithmetic = ""
        if kind in ("Conv2d", "MaxPool2d"):
            k, s, p = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
            arithmetic = size_arithmetic(shape_in[-1], k, s, p)
        label = {"Conv2d": "conv", "MaxPool2d": "pool", "LocalResponseNorm": "lrn", "Linear": "fc"}.get(kind)
        if label:
            counters[label] += 1
            display = f"{label}{counters[label]}"
        else:
            display = {"AdaptiveAvgPool2d": "avgpool", "Flatten": "flatten"}.get(kind, name)
        if kind in ("Conv2d", "Linear"):
            activations += _numel(shape_out)  # the paper's "neurons": outputs of the 8 learned layers
        if kind == "Conv2d" and module.groups > 1:
            kind += f"(groups={module.groups})"
        layers.append({
            "name": display,
            "module": name,
            "type": kind,
            "output_shape": list(shape_out),
            "params": sum(p.numel() for p in module.parameters()),
            "macs": sum(flops_by_module.get(f"{root}.{name}", {}).values()) // 2,
            "arithmetic": arithmetic,
        })
    return layers, activations


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
