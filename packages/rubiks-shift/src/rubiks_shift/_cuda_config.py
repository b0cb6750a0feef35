"""Compile-time constants of the CUDA kernels (without importing Numba).

The kernels in ``_cuda_kernels`` and ``_cuda_gather`` are built from these values, the
launch plans in ``_cuda`` size their blocks by them, and the on-disk kernel cache keys its
entries on them, so a process that loads every kernel from the cache never imports
Numba. Several are environment overrides for benchmark sweeps.
"""

from __future__ import annotations

import os

SHIFT_LIMIT = float(2**24)
STORAGE = ("float16", "bfloat16", "float32", "float64")
# Register cap for the kernels (ptxas maxrregcount); tunable for benchmarking. 64 keeps
# the shift-gradient kernel at 50% occupancy (H100, 2026-11-23: 0.171 ms at 64 registers
# vs 0.267 ms at 96 for (8,8,72,56,56); the gather kernel needs 40 either way).
MAX_REGISTERS = int(os.environ.get("RUBIKS_SHIFT_MAX_REGISTERS", "64")) or None
REDUCE_THREADS = 256  # shared-memory reduction width (>= threads per block)
GS_GROUP = int(os.environ.get("RUBIKS_SHIFT_GS_GROUP", "4"))  # rows per unrolled group
FINALIZE_THREADS = 128
# 48 registers: no spills, 5 blocks of 256 threads per SM (the best cap in a sweep of
# 48 / 64 / 96 on an H200, 2026-12-01: benchmarks/sweep_kernels.py)
GATHER_REGISTERS = int(os.environ.get("RUBIKS_SHIFT_GATHER_REGISTERS", "48")) or None
GATHER_GROUP = int(os.environ.get("RUBIKS_SHIFT_GATHER_GROUP", "8"))  # rows per unrolled group
# destination rows per task of the frame-walking gather (a compile-time bound: each pass
# keeps R + 1 rows of loads in flight and 2R values in registers) and its register cap:
# 8 rows at 72 registers (H200, 2026-12-01, v8: forward at (8,8,72,56,56) 0.0401 ms at
# 72, 0.0407 at 64 (8 B spilled by the driver's JIT), 0.0455 at 56; 12 rows at 72 and 16
# at 80, 0.0437 / 0.0436 ms; BENCHMARKS.md)
FRAME_ROWS = int(os.environ.get("RUBIKS_SHIFT_FRAME_ROWS", "8"))
FRAME_REGISTERS = int(os.environ.get("RUBIKS_SHIFT_FRAME_REGISTERS", "72")) or None


def values() -> dict[str, object]:
    """Every constant above by name (part of the kernel cache's key)."""
    return {k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")}
