"""The bn1 pass on a GPU: ``affine_relu`` against a copy, with and without a frame shift.

    python packages/rubiks-shift/benchmarks/bench_prologue.py [--dtypes bfloat16 float32]
        [--batch 8 --frames 8] [--sweep] [--json OUT.json]

For the planes a RubiksNet's blocks read at 224 x 224 (channels, H = W), in the layout
the fused form stores them in (channel-major from 28 x 28, else (N, T, C, H, W)), this
times: a copy of the clip (the floor of one pass), ``affine_relu`` (the batch norm + ReLU
before conv1), ``affine_relu`` with a frame shift (a hardened AQ block: each channel
moved -1, 0 or +1 frames, two thirds of them moved, as in an AQ model hardened from
random taps) and the same shifted pass as ``affine_relu_shift3d`` with that temporal
shift, quantized: the quantized pass it runs as, and the gather it took before
(``Tuning.integer_shift=False``). Timed as ``bench_shift.py``
times (``_gpu_time``): per call, the median of 5 samples of calls captured in a CUDA
graph and replayed (host time excluded), and ``eager``: the same calls issued back to
back from Python. bfloat16 clips with even planes, which the default moves as 32-bit
pairs, add both passes launched one value at a time (``Tuning.prologue_pairs=False``).
``--sweep`` adds the kernel built with each (bytes per thread,
threads per block) of ``SWEEP``, every output checked bit for bit against the default's
before it is timed.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from bench_shift import _gpu_time, write_gpu_rows  # this folder (a script)

from rubiks_shift import _cuda, _cuda_launch, affine_relu
from rubiks_shift._cuda_kernels import Kernels
from rubiks_shift._cuda_plan import affine_relu_plan, gather_plan
from rubiks_shift._cuda_tuning import TUNING

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STORAGE = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
# (channels, H = W): the planes RubiksNet-Large's blocks read at 224 x 224
SHAPES = [(72, 112), (72, 56), (144, 28), (288, 14), (576, 7)]
CHANNEL_MAJOR_PLANE = 28 * 28  # the fused form's default layout switch
SWEEP = [(size, threads) for size in (16, 32, 64) for threads in (64, 128, 256)]
REPS = 20

GATHERS = replace(TUNING, integer_shift=False)  # a quantized shift as a gather


def _gather_call(x, scale, bias, shift):
    """``_cuda.forward_affine(x, scale, bias, shift, quantize=True)`` at stride 1 as the
    gather it took before the quantized pass, launched with its own plan."""
    storage = STORAGE[x.dtype]
    major = not x.is_contiguous()
    shape = tuple(x.shape)
    (step,) = gather_plan(
        shape, shape, (1, 1, 1), (0, 0, 0), True, False, storage, GATHERS,
        channel_major=major, affine=True,
    )  # fmt: skip
    step = step._replace(name=step.name + "_affine")
    kernels = _cuda_launch.kernel_set(storage, "float32")

    def call():
        y = _cuda._empty_result(x, None, major)
        _cuda_launch.run(kernels, step, (x, shift, y, scale, bias), x.get_device())
        return y

    return call


def _variant_call(
    x, y, scale, bias, frames, per: int, threads: int, kernels: dict, pairs: bool = True
):
    """A call of the affine_relu kernel built with ``per`` bytes per thread, launched
    with ``threads`` per block, writing ``y``; bfloat16 values in pairs where ``pairs``
    and the plane allows it, else one at a time."""
    key = (STORAGE[x.dtype], per)
    if key not in kernels:
        kernels[key] = Kernels(key[0], "float32", replace(TUNING, prologue_bytes=per))
    tuning = replace(TUNING, prologue_bytes=per, prologue_threads=threads, prologue_pairs=pairs)
    major = not x.is_contiguous()
    aligned = x.data_ptr() % 4 == 0 and y.data_ptr() % 4 == 0
    step = affine_relu_plan(
        tuple(x.shape), key[0], major, frames is not None, tuning, word_aligned=aligned
    )
    ptrs = (x, y, scale, bias, frames if frames is not None else scale)
    return lambda: _cuda_launch.run(kernels[key], step, ptrs, x.get_device())


def run_shape(channels: int, side: int, dtype: torch.dtype, args, kernels: dict) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (args.batch, args.frames, channels, side, side)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype)
    major = side * side <= CHANNEL_MAJOR_PLANE
    if major:
        x = x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)
    scale = torch.rand(channels, device="cuda", generator=g) + 0.5
    bias = torch.rand(channels, device="cuda", generator=g) - 0.5
    moved = torch.randint(0, 3, (channels,), device="cuda", generator=g) != 0
    sign = torch.randint(0, 2, (channels,), device="cuda", generator=g) * 2 - 1
    frames = (moved * sign).to(torch.int32)
    temporal = torch.zeros(3, channels, device="cuda")
    temporal[0] = frames.float()
    row = {"channels": channels, "side": side, "dtype": str(dtype).removeprefix("torch.")}
    row["layout"] = "channel-major" if major else "frames"
    calls = {
        "copy": lambda: x.clone(),
        "affine_relu": lambda: affine_relu(x, scale, bias),
        "affine_relu, frame shift": lambda: affine_relu(x, scale, bias, frames),
        "quantized pass, temporal shift": lambda: _cuda.forward_affine(
            x, scale, bias, temporal, (1, 1, 1), (0, 0, 0), True
        ),
        "quantized gather, temporal shift": _gather_call(x, scale, bias, temporal),
    }
    with torch.no_grad():
        shifted = calls["affine_relu, frame shift"]()
        for form in ("quantized pass, temporal shift", "quantized gather, temporal shift"):
            if not torch.equal(shifted, calls[form]()):
                raise AssertionError(f"frame shift differs from the {form} at {row}")
        rows = []
        for name, fn in calls.items():
            kernel_ms, eager_ms = _gpu_time([fn], REPS)
            rows.append({**row, "form": name, "us": kernel_ms * 1e3, "eager_us": eager_ms * 1e3})
        if dtype == torch.bfloat16 and side % 2 == 0:  # the default moves pairs here
            per, threads = TUNING.prologue_bytes, TUNING.prologue_threads
            for fs, label in ((None, "affine_relu"), (frames, "affine_relu, frame shift")):
                y = torch.empty_like(x)
                fn = _variant_call(x, y, scale, bias, fs, per, threads, kernels, pairs=False)
                fn()
                if not torch.equal(y, affine_relu(x, scale, bias, fs)):
                    raise AssertionError(f"{label} one value at a time differs at {row}")
                kernel_ms, _ = _gpu_time([fn], REPS)
                rows.append({**row, "form": f"{label}, one value at a time", "us": kernel_ms * 1e3})
        if args.sweep:
            for fs, label in ((None, "affine_relu"), (frames, "affine_relu, frame shift")):
                expected = affine_relu(x, scale, bias, fs)
                for per, threads in SWEEP:
                    y = torch.empty_like(expected)
                    fn = _variant_call(x, y, scale, bias, fs, per, threads, kernels)
                    fn()
                    if not torch.equal(y, expected):
                        raise AssertionError(f"{label} {per}x{threads} differs at {row}")
                    kernel_ms, _ = _gpu_time([fn], REPS)
                    form = f"{label}, {per} B per thread x {threads}"
                    rows.append({**row, "form": form, "us": kernel_ms * 1e3})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=DTYPES)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_prologue.py needs a CUDA GPU")
    kernels: dict = {}
    rows = []
    for dtype in args.dtypes:
        for channels, side in SHAPES:
            shape_rows = run_shape(channels, side, DTYPES[dtype], args, kernels)
            copy = shape_rows[0]["us"]
            for r in shape_rows:
                eager = f"  eager {r['eager_us']:7.1f}" if "eager_us" in r else ""
                print(
                    f"{dtype:9} {channels:4}ch {side:3}² {r['layout']:13} {r['form']:44} "
                    f"{r['us']:7.1f} us ({r['us'] / copy:4.2f}x copy){eager}"
                )
            rows += shape_rows
    if args.json:
        write_gpu_rows(args.json, rows)


if __name__ == "__main__":
    main()
