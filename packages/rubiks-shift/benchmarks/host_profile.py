"""Break the host time of one eager CUDA forward call into its parts (microseconds)."""

from __future__ import annotations

import torch
from bench_shift import best_us_per_call  # this folder (run as a script)

from rubiks_shift import _cuda, rubiks_shift3d


def main() -> None:
    x = torch.randn(1, 2, 4, 4, 4, device="cuda")
    shift = torch.rand(3, 4, device="cuda")
    xg = x.clone().requires_grad_()
    y = torch.empty_like(x)
    kernels = _cuda._kernels("float32", "float32")
    (step,) = _cuda._gather_plan(tuple(x.shape), tuple(x.shape), (1, 1, 1), (0, 0, 0), False, False)
    parts = {
        "public rubiks_shift3d (no grad)": lambda: rubiks_shift3d(x, shift),
        "public rubiks_shift3d (x requires grad)": lambda: rubiks_shift3d(xg, shift),
        "torch.ops custom op": lambda: torch.ops.rubiks_shift.shift3d(
            x, shift, [1, 1, 1], [0, 0, 0], False, True, 1.0
        ),
        "_cuda.forward": lambda: _cuda.forward(x, shift, (1, 1, 1), (0, 0, 0), False),
        "_cuda._run (one launch)": lambda: _cuda._run(kernels, step, (x, shift, y), x.get_device()),
        "torch.empty cuda": lambda: torch.empty(1, 2, 4, 4, 4, device="cuda"),
        "x.clone (scale)": lambda: x.clone(),
    }
    # five interleaved rounds, the best of each: host timings drift with clocks and
    # neighbours, and the first item of a single pass is often an outlier
    best = best_us_per_call(parts, "cuda")
    for name, us in best.items():
        print(f"{name:<42} {us:8.1f} us")


if __name__ == "__main__":
    main()
