"""Break the host time of one eager CUDA forward call into its parts (microseconds)."""

from __future__ import annotations

import time

import torch

from rubiks_shift import _cuda, rubiks_shift3d


def per_call(fn, calls=2000):
    for _ in range(100):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


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
    best = dict.fromkeys(parts, float("inf"))
    for _ in range(5):
        for name, fn in parts.items():
            best[name] = min(best[name], per_call(fn))
    for name, us in best.items():
        print(f"{name:<42} {us:8.1f} us")


if __name__ == "__main__":
    main()
