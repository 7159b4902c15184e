"""Multi-process training under torchrun: DistributedDataParallel on NCCL (CUDA, where torch has it) or gloo
(the CPU, and CUDA on Windows, whose wheels have no NCCL).

`alexnet train` run by torchrun (`torchrun --nproc_per_node=N -m alexnet_cli train DATA`) finds WORLD_SIZE,
RANK and LOCAL_RANK in its environment and joins the process group; run plainly, everything here is a no-op.
Rank 0 alone prints, writes the run folder and saves checkpoints; metrics are summed over all ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as td
from torch.utils.data import DistributedSampler

from alexnet_cli.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine: they share its memory

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def from_env(environ=os.environ) -> Dist:
    """The launch torchrun describes in the environment, or a single process."""
    if "WORLD_SIZE" not in environ:
        return SINGLE
    try:
        dist = Dist(int(environ["WORLD_SIZE"]), int(environ.get("RANK", 0)), int(environ.get("LOCAL_RANK", 0)),
                    int(environ.get("LOCAL_WORLD_SIZE", environ["WORLD_SIZE"])))
    except ValueError:
        raise ConfigError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
    if dist.world_size < 1 or not 0 <= dist.rank < dist.world_size:
        raise ConfigError(f"RANK {dist.rank} does not fit WORLD_SIZE {dist.world_size}")
    return dist


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA where this torch build has it; gloo otherwise (the CPU, and Windows, which has no NCCL)."""
    return "nccl" if device.type == "cuda" and td.is_nccl_available() else "gloo"


@contextmanager
def process_group(dist: Dist, device: torch.device) -> Iterator[None]:
    """Join the process group for the length of a run, and always leave it (destroy_process_group)."""
    if not dist.enabled:
        yield
        return
    backend = backend_for(device)
    # NCCL binds its communicator to the rank's GPU up front; gloo copies CUDA tensors through the host.
    kwargs = {"device_id": device} if backend == "nccl" else {}
    td.init_process_group(backend, **kwargs)
    try:
        yield
        # Every rank leaves together: a rank that tears its group down while another still talks to it (rank 0
        # writing the run's last files) can abort at exit in gloo's threads ("terminate called without an
        # active exception"). After an error the others are stopped by torchrun, and no rank waits here.
        td.barrier()
    finally:
        td.destroy_process_group()


# How long the other ranks wait for local rank 0 to index a folder: a first index of ImageNet on a slow disk
# can take longer than the 10 minutes a training collective is allowed.
INDEX_WAIT = 4 * 3600


def from_local_rank_zero(values: Sequence[int], dist: Dist) -> list[int]:
    """Wait for local rank 0 of this node to get here, and return the integers it passed (the other ranks
    pass placeholders of the same length). It runs on a gloo group of its own, with a timeout long enough for
    a first scan, rather than on the training group (NCCL's default timeout is 10 minutes)."""

    group = td.new_group(backend="gloo", timeout=timedelta(seconds=INDEX_WAIT))
    try:
        mine = torch.tensor([int(v) for v in values], dtype=torch.long)
        gathered = [torch.empty_like(mine) for _ in range(dist.world_size)]
        td.all_gather(gathered, mine, group=group)
    finally:
        td.destroy_process_group(group)
    return gathered[dist.rank - dist.local_rank].tolist()


def all_reduce_sum(tensor: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Sum a tensor over every rank, in place; the identity for one process."""
    if dist.enabled:
        td.all_reduce(tensor, op=td.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device, dist: Dist) -> bool:
    """True on every rank when it is true on any: all ranks then stop at the same step."""
    if not dist.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(value, dist).item() > 0)


def train_shard(n: int, seed: int, epoch: int, dist: Dist) -> list[int]:
    """This rank's share of one epoch's shuffle, by torch's DistributedSampler (padded to equal shares).

    The permutation depends on (seed, epoch) only, and rank r takes every world_size-th index from r: so the
    images that N processes train on at one step of batch B each are exactly those that one process trains
    on at batch N*B.
    """
    sampler = DistributedSampler(range(n), num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return list(sampler)


def eval_shard(n: int, dist: Dist) -> list[int]:
    """This rank's share of the validation set, with DistributedSampler's padding removed.

    DistributedSampler pads the index list by repeating its start so that every rank gets as many; those
    repeats would be counted twice in the metrics, so they are dropped here (ranks may differ by one image).
    """
    sampler = DistributedSampler(range(n), num_replicas=dist.world_size, rank=dist.rank, shuffle=False)
    indices: Sequence[int] = list(sampler)
    positions = range(dist.rank, sampler.total_size, dist.world_size)  # where each index sat in the padded list
    return [index for index, position in zip(indices, positions) if position < n]
