"""Loaders: the dataset, sampler and collate function that carry images to the model, and the processes
that load them.

Everything a loader process receives is defined at module level and pickles, so loader processes start
under any start method: fork (Linux up to Python 3.13), spawn (macOS and Windows) and forkserver (Linux
from Python 3.14). Loader processes ignore SIGINT and SIGTERM: a Ctrl-C in a terminal, or a SIGTERM sent
to the whole process group (Slurm preemption, systemd, `timeout`), reaches the main process alone, which
stops training gracefully and then shuts its loaders down itself (`Loader.close`).

Only the commands that load images import this module, so it imports torch at the top.
"""

from __future__ import annotations

import atexit
import collections
import io
import itertools
import math
import multiprocessing
import pickle
import signal
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from alexnet_cli.data.cache import ImageCache
from alexnet_cli.data.images import UnreadableImage, open_image
from alexnet_cli.data.preprocess import PixelBatch, Pixels
from alexnet_cli.data.samples import Paths
from alexnet_cli.errors import DataError, first_line
from alexnet_cli.runtime.context import Runtime
from alexnet_cli.runtime.seeds import sample_seed


class ImageDataset:
    """(image, label) pairs that never stop a run: a file that fails to open yields its error instead.

    It holds only paths and labels as flat tensors (samples.py), picklable transforms and the cache: torch
    hands tensors to spawned processes as shared memory, so its pickle stays small at any size. With
    `augment_seed`, each sample's random augmentation is seeded by (augment_seed, index) alone, so it is the
    same whichever worker loads it, and the same after a resume in the middle of an epoch.
    """

    def __init__(self, paths: Paths | Sequence[str], labels: torch.Tensor | Sequence[int] | None,
                 transform: Callable, augment_seed: int | None = None, draft_size: int | None = None,
                 cache: ImageCache | None = None, from_cache: Callable | None = None) -> None:
        self.paths = paths if isinstance(paths, Paths) else Paths.of(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long) if labels is not None else None
        self.transform = transform
        self.augment_seed = augment_seed
        self.draft_size = draft_size
        self.cache = cache
        self.from_cache = from_cache  # the second half of `transform`, for the cached pixels
        if cache is not None and from_cache is None:
            raise ValueError("a cache needs the second half of the transform (from_cache)")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        # An EpochSampler hands (index, augment_seed) pairs; a plain sampler hands indices.
        index, augment_seed = key if isinstance(key, tuple) else (key, self.augment_seed)
        label = int(self.labels[index]) if self.labels is not None else -1
        path = self.paths[index]
        pixels = self.cache.get(path) if self.cache is not None else None
        transform: Callable[[Any], Any]
        if pixels is not None and self.from_cache is not None:
            source, transform = pixels, self.from_cache
        else:
            try:
                source, transform = open_image(path, self.draft_size), self.transform
            except UnreadableImage as exc:
                return None, label, index, str(exc)
        if augment_seed is None:
            return transform(source), label, index, None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(augment_seed, index))
            return transform(source), label, index, None


def collate_readable(batch):
    """Stack the images that opened; pass on the indices and errors of those that did not.

    Returns (images or None, labels, indices, failed) where failed is a list of (index, message).
    """
    good = [item for item in batch if item[0] is not None]
    failed = [(index, error) for image, _, index, error in batch if image is None]
    if not good:
        return None, None, [], failed
    first = good[0][0]
    images = PixelBatch.stack([item[0] for item in good]) if isinstance(first, Pixels) else \
        torch.stack([item[0] for item in good])
    labels = torch.tensor([item[1] for item in good], dtype=torch.long)
    return images, labels, [item[2] for item in good], failed


