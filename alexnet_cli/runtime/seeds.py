"""Every seed a run derives from --seed, in one place. Each random stream depends only on what it names, so
that the same seed gives the same run however it is split across processes and interruptions."""

from __future__ import annotations


def epoch_augment_seed(seed: int, epoch: int) -> int:
    """The augmentation of one epoch; each image's crop and flip then derive from it (sample_seed)."""
    return seed * 100_003 + epoch


def sample_seed(augment_seed: int, index: int) -> int:
    """One image's random crop and flip in one epoch: the same in any loader process, and after a resume."""
    return augment_seed * 1_000_003 + index


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The dropout masks of torchrun rank > 0 from `epoch` on (rank 0 goes on with the run's own stream)."""
    return seed * 1_000_003 + epoch * 1_009 + rank
