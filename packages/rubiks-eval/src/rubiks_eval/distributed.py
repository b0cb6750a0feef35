"""torch.distributed helpers: setup from torchrun's environment, sharding, gathering.

A run under ``torchrun`` (``WORLD_SIZE`` > 1) initialises a process group: NCCL when the
device is CUDA, gloo otherwise. Rank r evaluates dataset indices ``r, r + W, r + 2W, ...``
(no padding, no duplicates); per-video results are gathered to every rank and sorted by
index, so the metrics are those of a single process.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "all_gather_objects", "barrier", "setup_distributed", "shard_indices"]


@dataclass
class DistEnv:
    """Where this process stands: rank, world size, its device, and whether it owns the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def close(self, *, barrier: bool = True) -> None:
        """Destroy the process group if this process created it.

        With ``barrier`` (a normal exit) all ranks meet first, so no rank tears its
        connections down while another is still working (rank 0 writing results, say): a
        gloo rank that destroyed its group early was seen to abort at exit on a loaded
        2-core machine. On an error path pass ``barrier=False``: the other ranks may never
        arrive, and the failing rank should exit at once.
        """
        if self.owns_group and dist.is_initialized():
            try:
                if barrier:
                    dist.barrier()
            finally:
                dist.destroy_process_group()
                self.owns_group = False
                # destroy_process_group drops only c10d's own references; a group kept
                # alive by a reference cycle until interpreter shutdown can abort there
                # (gloo worker threads releasing tensors without a Python to return to)
                gc.collect()

    def __enter__(self) -> DistEnv:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(barrier=exc_type is None)


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """``None``/"auto" -> CUDA if available else CPU; "cuda" -> the local rank's GPU."""
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    return dev


def setup_distributed(device: str | None = None, backend: str | None = None) -> DistEnv:
    """Read torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) and join the group.

    Without them (or with WORLD_SIZE=1) this is a single process and nothing is
    initialised. An already initialised default group is reused (not owned).
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return DistEnv(rank, world, local, resolve_device(device, local), owns_group=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv(device=resolve_device(device, 0))
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = dev
    dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return DistEnv(rank, world, local, dev, owns_group=True)


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """Strided shard of ``range(n)`` for ``rank``; the shards partition the range exactly."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank {rank} for world size {world_size}")
    return list(range(rank, n, world_size))


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(env: DistEnv) -> None:
    """Synchronise all ranks (no-op in a single process)."""
    if env.distributed:
        dist.barrier()
