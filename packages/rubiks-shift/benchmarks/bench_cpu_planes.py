"""The CPU kernels as planes shrink: µs per call and per (n, c) column at about the same
number of values per clip, so that a column's fixed cost shows against its per-value
cost.

    python packages/rubiks-shift/benchmarks/bench_cpu_planes.py [--threads 1 2]
        [--rounds 5] [--json OUT.json]

One clip of 8 frames per (channels, H = W) of ``SHAPES`` (about 14,000 values per frame),
a fractional shift in every dimension, float32: the forward with the batch norm + ReLU
prologue over a channel-major clip (as the fused form runs it) and the backward (grad_x
and the shift gradient) over a contiguous one, each through the backend's entry point
(``rubiks_shift._cpu``). Each call is timed alone; per form, the median over
``--rounds`` interleaved rounds of each round's first-quartile call.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from bench_shift import single_call_us, write_json  # this folder (a script)

from rubiks_shift import _cpu

SHAPES = [(1152, 4), (288, 7), (72, 14), (18, 28), (4, 56)]
FRAMES = 8
CALLS = 40


def _first_quartile(times: list[float]) -> float:
    return sorted(times)[len(times) // 4]


def _forms(channels: int, side: int) -> dict[str, Callable[[], object]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, FRAMES, channels, side, side, generator=g)
    major = x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)
    shift = torch.rand(3, channels, generator=g) * 4 - 2
    scale, bias = torch.rand(channels, generator=g), torch.rand(channels, generator=g)
    one, zero = (1, 1, 1), (0, 0, 0)
    return {
        "forward": lambda: _cpu.forward(major, shift, one, zero, False, scale, bias),
        "backward": lambda: _cpu.backward(x, x, shift, one, zero, False, True, 1.0, True, True),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the results here (atomically)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, float32, 1 x {FRAMES} frames; µs per call (per column)")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for channels, side in SHAPES:
            forms = _forms(channels, side)
            for fn in forms.values():  # compiles or loads the kernels; warms the caches
                fn()
            us = single_call_us(forms, args.rounds, CALLS, _first_quartile)
            rows.append({"threads": threads, "channels": channels, "side": side, "us": us})
            print(
                f"{threads} thread(s), {channels:4d} x {side}²: "
                + "  ".join(f"{n} {v:7.1f} ({v / channels:5.2f})" for n, v in us.items())
            )
    if args.json:
        write_json(args.json, {"frames": FRAMES, "rows": rows})


if __name__ == "__main__":
    main()
