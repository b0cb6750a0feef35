"""The pixel walk against the walks the op launches, on the planes of RubiksNet's blocks.

    python packages/rubiks-shift/benchmarks/bench_pixel_walk.py [--dtypes bfloat16 float32]
        [--batch 8 --frames 8] [--variants 1x8 2x8 2x4r64] [--threads 128 256]
        [--json OUT.json]

Per plane (channels, H = W) of RubiksNet-Large's blocks at 224 x 224, in the fused
form's layout (channel-major from 28 x 28, else (N, T, C, H, W)), times: a copy of the
clip (``copy_us``), the fused form's shift (``affine_relu_shift3d``) as the op plans it
(``op_us``, its walk ``op_walk``) and as it plans it without the pixel walk
(``other_us``, ``other_walk``), then each pixel-walk variant's affine form
(``affine_us_<variant>``); and the plain forward on contiguous clips, as the op runs it
(``plain_op_us``) and as each variant's plain form (``plain_us_<variant>``). A variant
is ROWSxFRAMES destination rows and frames per task, cCOLUMNS its columns (1 or 2) and
rREGISTERS a register cap.
Every variant's output is checked against the op's before it is timed (``*_diff_*``,
0.0: bit for bit). Times as ``bench_shift.py`` (``_gpu_time``): µs per call, 20 calls
in a CUDA graph replayed (``op_eager_us``: the op issued back to back from Python).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace

import torch
from bench_shift import _gpu_time, write_gpu_rows  # this folder (a script)

from rubiks_shift import _cuda, _cuda_launch, affine_relu_shift3d
from rubiks_shift._cuda_pixel_walk import build_gather_pixels, gather_pixels_signature
from rubiks_shift._cuda_plan import Step, _pixel_walk_plan, gather_plan
from rubiks_shift._cuda_tuning import TUNING

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STORAGE = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
SHAPES = [(72, 56), (144, 28), (288, 14), (576, 7)]
CHANNEL_MAJOR_PLANE = 28 * 28
REPS = 20


class PixelKernels:
    """The pixel-walk kernels of one storage and layout, built in this process (not
    cached): ``rows`` x ``cols`` x ``frames`` destination values per task."""

    def __init__(
        self, storage: str, rows: int, frames: int, cols: int, registers: int | None
    ) -> None:
        self.storage = storage
        self.shift_storage = "float32"
        self.rows, self.frames, self.cols = rows, frames, cols
        for affine, name in ((False, "gather_pixels"), (True, "gather_pixels_affine")):
            kernel = build_gather_pixels(
                storage, "float32", frames=frames, rows=rows, cols=cols, affine=affine,
                registers=registers,
            )  # fmt: skip
            setattr(self, name, kernel)
            setattr(self, name + "_sig", gather_pixels_signature(storage, "float32", affine))


def pixel_step(shape, kernels: PixelKernels, threads: int, *, affine: bool,
               channel_major: bool) -> Step:  # fmt: skip
    """The op's plan of the pixel walk (``_cuda_plan._pixel_walk_plan``) over (N, T, C,
    H, W) ``shape`` (stride 1, padding 0) for ``kernels``' tasks and ``threads`` per
    block; ``affine``: the launch of the form with the prologue."""
    tuning = replace(
        TUNING,
        pixel_walk_rows=kernels.rows,
        pixel_walk_frames=kernels.frames,
        pixel_walk_cols=kernels.cols,  # both widths' fields: the plan reads its storage's
        pixel_walk_cols_16bit=kernels.cols,
        pixel_walk_threads=threads,
    )
    args = (shape, shape, (0, 0, 0), kernels.storage, tuning, channel_major)
    (step,) = _pixel_walk_plan(*args)
    return step._replace(name=step.name + "_affine") if affine else step


def clip(shape, dtype, channel_major: bool, device) -> torch.Tensor:
    n, t, c, h, w = shape
    if channel_major:
        return torch.randn(c, n, t, h, w, device=device).to(dtype).permute(1, 2, 0, 3, 4)
    return torch.randn(shape, device=device).to(dtype)


def compare(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    """Max |got - want| over the elements (0.0: bit for bit), raising where NaNs differ
    or a value is off by more than a few roundings of ``want``'s dtype."""
    g, w = got.double(), want.double()
    if not torch.equal(torch.isnan(g), torch.isnan(w)):
        raise AssertionError(f"{name}: NaNs differ")
    diff = (g - w).nan_to_num().abs().max().item()
    eps = torch.finfo(want.dtype).eps
    if diff > 4 * eps * max(1.0, w.nan_to_num().abs().max().item()):
        raise AssertionError(f"{name}: off by {diff}")
    return diff


