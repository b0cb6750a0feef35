"""Registers and spills of every CUDA kernel, without a GPU (needs CUDA's ``ptxas``).

Compiles each kernel of ``rubiks_shift._cuda_kernels.Kernels`` to PTX with Numba (as the
CI's PTX test does) and assembles it with ``ptxas -v`` for one architecture at the
kernel's register cap, printing what ptxas reports: registers per thread and bytes of
spill stores / loads. On 2026-12-01 the local ptxas (CUDA 13.0) gave the H200's counts
for the gathers (the driver's JIT reported the same registers; its spill bytes for the
frame walk were 40 where this ptxas says 8), so register work can be done without a GPU
and only timed on one.

    python benchmarks/ptx_registers.py [--arch sm_90] [--dtype float32 ...]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rubiks_shift import _cuda_kernels

KERNELS = ("gather", "gather_narrow", "gather_frames", "grad_shift", "finalize")
STORAGE = ("float16", "bfloat16", "float32", "float64")


def register_cap(kernel) -> int | None:
    """The register cap ``kernel`` (a Numba CUDA dispatcher) was built with."""
    return kernel.targetoptions.get("max_registers")


def ptxas_report(ptx: str, arch: str, cap: int | None) -> str:
    """ptxas -v's 'Used N registers' and spill line for one PTX module."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "kernel.ptx")
        source.write_text(ptx)
        args = ["ptxas", f"-arch={arch}", "-v", str(source), "-o", str(Path(tmp, "k.cubin"))]
        if cap:
            args += ["--maxrregcount", str(cap)]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed: {done.stderr.strip()}")
    used = re.search(r"Used (\d+) registers", done.stderr)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", done.stderr)
    if used is None or spill is None:
        raise RuntimeError(f"unexpected ptxas output: {done.stderr.strip()}")
    return (
        f"{used.group(1)} registers, spills {spill.group(1)} B stored / {spill.group(2)} B loaded"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--dtype", nargs="+", default=list(STORAGE))
    args = parser.parse_args()
    if shutil.which("ptxas") is None:
        print("ptxas not found on PATH (it comes with the CUDA toolkit)", file=sys.stderr)
        return 2
    digits = args.arch.removeprefix("sm_")
    cc = (int(digits[:-1]), int(digits[-1]))
    for storage in args.dtype:
        kernels = _cuda_kernels.Kernels(storage, "float32")
        for name in KERNELS:
            fn = getattr(kernels, name)
            ptx = _cuda_kernels.kernel_ptx(fn, getattr(kernels, name + "_sig"), cc)
            cap = register_cap(fn)
            report = ptxas_report(ptx, args.arch, cap)
            print(f"{storage:<9} {name:<14} cap {cap or '-':<3} {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
