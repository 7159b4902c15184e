"""Why the default Adam learning rate is 1e-4, not the original script's 1e-3.

    python bench/learning_rate.py [--epochs 4] [--lrs 1e-3 1e-4] [--per-class 150]

Trains the default `alexnet` (227x227, batch 32, Adam, the tool's own train step and preprocessing) from
scratch on a generated three-class shapes folder, once per learning rate with the same seed, and prints
the training loss and validation accuracy per epoch. A loss stuck at ln(classes) with accuracy at chance
means the network is not learning at all. See docs/training.md for the measured runs.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from alexnet_cli.config.settings import TrainConfig
from alexnet_cli.data.sources.synthetic import SHAPES, make_shapes_folder
from alexnet_cli.training import train


class Quiet:
    def info(self, message): pass
    def warn(self, message): pass
    def data_summary(self, *args): pass
    def epoch_start(self, *args): pass
    def step(self, *args): pass

    def __init__(self, label: str) -> None:
        self.label = label

    def epoch_end(self, row, epochs, improved):
        print(f"{self.label:>10}  epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f}  "
              f"val acc {row['val_acc']:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-4])
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--classes", type=int, default=3, help="how many shapes (2 to 5)")
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shapes = SHAPES[: args.classes]
        make_shapes_folder(root / "data" / "train", shapes, per_class=args.per_class, size=160, seed=1,
                           extension=".jpg")
        make_shapes_folder(root / "data" / "val", shapes, per_class=max(10, args.per_class // 4), size=160, seed=2,
                           extension=".jpg")
        print(f"{', '.join(shapes)}: {args.per_class} training images each; "
              f"chance: loss {math.log(len(shapes)):.4f}, accuracy {1 / len(shapes):.3f}")
        for lr in args.lrs:
            cfg = TrainConfig(data=root / "data" / "train", epochs=args.epochs, lr=lr, workers=args.workers,
                              image_size=args.image_size, output=root / f"run-{lr:g}")
            train(cfg, Quiet(f"lr {lr:g}"))


if __name__ == "__main__":
    main()
