"""Dump (or compare) the PTX of every CUDA kernel, without a GPU.

Compiles each kernel of every (storage, shift storage) pair the op uses with Numba's
``compile_ptx`` (the same typing, lowering and NVVM steps as a kernel compiled on the GPU,
for one architecture) and writes one ``<storage>-<shift>-<kernel>.ptx`` file per kernel
plus ``times.json`` (seconds per compile) into a folder. ``--compare A B`` reports which
kernels' PTX differ between two such folders (exit status 1 where any does), so a change
to how the kernels are built, compiled or cached can be checked to leave the generated
code as it was. Moving a kernel or a device function to another module renames symbols
only (mangled names carry the module, a per-process counter and the device functions'
environment declarations): those kernels are reported "the same up to symbol names", the
same instructions, registers and parameters, and do not fail the comparison.

    python benchmarks/ptx_dump.py --out /tmp/ptx-before [--cc 9.0] [--pairs all]
    python benchmarks/ptx_dump.py --compare /tmp/ptx-before /tmp/ptx-after
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

STORAGE = ("float32", "bfloat16", "float16", "float64")


def pairs(which: str) -> list[tuple[str, str]]:
    """(storage, shift storage) pairs: the ones models use ("used") or every one ("all")."""
    if which == "all":
        return [(s, t) for s in STORAGE for t in ("float32", "float64")]
    return [(s, "float32") for s in STORAGE] + [("float64", "float64")]


def dump(out: Path, cc: tuple[int, int], which: str) -> None:
    from rubiks_shift import _cuda_kernels
    from rubiks_shift._kernel_cache import KERNELS  # every kernel the package launches

    out.mkdir(parents=True, exist_ok=True)
    times = {}
    for storage, shift in pairs(which):
        kernels = _cuda_kernels.Kernels(storage, shift)
        for name in KERNELS:
            fn = getattr(kernels, name)
            start = time.perf_counter()
            ptx = _cuda_kernels.kernel_ptx(fn, getattr(kernels, name + "_sig"), cc)
            label = f"{storage}-{shift}-{name}"
            times[label] = round(time.perf_counter() - start, 3)
            _write(out / f"{label}.ptx", ptx)
            print(f"{label:<36} {times[label]:7.2f} s", flush=True)
    _write(out / "times.json", json.dumps(times, indent=1) + "\n")


def _write(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
        f.write(text)
    os.replace(f.name, path)


# Numba's environment declaration of each device function, and the symbols whose names
# depend on where and in which order things were defined and compiled
_ENV = re.compile(r"^\.common \.global \.align 8 \.u64 _ZN08NumbaEnv\w+;\n", re.M)
_SYMBOL = re.compile(r"_ZN\w+|_cudapy_smem_\d+")


def without_names(ptx: str) -> str:
    """``ptx`` without its environment declarations, every symbol renamed by order of
    appearance."""
    names: dict[str, str] = {}
    body = _ENV.sub("", ptx)
    return _SYMBOL.sub(lambda m: names.setdefault(m.group(0), f"SYMBOL{len(names)}"), body)


def compare(a: Path, b: Path) -> int:
    names = sorted({p.name for p in a.glob("*.ptx")} | {p.name for p in b.glob("*.ptx")})
    if not names:
        print(f"no .ptx files in {a} or {b}", file=sys.stderr)
        return 2
    differ = renamed = 0
    for name in names:
        pa, pb = a / name, b / name
        if not pa.exists() or not pb.exists():
            print(f"{name}: only in {a if pa.exists() else b}")
            differ += 1
        elif pa.read_bytes() == pb.read_bytes():
            continue
        elif without_names(pa.read_text()) == without_names(pb.read_text()):
            renamed += 1
        else:
            print(f"{name}: PTX differs")
            differ += 1
    same = len(names) - differ - renamed
    print(
        f"{same} of {len(names)} kernels' PTX identical, {renamed} the same up to symbol "
        f"names, {differ} different"
    )
    return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="folder to write the PTX into")
    group.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    parser.add_argument("--cc", default="9.0", help="compute capability (default 9.0)")
    parser.add_argument("--pairs", choices=("used", "all"), default="used")
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    major, _, minor = args.cc.partition(".")
    dump(args.out, (int(major), int(minor or 0)), args.pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
