"""Registers and spills of every CUDA kernel, without a GPU (needs CUDA's ``ptxas``).

Compiles each kernel of ``rubiks_shift._cuda_kernels.Kernels`` to PTX with Numba (as the
CI's PTX test does) and assembles it with ``ptxas -v`` for one architecture at the
kernel's register cap, printing what ptxas reports: registers per thread and bytes of
spill stores / loads; with ``--loads``, also how many global loads each load has in
flight beside it when its value is first used (from the SASS, through ``cuobjdump``): a
load used before the next one is issued waits its whole latency alone. On 2026-12-01 the
local ptxas (CUDA 13.0) gave the H200's counts for the gathers (the driver's JIT reported
the same registers; its spill bytes for the frame walk were 40 where this ptxas says 8),
so register work can be done without a GPU and only timed on one.

    python benchmarks/ptx_registers.py [--arch sm_90] [--dtype float32 ...] [--loads]
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
from rubiks_shift._kernel_cache import KERNELS  # every kernel the package launches

STORAGE = ("float16", "bfloat16", "float32", "float64")


def register_cap(kernel) -> int | None:
    """The register cap ``kernel`` (a Numba CUDA dispatcher) was built with."""
    return kernel.targetoptions.get("max_registers")


def ptxas_report(ptx: str, arch: str, cap: int | None, loads: bool = False) -> str:
    """ptxas -v's 'Used N registers' and spill line for one PTX module (with ``loads``,
    followed by ``loads_in_flight`` of its SASS)."""
    with tempfile.TemporaryDirectory() as tmp:
        source, cubin = Path(tmp, "kernel.ptx"), Path(tmp, "k.cubin")
        source.write_text(ptx)
        args = ["ptxas", f"-arch={arch}", "-v", str(source), "-o", str(cubin)]
        if cap:
            args += ["--maxrregcount", str(cap)]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ptxas failed: {done.stderr.strip()}")
        sass = ""
        if loads:
            dump = subprocess.run(
                ["cuobjdump", "-sass", str(cubin)], capture_output=True, text=True, check=True
            )
            sass = dump.stdout
    used = re.search(r"Used (\d+) registers", done.stderr)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", done.stderr)
    if used is None or spill is None:
        raise RuntimeError(f"unexpected ptxas output: {done.stderr.strip()}")
    report = (
        f"{used.group(1)} registers, spills {spill.group(1)} B stored / {spill.group(2)} B loaded"
    )
    return report + (f"; {loads_in_flight(sass)}" if loads else "")


_INSTRUCTION = re.compile(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?(\S+)\s*([^;]*);")


def loads_in_flight(sass: str) -> str:
    """For each global load (LDG) of a SASS listing: how many later loads were issued
    before its destination register is first read or overwritten, in program order
    (straight-line code; a branch in between is not followed). Summarised as the count of
    loads, how many have none beside them (each of those waits its latency alone), and
    the median."""
    pending: dict[str, int] = {}  # destination register -> loads issued when it was issued
    issued, beside = 0, []
    for op, operands in _INSTRUCTION.findall(sass):
        registers = re.findall(r"\bR\d+\b", operands)
        is_load = op.startswith("LDG")
        read = registers[1:] if registers and not op.startswith("ST") else registers
        written = registers[:1] if registers and not op.startswith("ST") else []
        for r in read + (written if not is_load else []):
            if r in pending:
                beside.append(issued - pending.pop(r) - 1)
        if is_load:
            issued += 1
            pending[written[0]] = issued
    if not beside:
        return "no global loads"
    beside.sort()
    alone = sum(1 for n in beside if n == 0)
    return f"{len(beside)} loads, {alone} alone, median {beside[len(beside) // 2]} beside"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--dtype", nargs="+", default=list(STORAGE))
    parser.add_argument("--loads", action="store_true", help="loads in flight (cuobjdump)")
    args = parser.parse_args()
    for tool in ("ptxas", "cuobjdump") if args.loads else ("ptxas",):
        if shutil.which(tool) is None:
            print(f"{tool} not found on PATH (it comes with the CUDA toolkit)", file=sys.stderr)
            return 2
    digits = args.arch.removeprefix("sm_")
    cc = (int(digits[:-1]), int(digits[-1]))
    for storage in args.dtype:
        kernels = _cuda_kernels.Kernels(storage, "float32")
        for name in KERNELS:
            if name.endswith("_affine") and storage == "float64":
                continue  # the fused inference form's gathers: no float64 use
            fn = getattr(kernels, name)
            ptx = _cuda_kernels.kernel_ptx(fn, getattr(kernels, name + "_sig"), cc)
            cap = register_cap(fn)
            report = ptxas_report(ptx, args.arch, cap, args.loads)
            print(f"{storage:<9} {name:<20} cap {cap or '-':<3} {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
