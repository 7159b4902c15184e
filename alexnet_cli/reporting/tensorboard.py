"""`alexnet train --tensorboard`: scalars per step and per epoch, and sample images, through
torch.utils.tensorboard (the optional `tensorboard` extra). Events go to RUN_DIR/tensorboard/."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from alexnet_cli.data.images import UnreadableImage, open_image
from alexnet_cli.errors import require_extra

SAMPLES = 16


def check_available() -> None:
    require_extra("--tensorboard needs the tensorboard package", "tensorboard", ("tensorboard",))


class TensorBoardObserver:
    """Passes everything on to the observer it wraps, and logs what it sees to TensorBoard."""

    def __init__(self, inner: Any, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.inner = inner
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self._iterations = 1

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def epoch_start(self, epoch: int, epochs: int, iterations: int, images: int) -> None:
        self._iterations = iterations
        self.inner.epoch_start(epoch, epochs, iterations, images)

    def step(self, epoch, epochs, iteration, iterations, loss, images_per_second) -> None:
        global_step = (epoch - 1) * iterations + iteration
        self.writer.add_scalar("step/train_loss", loss, global_step)
        self.writer.add_scalar("step/images_per_second", images_per_second, global_step)
        self.inner.step(epoch, epochs, iteration, iterations, loss, images_per_second)

    def epoch_end(self, row: dict[str, Any], epochs: int, improved: bool) -> None:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_second"):
            if row.get(key) is not None:
                self.writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
        self.writer.flush()
        self.inner.epoch_end(row, epochs, improved)

    def samples(self, paths: Sequence[str], labels: Sequence[int], class_names: Sequence[str], preprocess) -> None:
        """A few training images as the model sees them (resized and cropped), with their labels."""

        transform = preprocess.eval_transforms(on_device=False)
        mean = torch.tensor(preprocess.mean).view(3, 1, 1)
        std = torch.tensor(preprocess.std).view(3, 1, 1)
        picked: list[torch.Tensor] = []
        names: list[str] = []
        # One of each class first, then the second of each, ...: the grid shows every class it can.
        rank_in_class: dict[int, int] = {}
        ranks = []
        for label in labels:
            ranks.append(rank_in_class.get(label, 0))
            rank_in_class[label] = ranks[-1] + 1
        for i in sorted(range(len(paths)), key=lambda i: (ranks[i], i))[:SAMPLES]:
            try:
                image = transform(open_image(paths[i], preprocess.resize_size))
            except UnreadableImage:
                continue
            picked.append((image * std + mean).clamp(0, 1))
            names.append(f"{len(names)}: {class_names[labels[i]]} ({Path(paths[i]).name})")
        if picked:
            self.writer.add_images("samples/images", torch.stack(picked), 0)
            self.writer.add_text("samples/labels", "  \n".join(names), 0)

    def close(self) -> None:
        self.writer.close()  # the wrapped observer is closed by whoever made it
