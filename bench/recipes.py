"""Named recipes on a real data set: train each, then print validation and test accuracy, wall time and speed.

    python bench/recipes.py DATA/train [--test DATA/test] [--recipes default seed paper modern]
                            [--tta none] [-- extra train options]

Each recipe is one `alexnet train DATA/train --recipe NAME` process (`default` is no --recipe at all: the
tool's defaults), timed as a whole; its best.pt is then evaluated on --test, when given, with
`alexnet evaluate --json` (and --tta). Options after `--` go to every training run, for instance
`-- --epochs 5` for a quick look. Fashion-MNIST in one command: `alexnet data fashion-mnist fm --per-class
1000` (docs/training.md has the table this printed there). Validation is DATA/val, found beside DATA/train;
the test split is read once per recipe, after training, and never chooses anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import alexnet, cpu_name


def run_recipe(name: str, data: Path, test: Path | None, out: Path, extra: list[str], tta: str) -> dict:
    run_dir = out / name
    recipe = [] if name == "default" else ["--recipe", name]
    started = time.perf_counter()
    trained = alexnet("train", str(data), *recipe, "--output", str(run_dir), "--log-interval", "1000", *extra)
    wall = time.perf_counter() - started
    if trained.returncode != 0:
        raise SystemExit(f"{name}: training failed:\n{trained.stderr[-2000:]}")
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    config = json.loads((run_dir / "config.json").read_text())
    row = {
        "recipe": name, "epochs": len(rows), "image_size": config["image_size"],
        "best_val_acc": max(float(r["val_acc"]) for r in rows if r["val_acc"]),
        "train_wall_s": wall,
        "images_per_second": statistics.median(float(r["images_per_second"]) for r in rows),
        "test_acc": None,
    }
    if test is not None:
        evaluated = alexnet("evaluate", str(test), "--weights", str(run_dir / "best.pt"), "--json", "--tta", tta)
        if evaluated.returncode != 0:
            raise SystemExit(f"{name}: evaluation failed:\n{evaluated.stderr[-2000:]}")
        row["test_acc"] = json.loads(evaluated.stdout)["accuracy"]
    return row


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--test", type=Path)
    parser.add_argument("--recipes", nargs="+", default=["default", "seed", "paper", "modern"])
    parser.add_argument("--tta", default="none")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-recipes"))
    args = parser.parse_args(argv)

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; data {args.data}; extra options: {' '.join(extra)}")
    header = ("recipe", "epochs", "size", "best val acc", "test acc", "train wall", "img/s")
    print(" | ".join(header))
    for name in args.recipes:
        row = run_recipe(name, args.data, args.test, args.out, extra, args.tta)
        test = "-" if row["test_acc"] is None else f"{row['test_acc']:.4f}"
        print(f"{name} | {row['epochs']} | {row['image_size']} | {row['best_val_acc']:.4f} | {test} | "
              f"{row['train_wall_s'] / 60:.1f} min | {row['images_per_second']:.0f}", flush=True)


if __name__ == "__main__":
    main()