class EpochSampler:
    """The order of one epoch and its augmentation seed, replaced between epochs.

    One DataLoader over it serves the whole run, so its worker processes persist from epoch to epoch
    (persistent_workers) instead of starting again each time. It yields (index, augment_seed) pairs: the seed
    travels with each index to whichever worker loads it.
    """

    def __init__(self) -> None:
        self.order: list[int] = []
        self.augment_seed: int | None = None

    def set_epoch(self, order: Sequence[int], augment_seed: int | None) -> None:
        self.order, self.augment_seed = list(order), augment_seed

    def __iter__(self):
        # Pairs made as the loader asks for them: at ImageNet's size a list of them would be 1.28M tuples.
        return zip(self.order, itertools.repeat(self.augment_seed))

    def __len__(self) -> int:
        return len(self.order)


def report_unreadable(failed: Sequence[tuple[int, str]], strict: bool, observer) -> int:
    """The files of a batch that failed to open (collate_readable's `failed`): each named in a warning, or
    the first an error under --strict. Returns how many."""
    for _, error in failed:
        if strict:
            raise DataError(f"--strict: {error}")
        observer.warn(f"skipped {error}")
    return len(failed)


# ---------------------------------------------------------------------------------------------- processes


def _stop_signals() -> list[signal.Signals]:
    """SIGINT and SIGTERM, where the platform has them."""
    return [getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name)]


def worker_init(worker_id: int) -> None:
    """The first thing each loader process runs: leave SIGINT and SIGTERM to the main process, which stops
    gracefully and then tells its loaders to stop. A loader killed by the group's signal would instead end
    the run with "DataLoader worker is killed by signal" and lose the epoch."""
    for sig in _stop_signals():
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked while the process started (_stop_signals_blocked)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _stop_signals())


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread while loader processes start, as CPython's resource tracker
    does: the children inherit the mask (across fork, and across exec under spawn), so a signal that arrives
    before worker_init has run cannot kill them. The main process gets any such signal as soon as the mask is
    lifted. Windows has no signal masks; there worker_init alone does the work."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _stop_signals())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Loader(DataLoader):
    """A DataLoader whose worker processes start with the stop signals blocked and end when it is closed.

    Use it as a context manager, or call close(): the workers ignore SIGTERM, and torch's own clean-up at
    interpreter exit stops workers with SIGTERM (and then waits for them). Loaders still open at exit are
    closed by an atexit hook that runs before torch's.
    """

    def __iter__(self):
        with _stop_signals_blocked():
            return super().__iter__()

    def close(self) -> None:
        # A loader with workers is always persistent (make_loader), so torch keeps its one iterator here.
        iterator, self._iterator = getattr(self, "_iterator", None), None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        _OPEN.discard(self)

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ThreadLoader:
    """The batches of a dataset with no random augmentation (evaluate, predict), in order, its samples decoded
    on threads while the model computes: Pillow decodes and resizes without Python's lock, and no process has
    to start. Random augmentation seeds torch's global generator per sample, which threads cannot share, so
    training keeps to Loader."""

    def __init__(self, dataset: ImageDataset, batch_size: int, order: Sequence[int] | None, threads: int,
                 pin_memory: bool) -> None:
        self.dataset, self.batch_size, self.threads, self.pin_memory = dataset, batch_size, threads, pin_memory
        self.order = list(range(len(dataset))) if order is None else list(order)

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self):
        indices = iter(self.order)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="alexnet-decode") as pool:
            pending: collections.deque = collections.deque()

            def submit_next() -> None:  # at most two batches decoded ahead
                index = next(indices, None)
                if index is not None:
                    pending.append(pool.submit(self.dataset.__getitem__, index))

            for _ in range(2 * self.batch_size):
                submit_next()
            try:
                while pending:
                    samples: list[tuple[Any, ...]] = []
                    while pending and len(samples) < self.batch_size:
                        samples.append(pending.popleft().result())
                        submit_next()
                    batch = collate_readable(samples)
                    if self.pin_memory and batch[0] is not None:
                        batch = (batch[0].pin_memory(), batch[1].pin_memory(), *batch[2:])
                    yield batch
            finally:
                for future in pending:
                    future.cancel()

    def close(self) -> None:
        pass

    def __enter__(self) -> ThreadLoader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_OPEN: weakref.WeakSet[Loader] = weakref.WeakSet()


