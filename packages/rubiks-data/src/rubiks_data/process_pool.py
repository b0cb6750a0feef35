"""Worker processes for the data tools."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

__all__ = ["process_pool"]


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` processes started fresh (``spawn``), not forked: a forked
    child of a process that runs threads (PyAV's decoders, torch's thread pools, a
    progress bar's monitor) can wait forever on a lock one of those threads held at the
    fork."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
