"""RichObserver: the Observer that draws a run as it goes (a progress bar per epoch, or the original script's
log line where stderr is not a terminal) and the progress of long work such as indexing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from alexnet_cli.cli.console import console, info, warn
from alexnet_cli.cli.tables import data_table

# Fewer items than this finish before a bar would be worth drawing.
PROGRESS_AT_LEAST = 1000


class RichObserver:
    """Draws a training run: a progress bar per epoch on a terminal, the original's plain lines elsewhere."""

    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    info = staticmethod(info)
    warn = staticmethod(warn)

    def data_summary(self, classes, train_counts, val_counts, val_source) -> None:
        data_table(classes, train_counts, val_counts, val_source)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A bar with files/s and the time left, on a terminal; nothing elsewhere (the line after says it)."""
        if not console.is_terminal or total < PROGRESS_AT_LEAST:
            yield lambda n: None
            return
        with Progress(TextColumn(escape(description)), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                      TextColumn("{task.fields[rate]}"),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task(description, total=total, rate="")
            done = [0]

            def advance(n: int) -> None:
                done[0] += n
                if done[0] % 256 == 0 or done[0] == total:  # a redraw per file would cost more than the file
                    speed = bar.tasks[0].speed
                    bar.update(task, completed=done[0], rate=f"{speed:,.0f} files/s" if speed else "")

            yield advance

    def epoch_start(self, epoch: int, epochs: int, iterations: int, images: int) -> None:
        if not console.is_terminal:
            return
        progress = self._progress = Progress(
            TextColumn(f"Epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} img/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task = progress.add_task("train", total=iterations, loss="-", rate="-")
        progress.start()

    def step(self, epoch, epochs, iteration, iterations, loss, images_per_second) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=iteration, loss=f"{loss:.4f}", rate=f"{images_per_second:.1f}")
        else:
            # The original script's format, with the true iteration count.
            console.print(f"Epoch [{epoch}/{epochs}], Iter [{iteration}/{iterations}] Loss: {loss:.4f}",
                          soft_wrap=True, markup=False)

    def epoch_end(self, row: dict[str, Any], epochs: int, improved: bool) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        line = f"Epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.2%}"
        if row["val_acc"] is not None:
            line += f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}"
        line += f" | lr {row['lr']:.3g} | {row['epoch_seconds']:.1f}s"
        if improved:
            line += " | best so far"
        console.print(escape(line), soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@contextmanager
def steps(description: str, total: int) -> Iterator[Callable[[str], None]]:
    """A bar over `total` named steps, each told by step(name) as it starts: on a terminal; elsewhere each step's
    name in a line."""
    if not console.is_terminal:
        yield lambda name: info(f"{description}: {name}")
        return
    with Progress(TextColumn(escape(description)), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[now]}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, now="")
        started = [0]

        def step(name: str) -> None:
            bar.update(task, completed=started[0], now=escape(name))
            started[0] += 1

        yield step
        bar.update(task, completed=total)
