"""Training step: the original's eager fp32 loop against `alexnet train`'s own step, on random input.

    python bench/train_step.py [--batch-size 32] [--rounds 5] [--steps 3] [--device auto]

Both run in this process, alternating round by round, on the same random batch. The tool's step is
alexnet_cli.training.train_step with the model, optimizer and precision that `alexnet train` builds
(channels_last, fused Adam, --precision auto), and once more with --precision fp32. Prints images/s
(min/median/max over rounds), the ratios, and the achieved FLOP/s against a matmul peak measured here.
Targets (issue 6, on a CPU): default >= 2.2x and >= 75% of the bf16 matmul peak; fp32 >= 1.3x.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import OriginalLoop, matmul_peak, row, synchronize, training_flops_per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and variant")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch", default="alexnet")
    args = parser.parse_args()

    import torch

    from alexnet_cli.models.alexnet import build_model
    from alexnet_cli.models.registry import arch_info
    from alexnet_cli.runtime.context import configure_backends, to_device
    from alexnet_cli.runtime.device import resolve_device
    from alexnet_cli.runtime.precision import resolve_precision
    from alexnet_cli.training import make_optimizer, train_step

    device = resolve_device(args.device).device
    configure_backends(device)
    size = arch_info(args.arch).default_image_size
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    labels = torch.randint(0, 2, (args.batch_size,), device=device)

    def tool_variant(precision_name: str):
        precision = resolve_precision(precision_name, device)
        model = build_model(args.arch, num_classes=2).to(device, memory_format=torch.channels_last).train()
        optimizer = make_optimizer("adam", model, lr=1e-4, weight_decay=0.0, device=device)
        scaler = torch.amp.GradScaler(device.type, enabled=precision.name == "fp16")
        criterion = torch.nn.CrossEntropyLoss()
        batch = to_device(images, device)
        return precision, lambda: train_step(model, batch, labels, optimizer, scaler, criterion, precision)

    original = OriginalLoop(build_model(args.arch, num_classes=2).to(device).train())
    auto_precision, auto_step = tool_variant("auto")
    variants = {
        "original eager fp32": lambda: original.step(images, labels),
        f"alexnet train (auto: {auto_precision.name})": auto_step,
        "alexnet train --precision fp32": tool_variant("fp32")[1],
    }
    print(f"device {device}; precision auto -> {auto_precision.reason}")
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for step in variants.values():  # warm-up: kernels, allocator, optimizer state
        step(), step()
    synchronize(device)
    for _ in range(args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            synchronize(device)
            rates[name].append(args.batch_size * args.steps / (time.perf_counter() - start))

    flops = training_flops_per_image(args.arch, 2, size)
    peaks = {"fp32": matmul_peak(device, torch.float32), "bf16": matmul_peak(device, torch.bfloat16)}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        peaks["tf32"] = matmul_peak(device, torch.float32)
    print(f"batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps; {flops / 1e9:.2f} GFLOP per image "
          "(forward + backward, torch.utils.flop_counter)")
    print("matmul peak: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))
    base = statistics.median(rates["original eager fp32"])
    for name, values in rates.items():
        median = statistics.median(values)
        achieved = median * flops
        print(row(name, values, " img/s") + f"  x{median / base:.2f}  {achieved / 1e9:.0f} GFLOP/s = "
              + ", ".join(f"{achieved / v:.0%} of {k} peak" for k, v in peaks.items()))
    ours = rates[f"alexnet train (auto: {auto_precision.name})"]
    ratios = [r / b for r, b in zip(ours, rates["original eager fp32"])]
    print(row("ratio default/original (per round)", ratios, "", 2))


if __name__ == "__main__":
    main()
