"""Sweep the shift gradient's launch layout on one GPU (kernel time by CUDA-graph replay).

    python packages/rubiks-shift/benchmarks/sweep_shift_grad.py [--blocks 1 2 3 4 6 8]
        [--threads 256 128] [--dtypes bfloat16 float32] [--batch 8] [--json OUT.json]

For every shift layer shape of RubiksNet-Large's training (``SHAPES``: 8 clips x 8
frames, x = the number of such layers) this times one shift gradient (``grad_shift``
and ``finalize``, launched directly with ``_cuda_launch.run``, no autograd) as the op
plans it, and with each other number of blocks per channel of ``--blocks`` (the grid is
blocks x channels; ``shift_grad_plan``'s ``blocks``), whole columns per task and half
columns, for each block size of ``--threads`` (``Tuning.grad_shift_threads``: compiled in
this process, not cached, where not the default). bfloat16 runs on channel-major clips
where the layer's input plane is at most 28² (as 16-bit training passes them), float32
on contiguous ones. Each variant's gradient is checked against the plan's first (to 1e-4
of the largest value: the partial sums meet in another order). The last line of each
dtype weighs every layout by the layers (one Large step's shift gradients).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from bench_shift import _gpu_time, block_sizes, write_gpu_rows  # this folder (a script)

from rubiks_shift import _cuda_launch
from rubiks_shift._checks import empty_channel_major, output_shape
from rubiks_shift._cuda_kernels import Kernels
from rubiks_shift._cuda_plan import shift_grad_plan
from rubiks_shift._cuda_tuning import TUNING

# (channels, input side, stride, layers): RubiksNet-Large's shift layers
SHAPES = [
    (72, 112, 1, 1),
    (72, 112, 2, 1),
    (72, 56, 1, 2),
    (144, 56, 2, 1),
    (144, 28, 1, 7),
    (288, 28, 2, 1),
    (288, 14, 1, 35),
    (576, 14, 2, 1),
    (576, 7, 1, 2),
]
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
CHANNEL_MAJOR_PLANE = 28 * 28  # bf16 training runs blocks on planes up to this channel-major
REPS = 200


def _inputs(channels, side, stride, dtype, batch, major):
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (batch, 8, channels, side, side)
    y_shape = output_shape(shape, (1, stride, stride), (0, 0, 0))
    x = torch.randn(shape, device="cuda", generator=g).to(DTYPES[dtype])
    gy = torch.randn(y_shape, device="cuda", generator=g).to(DTYPES[dtype])
    if major:
        x = empty_channel_major(x, shape).copy_(x)
        gy = empty_channel_major(gy, y_shape).copy_(gy)
    shift = (torch.rand(3, channels, device="cuda", generator=g) - 0.5) * 4
    return shape, y_shape, x, gy, shift


def run_shape(channels, side, stride, dtype, batch, blocks, threads) -> list[dict]:
    major = dtype != "float32" and side * side <= CHANNEL_MAJOR_PLANE
    shape, y_shape, x, gy, shift = _inputs(channels, side, stride, dtype, batch, major)
    args = (shape, y_shape, (1, stride, stride), (0, 0, 0), True, 8 / side)
    rows, reference = [], None
    for t in threads:
        tuning = replace(TUNING, grad_shift_threads=t)
        if t == TUNING.grad_shift_threads:
            kernels = _cuda_launch.kernel_set(dtype, "float32")
        else:
            kernels = Kernels(dtype, "float32", tuning)
        default = shift_grad_plan(*args, tuning, channel_major=major).parts
        h_out = y_shape[3]
        for task_rows in dict.fromkeys((h_out, -(-h_out // 2))):
            for b in (None, *(b for b in dict.fromkeys(blocks) if b != default)):
                plan = shift_grad_plan(*args, tuning, rows=task_rows, blocks=b, channel_major=major)
                partial = torch.empty(plan.parts * 3 * channels, device="cuda")
                out = torch.empty(3, channels, device="cuda")

                def call(kernels=kernels, plan=plan, partial=partial, out=out) -> None:
                    _cuda_launch.run(kernels, plan.grad_shift, (gy, x, shift, partial), 0)
                    _cuda_launch.run(kernels, plan.finalize, (partial, shift, out), 0)

                call()
                torch.cuda.synchronize()
                if reference is None:
                    reference = out.clone()
                error = ((out - reference).abs().max() / reference.abs().max()).item()
                if error > 1e-4:
                    raise SystemExit(f"{dtype} {shape} blocks={b} rows={task_rows}: {error}")
                us = _gpu_time([call], REPS)[0] * 1e3
                rows.append(
                    dict(
                        channels=channels, side=side, stride=stride, dtype=dtype,
                        channel_major=major, threads=t, rows=task_rows,
                        blocks=plan.parts, default=b is None and t == threads[0]
                        and task_rows == h_out, grid=plan.parts * channels, us=us,
                        error=error,
                    )
                )  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", nargs="*", type=int, default=[1, 2, 3, 4, 6, 8, 12])
    p.add_argument("--threads", nargs="+", type=int, default=[256, 128])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=DTYPES)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--json")
    args = p.parse_args()
    args.threads = block_sizes(p, args.threads, TUNING.grad_shift_threads)
    if not torch.cuda.is_available():
        raise SystemExit("sweep_shift_grad.py needs a CUDA GPU")
    everything = []
    for dtype in args.dtypes:
        planned = best = 0.0
        for channels, side, stride, layers in SHAPES:
            rows = run_shape(channels, side, stride, dtype, args.batch, args.blocks, args.threads)
            everything += [dict(r, layers=layers) for r in rows]
            mine = next(r for r in rows if r["default"])
            top = min(rows, key=lambda r: r["us"])
            planned += mine["us"] * layers / 1e3
            best += top["us"] * layers / 1e3
            print(
                f"{dtype:9} {channels:4}ch {side:3}² /{stride} x{layers:<3} "
                f"plan {mine['us']:6.1f} us ({mine['blocks']} blocks x {mine['threads']}, "
                f"grid {mine['grid']})  best {top['us']:6.1f} ({top['blocks']} blocks x "
                f"{top['threads']}, rows {top['rows']}, grid {top['grid']})"
            )
            for r in sorted(rows, key=lambda r: r["us"])[:6]:
                print(
                    f"{'':30} {r['us']:6.1f} us  blocks {r['blocks']:3} threads "
                    f"{r['threads']:4} rows {r['rows']:3} grid {r['grid']}"
                )
        print(f"{dtype:9} one Large step, ms: as planned {planned:.3f}, best per shape {best:.3f}")
    if args.json:
        write_gpu_rows(args.json, everything)


if __name__ == "__main__":
    main()
