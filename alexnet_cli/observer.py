"""What the core reports as it works. console.RichObserver draws it; tests and benchmarks may record it or
stay silent. The core never draws: it tells an Observer."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

# Observer.progress as a value: (description, total) -> a context manager that yields advance(n).
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


class Observer(Protocol):
    def info(self, message: str) -> None: ...
    def progress(self, description: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
        """Work on `total` items (files indexed, images decoded): yields advance(n)."""
    def warn(self, message: str) -> None: ...
    def data_summary(self, classes: Sequence[str], train_counts: Sequence[int], val_counts: Sequence[int] | None,
                     val_source: str) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, iterations: int, images: int) -> None: ...
    def step(self, epoch: int, epochs: int, iteration: int, iterations: int, loss: float | None,
             images_per_second: float) -> None: ...
    def epoch_end(self, row: dict[str, Any], epochs: int, improved: bool) -> None: ...


@contextmanager
def no_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Observer.progress that shows nothing: the default of the core functions that report progress."""
    yield lambda n: None


class SilentObserver:
    """An observer that shows nothing: every torchrun rank but 0, and callers that only want the results."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    progress = staticmethod(no_progress)
