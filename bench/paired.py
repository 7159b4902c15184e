"""Checkpoints scored image by image on the same validation images: each one's accuracy, and its paired
difference from the first with a standard error.

    python bench/paired.py A.pt B.pt [C.pt ...] --data DATA/val [--data MORE/val] [--tta flip]

Why: on 2,000 validation images two runs that differ by half a point cannot be told apart, and comparing
two accuracies as if they were independent overstates the noise (both models get most images right). The
paired count says how many images the second model gets right and the first wrong ("won"), and the
reverse ("lost"); the difference is (won - lost) / n, and its standard error is that of the mean of the
per-image differences (each -1, 0 or 1).

What it does: `alexnet evaluate DATA --weights X --json --save-errors DIR` for each checkpoint and each
--data folder (the tool's own evaluation, so the accuracies are those `alexnet evaluate` prints), then reads
which images each one got wrong from DIR/<true>__as__<predicted>/. Several --data folders are pooled.
Measured with it: docs/training.md, "the whole frame" and "a larger validation set".
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from common import alexnet


def misclassified(data: Path, weights: Path, tta: str, work: Path) -> tuple[int, set[tuple[str, str]]]:
    """(images scored, the (true class, file name) of every image the checkpoint gets wrong)."""
    errors = work / "errors"
    done = alexnet("evaluate", str(data), "--weights", str(weights), "--json", "--tta", tta,
                   "--save-errors", str(errors))
    if done.returncode != 0:
        raise SystemExit(f"{weights} on {data}: evaluation failed:\n{done.stderr[-2000:]}")
    images = json.loads(done.stdout)["images"]
    wrong = set()
    for folder in errors.glob("*__as__*"):
        true = folder.name.split("__as__")[0]
        for placed in folder.iterdir():
            # a symbolic link names its source; a hard link or copy keeps the source's name
            wrong.add((true, placed.resolve().name if placed.is_symlink() else placed.name))
    return images, wrong


def paired(n: int, won: int, lost: int) -> tuple[float, float]:
    """The mean per-image difference (each +1 won, -1 lost, else 0) and its standard error."""
    mean = (won - lost) / n
    variance = ((won + lost) - n * mean * mean) / (n - 1)
    return mean, math.sqrt(variance / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", type=Path, help="checkpoints; the first is the baseline")
    parser.add_argument("--data", action="append", type=Path, required=True, help="a labelled folder (repeat to pool)")
    parser.add_argument("--tta", default="none", help="as alexnet evaluate --tta")
    args = parser.parse_args()
    n = 0
    wrong: dict[Path, set] = {w: set() for w in args.weights}
    with tempfile.TemporaryDirectory() as tmp:
        for d, data in enumerate(args.data):
            counts = set()
            for i, weights in enumerate(args.weights):
                images, errors = misclassified(data, weights, args.tta, Path(tmp) / f"{d}-{i}")
                counts.add(images)
                wrong[weights] |= {(str(data), *key) for key in errors}
            if len(counts) != 1:
                raise SystemExit(f"the checkpoints scored different numbers of images in {data}: {sorted(counts)}")
            n += counts.pop()
    base = args.weights[0]
    print(f"{n} images in {', '.join(map(str, args.data))}")
    for weights in args.weights:
        line = f"{weights!s:<40} accuracy {1 - len(wrong[weights]) / n:.4f}"
        if weights != base:
            won, lost = len(wrong[base] - wrong[weights]), len(wrong[weights] - wrong[base])
            mean, se = paired(n, won, lost)
            line += f"   {mean * 100:+.2f} points against the first (paired SE {se * 100:.2f}; {won} won, {lost} lost)"
        print(line)


if __name__ == "__main__":
    main()
