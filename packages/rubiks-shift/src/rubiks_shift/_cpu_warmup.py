"""Compile the CPU kernels into Numba's disk cache ahead of time (``warmup --cpu``).

Each job runs one kernel (forward or backward) once on a tiny clip of one compute dtype
through the backend's own entry points, so the signature compiled is the one every
real call has; afterwards every process loads it from Numba's cache. Jobs run in worker
processes (spawned: Numba compiles on one core, holding the GIL), or in this process.
This module imports neither torch nor numba at import time (the workers import it).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed

KERNELS = ("forward", "backward", "affine_relu", "affine_relu_frames")


def compute_dtypes(dtypes: Iterable[str]) -> list[str]:
    """The dtypes the CPU kernels compute in for tensors of ``dtypes`` (float64 for
    float64, float32 for the rest), each once, in order."""
    out: list[str] = []
    for d in dtypes:
        c = "float64" if d == "float64" else "float32"
        if c not in out:
            out.append(c)
    return out


def compile_one(kernel: str, dtype: str) -> tuple[str, float]:
    """Run the CPU ``kernel`` once for ``dtype``: ("compiled" where Numba compiled it,
    else "cached": loaded from its cache or already in this process; seconds)."""
    import torch

    from . import _cpu

    if not _cpu.available():
        raise RuntimeError("the CPU kernels need numba, which is not importable here")
    t = getattr(torch, dtype)
    x = torch.zeros(1, 2, 1, 3, 3, dtype=t)
    shift = torch.zeros(3, 1, dtype=t)
    misses = getattr(_cpu._kernels, kernel).stats.cache_misses
    before = sum(misses.values())
    # a kernel still running after a few seconds logs a notice; this job reports itself
    log = logging.getLogger("rubiks_shift")
    level = log.level
    log.setLevel(logging.ERROR)
    start = time.perf_counter()
    try:
        if kernel == "forward":
            _cpu.forward(x, shift, (1, 1, 1), (0, 0, 0), False)
        elif kernel == "affine_relu":
            _cpu.affine_relu(x, shift[0], shift[1])
        elif kernel == "affine_relu_frames":
            _cpu.affine_relu(x, shift[0], shift[1], torch.zeros(1, dtype=torch.int32))
        else:
            _cpu.backward(x, x, shift, (1, 1, 1), (0, 0, 0), False, True, 1.0, True, True)
    finally:
        log.setLevel(level)
    seconds = time.perf_counter() - start
    return ("compiled" if sum(misses.values()) > before else "cached"), seconds


def run(dtypes: Iterable[str], jobs: int, report: Callable[[str, str, str, float], None]) -> None:
    """Compile every kernel of ``KERNELS`` for every compute dtype of ``dtypes`` in ``jobs``
    worker processes (0: in this process); ``report(kernel, dtype, state, seconds)`` per
    kernel as it finishes, state "failed: <error>" where it failed (the others still
    compile)."""
    todo = [(k, d) for d in compute_dtypes(dtypes) for k in KERNELS]
    if jobs == 0:
        for kernel, dtype in todo:
            try:
                state, seconds = compile_one(kernel, dtype)
            except Exception as e:  # reported; the others still compile
                state, seconds = f"failed: {type(e).__name__}: {e}", 0.0
            report(kernel, dtype, state, seconds)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=context) as pool:
        futures = {pool.submit(compile_one, k, d): (k, d) for k, d in todo}
        for future in as_completed(futures):
            kernel, dtype = futures[future]
            try:
                state, seconds = future.result()
            except Exception as e:  # reported; the others still compile
                state, seconds = f"failed: {type(e).__name__}: {e}", 0.0
            report(kernel, dtype, state, seconds)
