"""What averaging several trained models would give: each checkpoint's accuracy, then that of every
combination of them, on labelled image folders.

    python bench/ensemble.py A.pt B.pt [C.pt ...] --data DATA/val [--data MORE/val]

Why: when every run stops at the same accuracy, the next question is whether training more models (and
averaging their probabilities, as the paper averaged its five) would pass a target. This answers it from
runs already made, before paying for more.

What it does: `alexnet predict FOLDER --weights X --json --top-k ALL` for each checkpoint and folder (the
tool's own preprocessing and probabilities), then averages the probabilities of each combination; an image's
true class is the name of the folder above it, as `alexnet evaluate` reads it. Several --data folders are
pooled. Measured with it: docs/training.md, "Not reached: 0.92".
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from common import alexnet


def probabilities(data: Path, weights: Path) -> dict[str, dict[str, float]]:
    """{image path: {class: probability}} for every image under `data`."""
    done = alexnet("predict", str(data), "--weights", str(weights), "--json", "--top-k", "1000",
                   "--batch-size", "250")
    if done.returncode != 0:
        raise SystemExit(f"{weights} on {data}: prediction failed:\n{done.stderr[-2000:]}")
    return {row["path"]: {entry["label"]: entry["probability"] for entry in row["top_k"]}
            for row in json.loads(done.stdout)}


def accuracy(models: list[dict[str, dict[str, float]]]) -> float:
    """The share of images whose averaged probabilities put the true class (the parent folder) first."""
    paths = models[0].keys()
    right = 0
    for path in paths:
        classes = models[0][path].keys()
        total = {name: sum(model[path][name] for model in models) for name in classes}
        right += max(total, key=total.get) == Path(path).parent.name
    return right / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", nargs="+", type=Path)
    parser.add_argument("--data", action="append", type=Path, required=True)
    args = parser.parse_args()
    scored = {}
    for weights in args.weights:
        scored[weights] = {}
        for data in args.data:
            scored[weights].update(probabilities(data, weights))
    print(f"{len(scored[args.weights[0]])} images in {', '.join(map(str, args.data))}")
    for size in range(1, len(args.weights) + 1):
        for combination in itertools.combinations(args.weights, size):
            names = " + ".join(str(weights) for weights in combination)
            print(f"{names:<60} accuracy {accuracy([scored[weights] for weights in combination]):.4f}")


if __name__ == "__main__":
    main()
