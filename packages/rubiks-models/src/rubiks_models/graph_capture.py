"""What every CUDA-graph capture of this package shares: cuBLAS workspaces of its own,
and a pause of the models' own graphs while a runner captures them whole.

cuBLAS keeps one workspace per (handle, stream), made by the first matrix product on that
stream. A capture on a stream that already has one records the graph against it: memory
outside the graph's pool, which the graph does not own. Whoever clears the workspaces
then frees that memory under the graph: torch.compile's CUDA graphs
(``mode="reduce-overhead"``) clear them before and after each of their own warm-ups and
recordings, after which the next replay of such a graph wrote to freed memory (an
illegal memory access on an H100, bf16 training, whose small-plane blocks are matrix
products). Inside :func:`own_cublas_workspaces` a capture makes its workspace in its own
pool, and no later work on that stream reuses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["own_cublas_workspaces", "paused", "pausing"]

_pause_depth = 0


def _clear() -> None:
    torch._C._cuda_clearCublasWorkspaces()


@contextmanager
def own_cublas_workspaces() -> Iterator[None]:
    """cuBLAS's workspaces dropped on entry and on exit: wrap one or more captures that
    share a memory pool, so that their products use a workspace made inside it."""
    _clear()
    try:
        yield
    finally:
        _clear()


@contextmanager
def paused() -> Iterator[None]:
    """Models run their layers directly inside this context, without capturing or
    replaying graphs of their own (training stages, a fused forward): used while a
    runner warms up a model and captures it whole."""
    global _pause_depth
    _pause_depth += 1
    try:
        yield
    finally:
        _pause_depth -= 1


def pausing() -> bool:
    """Whether a :func:`paused` context is open."""
    return _pause_depth > 0