@atexit.register
def _close_open_loaders() -> None:
    # Registered when this module is first imported, after torch's own exit hook, so it runs before it.
    for loader in list(_OPEN):
        loader.close()


def start_method() -> str:
    """How this process starts loader processes: fork, spawn or forkserver."""
    return multiprocessing.get_start_method()


class _TensorsByReference(pickle.Pickler):
    """Pickles everything but tensors, which torch sends to a loader process through shared memory: pickling
    them here would copy the whole image cache just to ask whether it can be sent."""

    def persistent_id(self, obj):
        return id(obj) if isinstance(obj, torch.Tensor) else None


def why_not_picklable(*objects) -> str | None:
    """Why these objects cannot be sent to a loader process started by spawn or forkserver; None if they can."""
    try:
        _TensorsByReference(io.BytesIO()).dump(objects)
    except Exception as exc:  # pickling fails with AttributeError, TypeError or PicklingError, among others
        return first_line(exc)
    return None


def _ignore(message: str) -> None:
    pass


@dataclass(frozen=True)
class LoaderSettings:
    """How a loader carries a dataset: what every command's runtime decides, the same for each of its loaders."""

    batch_size: int
    workers: int = 0  # loader processes
    pin_memory: bool = False  # page-locked host memory makes non_blocking copies to CUDA asynchronous
    threads: int = 0  # with no workers: threads that decode an unaugmented dataset (evaluate, predict)
    warn: Callable[[str], None] = _ignore  # told, in one line, when loader processes cannot start


    @classmethod
    def for_runtime(cls, runtime: Runtime, batch_size: int, warn: Callable[[str], None] = _ignore,
                    threads: int = 0) -> LoaderSettings:
        return cls(batch_size, runtime.workers, runtime.pin_memory, threads, warn)


def make_loader(dataset: ImageDataset, settings: LoaderSettings,
                order: Sequence[int] | EpochSampler | None = None) -> Loader | ThreadLoader:
    """Batches of `dataset` in `order` (default: as given), or as an EpochSampler says. Each batch is
    (images, labels, indices, failed).

    With no workers, `settings.threads` decode an unaugmented dataset on threads (ThreadLoader).
    With workers, the loader's processes persist from one pass to the next (a loader iterated once per epoch
    starts them once) until the loader is closed. Where the dataset cannot be sent to a process started by
    spawn or forkserver, `settings.warn` is told so in one line and the images load in this process instead.
    """
    batch_size, workers, pin_memory, threads = settings.batch_size, settings.workers, settings.pin_memory, \
        settings.threads
    if threads > 0 and workers == 0 and dataset.augment_seed is None and not isinstance(order, EpochSampler):
        return ThreadLoader(dataset, batch_size, order, threads, pin_memory)
    method = start_method() if workers > 0 else "fork"
    if method != "fork":  # fork copies the process; spawn and forkserver pickle what the workers receive
        reason = why_not_picklable(dataset, collate_readable, worker_init)
        if reason is not None:
            settings.warn(f"loader processes cannot start under the {method!r} start method ({reason}); "
                 "loading in this process instead")
            workers = 0
    sampler = order if isinstance(order, EpochSampler) or order is None else list(order)
    loader = Loader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=worker_init if workers > 0 else None,
        pin_memory=pin_memory,  # page-locked host memory makes non_blocking copies to CUDA asynchronous
        collate_fn=collate_readable,
        # Every new iterator draws a seed from this generator; without one it would draw from the global RNG
        # and shift the dropout masks of everything after it, so a resumed run would drift from a straight one.
        generator=torch.Generator().manual_seed(dataset.augment_seed or 0),
    )
    if workers > 0:
        _OPEN.add(loader)
    return loader
