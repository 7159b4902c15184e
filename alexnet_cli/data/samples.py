"""Samples that cost nothing to share: many paths as one byte buffer and its offsets, labels as one tensor.

A list of 1.28 million `(path, label)` tuples is 2.56 million Python objects. A loader process forked from
the main one touches their reference counts as it reads them, so the kernel copies every page they sit on
into each worker (PyTorch issue 13246: about 170 MB per worker at ImageNet's size), and a process started by
spawn or forkserver gets them all in its pickle. Here they are three tensors: forked workers read the
parent's pages without writing to them, and torch sends tensors to spawned workers as shared memory, so the
pickle holds a handle instead of the paths (tests/test_scale.py holds it under 1 MB at 100,000 samples).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator, Sequence

import torch

# Paths are stored as UTF-8, with the surrogates Python uses for undecodable file-name bytes kept as they are.
_ERRORS = "surrogateescape"


class Strings(Sequence[str]):
    """Strings in one uint8 tensor: string i is the bytes from offsets[i] to offsets[i + 1]."""

    def __init__(self, buffer: torch.Tensor, offsets: torch.Tensor) -> None:
        self.buffer, self.offsets = buffer, offsets

    @classmethod
    def build(cls, strings: Iterable[str]) -> Strings:
        builder = StringsBuilder()
        for string in strings:
            builder.append(string)
        return builder.finish()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.buffer[start:end].numpy().tobytes().decode("utf-8", _ERRORS)

    def __iter__(self) -> Iterator[str]:
        # One decode of the whole buffer, then slices: a million strings in about a second, not ten.
        data = self.buffer.numpy().tobytes()
        offsets = self.offsets.tolist()
        for start, end in zip(offsets, offsets[1:]):
            yield data[start:end].decode("utf-8", _ERRORS)

    def take(self, indices: Sequence[int] | torch.Tensor) -> Strings:
        """The strings at `indices`, in that order, as a new table."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        starts, ends = self.offsets[indices], self.offsets[indices + 1]
        lengths = ends - starts
        offsets = torch.zeros(len(indices) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        # Every byte's position in the old buffer: its string's start, plus its place within the string.
        owner = torch.repeat_interleave(torch.arange(len(indices)), lengths)
        positions = starts[owner] + torch.arange(int(offsets[-1])) - offsets[:-1][owner]
        return Strings(self.buffer[positions], offsets)

    def equal(self, other: Strings) -> bool:
        return torch.equal(self.offsets, other.offsets) and torch.equal(self.buffer, other.buffer)

    def nbytes(self) -> int:
        return self.buffer.numel() + 8 * self.offsets.numel()


class StringsBuilder:
    """Appends strings into a growing byte buffer, without a Python object per string."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.offsets = array("q", [0])

    def append(self, string: str) -> None:
        self.data += string.encode("utf-8", _ERRORS)
        self.offsets.append(len(self.data))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def finish(self) -> Strings:
        buffer = torch.frombuffer(self.data, dtype=torch.uint8) if self.data else torch.empty(0, dtype=torch.uint8)
        offsets = torch.frombuffer(self.offsets, dtype=torch.long).clone()
        return Strings(buffer.clone(), offsets)


class Paths(Sequence[str]):
    """Paths held as a root and each one's name under it: `root/name` (or the name alone, with no root)."""

    def __init__(self, root: str, names: Strings) -> None:
        self.root, self.names = root, names

    @classmethod
    def of(cls, paths: Iterable[str]) -> Paths:
        return cls("", Strings.build(paths))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._join(self.names[index])

    def __iter__(self) -> Iterator[str]:
        return map(self._join, self.names)

    def _join(self, name: str) -> str:
        return os.path.join(self.root, name) if self.root else name
