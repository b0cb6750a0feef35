"""Host time per eager call of the ops a channel-major fused block issues, with and
without conv1's epilogue.

    python packages/rubiks-models/benchmarks/bench_block_ops_host.py [--plane 14]

A bfloat16 channel-major clip of 8 x 8 frames of 288 channels (RubiksNet-Large's 14²
stage) carrying the 8 bias rows; each op issued ``--calls`` times back to back under
``torch.inference_mode`` (the host's time to issue them, the device synchronised before
and after), the median of ``--rounds`` rounds, µs per call.
"""

from __future__ import annotations

import argparse

import torch
from bench_models import host_us_per_call  # this folder (run as a script)

from rubiks_shift import rubiks_shift3d
from rubiks_shift.fused import affine_relu, affine_relu_shift3d


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=288)
    p.add_argument("--plane", type=int, default=14, help="the clip's frames are plane²")
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_block_ops_host.py times CUDA calls: no GPU here")
    dev, dt, c, size = "cuda", torch.bfloat16, args.channels, args.plane
    trunk = torch.randn(c + 8, 8, 8, size, size, device=dev, dtype=dt).permute(1, 2, 0, 3, 4)
    clip = trunk[:, :, :c]
    shift = torch.rand(3, c, device=dev) * 4 - 2
    ones, bias = torch.ones(c, device=dev), torch.randn(c, device=dev)
    s_rows, b_rows = torch.ones(c + 8, device=dev), torch.zeros(c + 8, device=dev)
    weight = torch.randn(c, c + 8, device=dev, dtype=dt)
    points = trunk.permute(2, 0, 1, 3, 4).reshape(c + 8, -1)
    calls = {
        "rubiks_shift3d (the plain shift)": lambda: rubiks_shift3d(clip, shift),
        "affine_relu_shift3d (the shift with its prologue)": lambda: affine_relu_shift3d(
            clip, ones, bias, shift
        ),
        "affine_relu over the trunk with its bias rows": lambda: affine_relu(trunk, s_rows, b_rows),
        "torch.mm (conv1)": lambda: torch.mm(weight[:, :c], points[:c]),
        "row select + torch._addmm_activation (conv1 with the epilogue)": lambda: (
            torch._addmm_activation(points[c + 2], weight, points)
        ),
    }
    print(f"{torch.cuda.get_device_name()}, {c} channels, {size}², bfloat16")
    with torch.inference_mode():
        for name, fn in calls.items():
            fn()
            fn()  # bound calls are made on the second call of a signature
            us = host_us_per_call(fn, args.calls, args.rounds)  # the median of the rounds
            print(f"{us:7.1f} µs  {name}")


if __name__ == "__main__":
    main()