def launcher(kernels, step: Step, tensors: tuple, index: int):
    return lambda: _cuda_launch.run(kernels, step, tensors, index)


def time_shape(shape, dtype, variants: dict, threads_list, index: int) -> dict:
    """One row: the copy, the op's walks and every pixel-walk variant on ``shape``."""
    dev = torch.device("cuda", index)
    channels, size = shape[2], shape[3]
    major = size * size <= CHANNEL_MAJOR_PLANE
    storage = STORAGE[dtype]
    torch.manual_seed(0)
    x = clip(shape, dtype, major, dev)
    scale = torch.rand(channels, device=dev) + 0.5
    bias = torch.randn(channels, device=dev) * 0.5
    shift = torch.empty(3, channels, device=dev).uniform_(-2, 2)
    y = torch.empty_like(x)
    row = dict(dtype=str(dtype).removeprefix("torch."), channels=channels, size=size)
    row["copy_us"] = _gpu_time([lambda: y.copy_(x)], REPS)[0] * 1e3
    plan = gather_plan(shape, shape, (1, 1, 1), (0, 0, 0), False, False, storage,
                       channel_major=major, affine=True)  # fmt: skip
    row["op_walk"] = plan[0].name
    with torch.no_grad():
        want = affine_relu_shift3d(x, scale, bias, shift)
        op_ms, op_eager = _gpu_time([lambda: affine_relu_shift3d(x, scale, bias, shift)], REPS)
    row["op_us"], row["op_eager_us"] = op_ms * 1e3, op_eager * 1e3
    without = replace(TUNING, pixel_walk_affine_plane=0, pixel_walk_affine_plane_16bit=0)
    plan = gather_plan(shape, shape, (1, 1, 1), (0, 0, 0), False, False, storage, without,
                       channel_major=major, affine=True)  # fmt: skip
    row["other_walk"] = plan[0].name  # the walk the op takes without the pixel walk
    with torch.no_grad(), _cuda.tuned(without):
        other = _gpu_time([lambda: affine_relu_shift3d(x, scale, bias, shift)], REPS)
        row["other_us"] = other[0] * 1e3
    plain_x = clip(shape, dtype, False, dev)
    plain_want = _cuda.forward(plain_x, shift, (1, 1, 1), (0, 0, 0), False)
    plain = _gpu_time([lambda: _cuda.forward(plain_x, shift, (1, 1, 1), (0, 0, 0), False)], REPS)
    row["plain_op_us"] = plain[0] * 1e3
    for tag, kernels in variants.items():
        for threads in threads_list:
            name = f"{tag}_t{threads}"
            step = pixel_step(shape, kernels, threads, affine=True, channel_major=major)
            out = torch.empty_like(x)
            call = launcher(kernels, step, (x, shift, out, scale, bias), index)
            call()
            row[f"affine_diff_{name}"] = compare(f"affine {name}", out, want)
            row[f"affine_us_{name}"] = _gpu_time([call], REPS)[0] * 1e3
            step = pixel_step(shape, kernels, threads, affine=False, channel_major=False)
            out = torch.empty_like(plain_x)
            call = launcher(kernels, step, (plain_x, shift, out), index)
            call()
            row[f"plain_diff_{name}"] = compare(f"plain {name}", out, plain_want)
            row[f"plain_us_{name}"] = _gpu_time([call], REPS)[0] * 1e3
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=DTYPES)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--variants", nargs="+", default=["1x8", "2x8"],
                    help="pixel-walk tasks as ROWSxFRAMES[cCOLUMNS][rREGISTERS]")  # fmt: skip
    ap.add_argument("--threads", nargs="+", type=int, default=[128])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    index = torch.cuda.current_device()
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        variants = {}
        for tag in args.variants:
            match = re.fullmatch(r"(\d)x(\d+)(?:c(\d))?(?:r(\d+))?", tag)
            if match is None:
                ap.error(f"--variants: {tag!r} is not ROWSxFRAMES[cCOLUMNS][rREGISTERS]")
            task_rows, task_frames, cols, registers = match.groups()
            variants[tag] = PixelKernels(
                STORAGE[dtype], int(task_rows), int(task_frames), int(cols or 1),
                int(registers) if registers else None,
            )  # fmt: skip
        for channels, size in SHAPES:
            shape = (args.batch, args.frames, channels, size, size)
            row = time_shape(shape, dtype, variants, args.threads, index)
            rows.append(row)
            text = (f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            print(" ".join(text), flush=True)
    if args.json:
        write_gpu_rows(args.json, rows)


if __name__ == "__main__":
    main()
