"""Reproducible, resumable training order and per-sample augmentation seeds."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochSampler", "SeededDataset", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed determined by (run seed, epoch, dataset index) only."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1


class EpochSampler(Sampler[int]):
    """Shuffled order fixed by (seed, epoch); rank-strided; can start mid-epoch.

    Every epoch uses ``floor(n / world_size) * world_size`` indices (the tail of the
    permutation is dropped so ranks get equal counts); ``start`` skips that many of this
    rank's indices, which is how a resumed run continues where it stopped.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n < world_size:
            raise ValueError(f"dataset of {n} items is smaller than world size {world_size}")
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start

    def per_rank(self) -> int:
        return self.n // self.world_size

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        used = perm[: self.per_rank() * self.world_size]
        return used[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return max(0, self.per_rank() - self.start)


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``i`` of epoch ``e`` sees RNGs seeded by (seed, e, i).

    Random augmentations then do not depend on worker count, order or resumption. The
    caller's global RNG states (torch CPU, ``random``, numpy) are restored afterwards.
    Items are ``(index, sample)`` for :func:`rubiks_eval.evaluate.collate_indexed`.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        s = sample_seed(self.seed, self.epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % (2**32))
            try:
                return index, self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
