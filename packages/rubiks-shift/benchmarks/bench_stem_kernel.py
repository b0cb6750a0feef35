"""The stem kernel on a GPU: ``stem_conv`` against cuDNN's convolution and the write floor.

    python packages/rubiks-shift/benchmarks/bench_stem_kernel.py [--dtypes bfloat16 float32]
        [--frames 64 --size 224] [--sweep] [--json OUT.json]

For the stems of RubiksNet-Large (72 channels) and -Tiny (54) on ``--frames`` frames of
3 x ``--size``², this times: writing the result once (``fill_``, the floor), cuDNN's
``F.conv2d`` (what the unfused models run) and :func:`rubiks_shift.stem_conv` (the
default kernel). ``--sweep`` adds the kernel built with each (pixels per thread, channels
per block, threads per block) of ``SWEEP``. Every output is checked against
``F.conv2d`` in float64 before it is timed. Timed as ``bench_shift.py`` times
(``_gpu_time``): per call, calls captured in a CUDA graph and replayed (host time
excluded), and ``eager``, the calls issued back to back from Python.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
import torch.nn.functional as F
from bench_shift import _gpu_time, write_gpu_rows  # this folder (a script)

from rubiks_shift import _cuda_launch, stem_conv
from rubiks_shift._cuda_kernels import Kernels
from rubiks_shift._cuda_plan import stem_plan
from rubiks_shift._cuda_tuning import TUNING

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STEMS = {"large": 72, "tiny": 54}  # output channels of each tier's stem
SWEEP = [(p, g, t) for p in (2, 4, 6, 8) for g in (24, 32) for t in (64, 128)]
REPS = 20


def _check(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, label: str) -> None:
    want = F.conv2d(x.double(), w.double(), stride=2, padding=1)
    tol = 1e-5 if y.dtype == torch.float32 else 2e-2
    err = float((y.double() - want).abs().max() / want.abs().max())
    if not err < tol:
        raise AssertionError(f"{label}: relative error {err:.3g} against float64 (tol {tol})")


def _variant(x, w, y, pixels: int, group: int, threads: int, kernels: dict):
    """A launch of the stem kernel built with ``pixels`` and ``group``, ``threads`` per
    block, writing ``y``."""
    storage = str(x.dtype).removeprefix("torch.")
    key = (storage, pixels, group)
    if key not in kernels:
        tuning = replace(TUNING, stem_pixels=pixels, stem_group=group)
        kernels[key] = Kernels(storage, "float32", tuning)
    tuning = replace(TUNING, stem_pixels=pixels, stem_group=group, stem_threads=threads)
    step = stem_plan(tuple(x.shape), w.shape[0], tuning)
    return lambda: _cuda_launch.run(kernels[key], step, (x, w, y), x.get_device())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=list(DTYPES))
    p.add_argument("--frames", type=int, default=64, help="N: clips x frames (default 8 x 8)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--json", help="write the rows here (atomically)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    rows, kernels = [], {}
    g = torch.Generator(device="cuda").manual_seed(0)
    for (tier, channels), name in ((t, d) for t in STEMS.items() for d in args.dtypes):
        dtype = DTYPES[name]
        x = torch.randn(args.frames, 3, args.size, args.size, device="cuda", generator=g)
        x = x.to(dtype)
        w = torch.randn(channels, 3, 3, 3, device="cuda", generator=g) / 27**0.5
        w_in = w.to(dtype)
        y = torch.empty_like(F.conv2d(x, w_in, stride=2, padding=1))
        forms = {
            "write": lambda y=y: y.fill_(0),
            "cudnn": lambda x=x, w_in=w_in: F.conv2d(x, w_in, stride=2, padding=1),
            "stem_conv": lambda x=x, w=w: stem_conv(x, w),
        }
        _check(forms["cudnn"](), x, w_in, "cudnn")
        _check(stem_conv(x, w), x, w, "stem_conv")
        if args.sweep:
            for pixels, group, threads in SWEEP:
                label = f"pixels={pixels} group={group} threads={threads}"
                fn = _variant(x, w, y, pixels, group, threads, kernels)
                y.fill_(float("nan"))
                fn()
                _check(y, x, w, label)
                forms[label] = fn
        with torch.inference_mode():
            for form, fn in forms.items():
                kernel_ms, eager_ms = _gpu_time([fn], REPS)
                row = {"tier": tier, "dtype": name, "form": form}
                row.update(us=round(kernel_ms * 1e3, 1), eager_us=round(eager_ms * 1e3, 1))
                rows.append(row)
                print(row, flush=True)
    if args.json:
        write_gpu_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
