"""Pictures of a run: curves.png and confusion_matrix.png, drawn with matplotlib (the optional `plots` extra).

Training writes them at its end; `alexnet plot RUN_DIR` redraws them from the run folder's metrics.csv,
confusion.json and config.json. Without matplotlib, training still succeeds and one line says how to get them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alexnet_cli.errors import DataError, MissingExtra
from alexnet_cli.runtime.files import atomic_write


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed, none opened
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtra("plots need matplotlib", "plots", then=", then alexnet plot RUN_DIR") from None
    return plt


def _floats(rows: Sequence[dict[str, Any]], key: str) -> list[float | None]:
    out = []
    for row in rows:
        value = row.get(key)
        out.append(float(value) if value not in (None, "") else None)
    return out


def write_curves(path: Path, history: Sequence[dict[str, Any]]) -> Path:
    """Loss and accuracy (train and validation) and the learning rate, per epoch, side by side."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [int(row["epoch"]) for row in history]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=100, layout="constrained")
    for ax, (title, keys) in zip(axes, (("loss", ("train_loss", "val_loss")), ("accuracy", ("train_acc", "val_acc")),
                                       ("learning rate", ("lr",)))):
        for key in keys:
            values = _floats(history, key)
            points = [(e, v) for e, v in zip(epochs, values) if v is not None]
            if points:
                label = {"train_loss": "train", "val_loss": "validation", "train_acc": "train",
                         "val_acc": "validation", "lr": "lr"}[key]
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if title == "accuracy":
            ax.set_ylim(0, 1.02)
        if title != "learning rate":
            ax.legend()
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return _save(figure, plt, path, atomic_write)


# Above this many classes the picture shows the classes most involved in confusions, not all of them: at
# 1,000 classes a cell would be under a pixel and the names unreadable.
CONFUSION_CLASSES = 30


def most_confused_classes(matrix: Sequence[Sequence[int]], n: int = CONFUSION_CLASSES) -> list[int]:
    """The `n` classes with the most mistakes, as the true class or as the prediction, ordered so that classes
    confused with each other sit together (each after the one it is most confused with)."""
    size = len(matrix)
    mistakes = [sum(matrix[i]) - matrix[i][i] + sum(matrix[j][i] for j in range(size)) - matrix[i][i]
                for i in range(size)]
    chosen = sorted(range(size), key=lambda i: (-mistakes[i], i))[:n]
    ordered: list[int] = []
    remaining = set(chosen)
    for start in chosen:  # greedy: from the worst, follow each class to its strongest partner still left
        current = start
        while current in remaining:
            ordered.append(current)
            remaining.discard(current)
            partners = [(matrix[current][j] + matrix[j][current], -j) for j in remaining]
            current = -max(partners)[1] if partners and max(partners)[0] > 0 else -1
    return ordered


def write_confusion(path: Path, class_names: Sequence[str], matrix: Sequence[Sequence[int]],
                    title: str = "validation") -> Path:
    """Counts and row-normalised rates (recall on the diagonal), with the class names on both axes. Over
    CONFUSION_CLASSES classes, the most-confused of them (most_confused_classes), said in the title."""
    plt = _pyplot()
    if len(class_names) > CONFUSION_CLASSES:
        keep = most_confused_classes(matrix)
        # Rates stay those of the whole class: a row's share counts every image of the class.
        totals = [sum(matrix[i]) for i in keep]
        title = f"{title}, the {len(keep)} most-confused of {len(class_names):,} classes"
        class_names = [class_names[i] for i in keep]
        matrix = [[matrix[i][j] for j in keep] for i in keep]
    else:
        totals = [sum(row) for row in matrix]
    n = len(class_names)
    counts = [[int(v) for v in row] for row in matrix]
    rates = [[v / max(1, total) for v in row] for row, total in zip(counts, totals)]
    side = min(18.0, 3.0 + 0.45 * n)
    figure, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side), dpi=100, layout="constrained")
    for ax, values, name, fmt in ((axes[0], counts, "counts", "{:d}"), (axes[1], rates, "row-normalised", "{:.2f}")):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(1, max(max(r) for r in values)) if name == "counts"
                          else 1)
        ax.set_xticks(range(n), class_names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
        ax.set_yticks(range(n), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {name}")
        if n <= 30:
            top = max(max(r) for r in values) or 1
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, fmt.format(values[i][j]), ha="center", va="center", fontsize=8,
                            color="white" if values[i][j] > 0.6 * top else "black")
        figure.colorbar(image, ax=ax, shrink=0.8)
    return _save(figure, plt, path, atomic_write)


def write_lr_curve(path: Path, lrs: Sequence[float], losses: Sequence[float], suggestion: float) -> Path:
    """The LR range test (alexnet lr-find): smoothed loss against the rate on a log scale, suggestion marked."""

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 4))
    finite = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    ax.plot([lr for lr, _ in finite], [loss for _, loss in finite])
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.legend()
    figure.tight_layout()
    return _save(figure, plt, path, atomic_write)


def _save(figure, plt, path: Path, atomic_write) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write(path, lambda file: file.write(buffer.getvalue()))
    return path


def plot_run(run_dir: Path) -> list[Path]:
    """Redraw a run folder's pictures from what training wrote there."""
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        raise DataError(f"{run_dir} has no metrics.csv: give a run folder written by alexnet train")
    with open(metrics, newline="") as handle:
        history = list(csv.DictReader(handle))
    if not history:
        raise DataError(f"{metrics} has no epochs yet")
    written = [write_curves(run_dir / "curves.png", history)]
    confusion = run_dir / "confusion.json"
    if confusion.is_file():
        try:
            record = json.loads(confusion.read_text())
            written.append(write_confusion(run_dir / "confusion_matrix.png", record["class_names"],
                                           record["confusion_matrix"], f"validation, epoch {record['epoch']}"))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{confusion} is damaged") from None
    return written
