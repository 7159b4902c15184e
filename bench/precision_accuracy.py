"""bf16 against fp32 training on the demo data set at full size: the same validation accuracy within 2 points.

    python bench/precision_accuracy.py [--epochs 8] [--seeds 1 2] [--cache DIR]

Trains the demo's configuration (4 textures, 300 training and 75 validation images each, 67x67, 8 epochs,
the default alexnet and optimizer) once with --precision fp32 and once with --precision bf16, same seed, and
prints each run's best and final validation accuracy and their difference. bf16 runs emulated and slowly on a
CPU without native bf16; the accuracy comparison holds either way.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "alexnet-bench")
    args = parser.parse_args()

    from alexnet_cli.config.settings import DemoConfig, TrainConfig
    from alexnet_cli.data.sources import demo
    from alexnet_cli.observer import SilentObserver
    from alexnet_cli.training import train

    data = demo.ensure_demo_data(args.cache / "demo")
    for seed in args.seeds:
        results = {}
        for precision in ("fp32", "bf16"):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                train(TrainConfig(data=data.train, val=data.val, image_size=DemoConfig.image_size, epochs=args.epochs,
                                  precision=precision, seed=seed, output=Path(tmp) / "run"), SilentObserver())
                with open(Path(tmp) / "run" / "metrics.csv") as handle:
                    accs = [float(row["val_acc"]) for row in csv.DictReader(handle)]
                results[precision] = (max(accs), accs[-1], time.perf_counter() - start)
                print(f"seed {seed} {precision}: best val acc {max(accs):.2%}, final {accs[-1]:.2%}, per epoch "
                      + " ".join(f"{a:.3f}" for a in accs) + f" ({results[precision][2]:.0f} s)", flush=True)
        gap = abs(results["bf16"][0] - results["fp32"][0]) * 100
        print(f"seed {seed}: |bf16 - fp32| best val acc = {gap:.1f} points (target <= 2)")


if __name__ == "__main__":
    main()
