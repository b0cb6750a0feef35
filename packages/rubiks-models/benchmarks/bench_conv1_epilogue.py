"""conv1 with bn2's bias and ReLU in the product's epilogue, then the plain shift, against
the fused block's product then the shift with bias + ReLU as its prologue.

    python packages/rubiks-models/benchmarks/bench_conv1_epilogue.py [--json OUT.json]

bfloat16, channel-major clips of 8 x 8 frames at each RubiksNet-Large stage, the shift
drawn from U[-2, 2]. The bias goes in as an extra input row of ones (K + 8 columns, one
of them the bias): cuBLASLt's bias epilogue (``torch._addmm_activation``) adds a bias
per column of the (C, points) result, not per channel. Every figure is µs per call, 20
calls in one CUDA graph replayed 10 times (``bench_block_parts.time_us``); ``err_*``:
the largest difference from float64 relative to the largest value.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_block_parts import time_us

from rubiks_models.io import atomic_write
from rubiks_shift import rubiks_shift3d
from rubiks_shift.fused import affine_relu_shift3d

STAGES = ((72, 56), (144, 28), (288, 14), (576, 7))
N, T = 8, 8


def timed(fn) -> float:
    return time_us(fn, "cuda")


def clip(m: torch.Tensor, size: int) -> torch.Tensor:
    """A (C, points) matrix as the channel-major (N, T, C, H, W) clip it stores."""
    return m.view(-1, N, T, size, size).permute(1, 2, 0, 3, 4)


def stage(c: int, size: int) -> dict:
    points = N * T * size * size
    dt, dev = torch.bfloat16, "cuda"
    a = torch.relu(torch.randn(c, points, device=dev)).to(dt)
    w1 = (torch.randn(c, c, device=dev) / c**0.5).to(dt)
    b2 = torch.randn(c, device=dev) * 0.3
    shift = torch.rand(3, c, device=dev) * 4 - 2
    ones = torch.ones(c, device=dev)
    a_aug = torch.zeros(c + 8, points, device=dev, dtype=dt)
    a_aug[:c], a_aug[c] = a, 1
    w_aug = torch.zeros(c, c + 8, device=dev, dtype=dt)
    w_aug[:, :c], w_aug[:, c] = w1, b2.to(dt)
    no_bias = torch.zeros(points, device=dev, dtype=dt)
    h = torch.mm(w1, a)
    h_relu = torch._addmm_activation(no_bias, w_aug, a_aug)
    out = {
        "stage": f"{c} x {size}²",
        "copy": timed(lambda: a.clone()),
        "mm": timed(lambda: torch.mm(w1, a)),
        "mm_k8": timed(lambda: torch.mm(w_aug, a_aug)),
        "mm_k8_relu": timed(lambda: torch._addmm_activation(no_bias, w_aug, a_aug)),
        "shift_affine": timed(lambda: affine_relu_shift3d(clip(h, size), ones, b2, shift)),
        "shift_plain": timed(lambda: rubiks_shift3d(clip(h_relu, size), shift)),
        "pair_now": timed(
            lambda: affine_relu_shift3d(clip(torch.mm(w1, a), size), ones, b2, shift)
        ),
        "pair_epilogue": timed(
            lambda: rubiks_shift3d(
                clip(torch._addmm_activation(no_bias, w_aug, a_aug), size), shift
            )
        ),
    }
    with torch.no_grad():
        exact = torch.relu(w1.double() @ a.double() + b2.double()[:, None])
        ref = rubiks_shift3d(clip(exact, size), shift.double())
        scale = ref.abs().max().item()
        now = affine_relu_shift3d(clip(h, size), ones, b2, shift).double()
        new = rubiks_shift3d(clip(h_relu, size), shift).double()
        out["err_now"] = (now - ref).abs().max().item() / scale
        out["err_epilogue"] = (new - ref).abs().max().item() / scale
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here (atomically)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    torch.manual_seed(0)
    rows = []
    for c, size in STAGES:
        rows.append(stage(c, size))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        text = json.dumps(rows, indent=1)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
