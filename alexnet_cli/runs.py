"""The run folder: where a training run keeps its config, split, metrics and checkpoints."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alexnet_cli.checkpoint import atomic_write_text
from alexnet_cli.errors import CheckpointError

RUNS_ROOT = Path("runs")
METRIC_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_images", "lr", "epoch_seconds", "images_per_second"
)


def new_run_dir(root: Path = RUNS_ROOT, prefix: str = "train") -> Path:
    """runs/train-1, runs/train-2, ...: the first number not taken, created here so two runs never share one."""
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(rf"{prefix}-(\d+)", p.name))]
    number = max(taken, default=0) + 1
    while True:
        candidate = root / f"{prefix}-{number}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1


def newest_checkpoint(root: Path = RUNS_ROOT, name: str = "best.pt", alternative: str = "") -> Path:
    candidates = sorted(root.glob(f"*/{name}"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not candidates:
        raise CheckpointError(
            f"no trained model found (no {root}/*/{name}): train one first with `alexnet train DATA`, "
            f"or pass --weights CKPT{alternative}"
        )
    return candidates[-1]


def write_metrics(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """Rewrite metrics.csv from the whole history, so a resumed run never holds a row twice."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
    atomic_write_text(path, buffer.getvalue())


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
