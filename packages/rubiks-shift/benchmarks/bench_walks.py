"""The gather's walks side by side on a GPU: which one each plane size should take.

    python packages/rubiks-shift/benchmarks/bench_walks.py [--dtypes bfloat16 float32]
        [--batch 8 --frames 8] [--forms FORM ...] [--sides SIDE ...] [--json OUT.json]

For RubiksNet's shift shapes (its stages at 224 x 224: channels, H = W, stride) this
times every walk that can run each gather (the default, the frame walk where it applies,
the row walk, and the gather a quantized shift at stride 1 takes without its elementwise
pass, each forced through ``Tuning``; ``_cuda_plan.gather_plan``), in the forms of
``forms``: the fused inference form's passes (the shift with its batch norm + ReLU
prologue, ``affine_relu_shift3d``, on channel-major and (N, T, C) clips; the bn1 pass; a
2-D shift over whole clips and on one-frame clips; the hardened AQ's quantized 2-D
shift), the plain forward (interpolated and quantized) and the adjoint (grad_x). Beside
them, a copy of the source tensor (the floor of one pass). Timed as ``bench_shift.py``
times (``_gpu_time``): per call, the median of 5 samples of calls captured in a CUDA
graph and replayed (host time excluded), and ``eager``: the same calls issued back to
back from Python (host time included). Every walk's output is compared with the default
walk's (``same``: bit-equal; else the largest difference relative to the output's
largest value).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import torch
from bench_shift import _gpu_time, write_gpu_rows  # this folder (a script)

from rubiks_shift import _cuda
from rubiks_shift._cuda_tuning import TUNING

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (channels, source H = W, stride H, W): RubiksNet's stages at 224 x 224 and the
# stride-2 shifts between them
SHAPES = [
    (72, 112, 1),
    (72, 56, 1),
    (144, 28, 1),
    (288, 14, 1),
    (576, 7, 1),
    (72, 112, 2),
    (144, 56, 2),
    (288, 28, 2),
    (576, 14, 2),
]
WALKS = {  # the forced walks without the quantized shift's elementwise pass
    "default": TUNING,
    "frames": replace(
        TUNING,
        float32_affine_rows=(0, 0),
        one_frame_affine_rows=False,
        quantized_affine_rows=0,
        integer_shift=False,
    ),
    "rows": replace(TUNING, stride_one_walk="rows", integer_shift=False),
    "gather": replace(TUNING, integer_shift=False),  # the walk a quantized shift took before
}
REPS = 20  # graph replays x calls per graph, and eager calls, per sample


def step_name(adjoint: bool, shape, stride, quantize: bool, dtype, affine: bool) -> str:
    """The kernel the current tuning launches for a gather (``_cuda``'s plans)."""
    key = (torch.Size(shape), dtype, torch.float32, tuple(stride), (0, 0, 0), quantize, False)
    if adjoint:
        return _cuda._backward_plan((*key, True, 0.5, True, False)).gather[0].name
    if affine:
        return _cuda._affine_plan(key).steps[0].name
    return _cuda._forward_plan(key).steps[0].name


class Form(NamedTuple):
    """One gather as timed: the call, and what picks its kernel."""

    call: Callable[[], torch.Tensor]
    shape: tuple  # the source's shape
    stride: tuple
    quantize: bool
    adjoint: bool
    affine: bool = True  # with the prologue (the fused form's gathers)


def forms(x, x_cm, shift, scale, bias, gy, stride) -> dict[str, Form]:
    """The gathers timed, by name: the fused form's shift with its prologue (channel-major
    and (N, T, C) clips), its bn1 pass (a zero shift, quantized), a 2-D shift as the
    AQ tiers have it (a zero temporal component) over the whole clip and on one-frame
    clips and quantized (the hardened AQ's), the plain forward (interpolated and
    quantized) and the adjoint."""
    args = (stride, (0, 0, 0), False)
    shape, s = tuple(x.shape), tuple(stride)
    zero = torch.zeros_like(shift)
    n, t, c, h, w = shape  # channel-major one-frame clips (the same storage), as the fused
    flat = x_cm.permute(2, 0, 1, 3, 4).reshape(c, n * t, 1, h, w).permute(1, 2, 0, 3, 4)
    spatial = torch.cat([zero[:1], shift[1:]])  # a 2-D shift as a 3-D one
    return {
        "affine, channel-major": Form(
            lambda: _cuda.forward_affine(x_cm, scale, bias, shift, *args), shape, s, False, False
        ),
        "affine": Form(
            lambda: _cuda.forward_affine(x, scale, bias, shift, *args), shape, s, False, False
        ),
        "bn1 pass, channel-major": Form(
            lambda: _cuda.forward_affine(x_cm, scale, bias, zero, (1, 1, 1), (0, 0, 0), True),
            shape, (1, 1, 1), True, False,
        ),
        "2-D affine, channel-major": Form(
            lambda: _cuda.forward_affine(x_cm, scale, bias, spatial, *args), shape, s, False, False
        ),
        "2-D affine, one-frame clips": Form(
            lambda: _cuda.forward_affine(flat, scale, bias, spatial, *args),
            tuple(flat.shape), s, False, False,
        ),
        "quantized 2-D affine, channel-major": Form(
            lambda: _cuda.forward_affine(x_cm, scale, bias, spatial, stride, (0, 0, 0), True),
            shape, s, True, False,
        ),
        "quantized 2-D affine": Form(
            lambda: _cuda.forward_affine(x, scale, bias, spatial, stride, (0, 0, 0), True),
            shape, s, True, False,
        ),
        "forward": Form(lambda: _cuda.forward(x, shift, *args), shape, s, False, False, False),
        "quantized forward": Form(
            lambda: _cuda.forward(x, shift, stride, (0, 0, 0), True), shape, s, True, False, False
        ),
        "adjoint": Form(
            lambda: _cuda.backward(gy, x, shift, *args, True, 0.5, True, False)[0],
            shape, s, False, True, False,
        ),
    }  # fmt: skip


def difference(a: torch.Tensor, b: torch.Tensor) -> str:
    if torch.equal(a, b):
        return "same"
    scale = b.double().abs().max().clamp_min(1e-30)
    return f"{float((a.double() - b.double()).abs().max() / scale):.1e}"


def run_shape(channels: int, side: int, s: int, dtype: torch.dtype, args) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (args.batch, args.frames, channels, side, side)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype)
    x_cm = x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)
    shift = torch.rand(3, channels, device="cuda", generator=g) * 4 - 2
    scale = torch.rand(channels, device="cuda", generator=g) + 0.5
    bias = torch.rand(channels, device="cuda", generator=g) - 0.5
    stride = (1, s, s)
    out = _cuda.output_shape(shape, stride, (0, 0, 0))
    gy = torch.randn(out, device="cuda", generator=g).to(dtype)
    copy = _gpu_time([lambda: x.clone()], REPS)[0] * 1e3
    rows = []
    for form, (fn, src_shape, src_stride, quantize, adjoint, affine) in forms(
        x, x_cm, shift, scale, bias, gy, stride
    ).items():
        if args.forms and form not in args.forms:
            continue
        baseline, timed = None, set()
        for walk, tuning in WALKS.items():
            with _cuda.tuned(tuning):
                name = step_name(adjoint, src_shape, src_stride, quantize, dtype, affine)
                if name in timed:
                    continue  # the same kernel as a walk already timed (the default)
                timed.add(name)
                result = fn()
                baseline = result if baseline is None else baseline
                us, eager_us = (ms * 1e3 for ms in _gpu_time([fn], REPS))
            rows.append(
                dict(
                    channels=channels, side=side, stride=s, dtype=str(dtype).split(".")[-1],
                    form=form, walk=walk, kernel=name, us=round(us, 2),
                    eager_us=round(eager_us, 2), copy_us=round(copy, 2),
                    vs_copy=round(us / copy, 2), check=difference(result, baseline),
                )
            )  # fmt: skip
            print(
                f"{channels:4d} ch {side:3d}² /{s} {rows[-1]['dtype']:9s} {form:28s} "
                f"{walk:7s} {us:8.1f} µs (eager {eager_us:7.1f})  copy {copy:6.1f}  "
                f"x{us / copy:5.2f}  {rows[-1]['check']}",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=DTYPES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--forms", nargs="+", help="only these forms (names as printed)")
    parser.add_argument("--sides", nargs="+", type=int, help="only these source sides")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("the walks are CUDA kernels: this needs a GPU")
    rows = []
    for dtype in args.dtypes:
        for channels, side, s in SHAPES:
            if args.sides and side not in args.sides:
                continue
            rows += run_shape(channels, side, s, DTYPES[dtype], args)
    if args.json:
        write_gpu_rows(args.json, rows)


if __name__ == "__main__":
    main()
