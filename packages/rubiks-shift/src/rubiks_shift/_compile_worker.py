"""A worker process that compiles one CUDA kernel into the on-disk cache.

Started by :mod:`rubiks_shift._kernel_cache` (``worker_command``) with a stand-in
``rubiks_shift`` package whose ``__init__`` is not run, so the worker imports Numba and
the kernel modules but not torch. Prints ``cached`` or ``compiled`` as its last line;
exits with 1 (the error on stderr) where the kernel cannot be compiled or cached.
"""

from __future__ import annotations

import argparse
import sys

from . import _kernel_cache


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rubiks_shift._compile_worker")
    parser.add_argument("--device", type=int, required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--shift-storage", required=True)
    parser.add_argument("--kernel", required=True, choices=_kernel_cache.KERNELS)
    args = parser.parse_args(argv)
    try:
        state = _kernel_cache.fill(args.storage, args.shift_storage, args.kernel, args.device)
    except Exception as e:  # reported to the parent, which falls back
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(state, flush=True)
    return 0
