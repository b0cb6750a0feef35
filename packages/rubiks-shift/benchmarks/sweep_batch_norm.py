"""Sweep the training batch norm's block size on one GPU (kernel time by CUDA-graph replay).

    python packages/rubiks-shift/benchmarks/sweep_batch_norm.py [--threads 256 512 1024]
        [--dtypes bfloat16 float32] [--batch 64] [--json OUT.json]

For every (channels, H = W) of ``bench_batch_norm.SHAPES`` this times one forward and one
backward of training batch norm + ReLU, launched directly (``_cuda_launch.run``, no
autograd): the spans (three launches per direction) and one block per channel (one
launch per direction) for each block size of ``--threads`` (at least
``Tuning.batch_norm_threads``), the one-block kernels reading their block's width at run
time (the package's own kernels up to ``Tuning.batch_norm_wide_threads``, wider ones
built for the widest: compiled in this process, not cached).
bfloat16 runs on the frames of a channel-major clip (a channel's B·H·W values one row),
float32 on NCHW frames, as RubiksNet's training passes them. Each variant's y and grad_x
are checked against the narrow block's one-block form first (to 1e-4 of the
largest value in float32, 2e-2 in bfloat16: the sums meet in trees of other shapes).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from bench_batch_norm import DTYPES, REPS, SHAPES  # this folder (a script)
from bench_shift import _gpu_time, block_sizes, write_gpu_rows

from rubiks_shift import _cuda_launch
from rubiks_shift._cuda_kernels import Kernels
from rubiks_shift._cuda_plan import batch_norm_plan
from rubiks_shift._cuda_tuning import TUNING

FORMS = {"one block": 2**62, "spans": 0}  # Tuning.batch_norm_channel_values of each form


def _passes(kernels, plan, x, dy, params):
    """A forward + backward of ``plan`` launched with ``kernels`` (y and grad_x written
    into fresh tensors at every call), and the tensors it writes."""
    w, b, rm, rv = params
    channels = w.numel()
    y, gx = torch.empty_like(x), torch.empty_like(x)
    stats = torch.empty(4, channels, device=x.device)
    grads = torch.empty(2, channels, device=x.device)
    partial = torch.empty(channels * max(plan.parts, 1) * 2, device=x.device)
    coefficients = torch.empty(5, channels, device=x.device)
    run, index = _cuda_launch.run, x.get_device()

    def call() -> None:
        if plan.channel_forward is not None:
            run(kernels, plan.channel_forward, (x, x, y, w, b, rm, rv, stats, w), index)
            args = (x, dy, gx, w, w, stats, stats, stats, grads)
            run(kernels, plan.channel_backward, args, index)
            return
        run(kernels, plan.partial, (x, x, stats, partial), index)
        run(kernels, plan.stats, (x, partial, w, b, rm, rv, stats), index)
        run(kernels, plan.normalize, (x, x, y, stats, stats), index)
        run(kernels, plan.grad_partial, (x, dy, stats, partial), index)
        run(kernels, plan.coefficients, (partial, w, stats, coefficients), index)
        run(kernels, plan.grad_input, (x, dy, gx, stats, coefficients), index)

    return call, (y, gx)


def _largest_error(got, want) -> float:
    return max(
        ((a.double() - r.double()).abs().max() / r.double().abs().max().clamp_min(1e-30)).item()
        for a, r in zip(got, want, strict=True)
    )


def run_shape(channels: int, side: int, dtype: str, batch: int, threads: list[int]) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    storage = dtype
    if dtype == "bfloat16":  # channel-major frames: a channel's values are one row
        shape, plane = (channels, batch * side * side), (1, channels, batch * side * side)
    else:
        shape, plane = (batch, channels, side, side), (batch, channels, side * side)
    x = (torch.randn(shape, device="cuda", generator=g) * 2 + 0.5).to(DTYPES[dtype])
    dy = torch.randn(shape, device="cuda", generator=g).to(DTYPES[dtype])
    params = [
        torch.rand(channels, device="cuda", generator=g) + 0.5,
        torch.randn(channels, device="cuda", generator=g),
        torch.zeros(channels, device="cuda"),
        torch.ones(channels, device="cuda"),
    ]
    row = {"channels": channels, "side": side, "dtype": dtype, "batch": batch}
    reference = None
    own = _cuda_launch.kernel_set(storage, "float32")
    for t in threads:
        narrow = t == TUNING.batch_norm_threads
        tuning = replace(
            TUNING,
            batch_norm_narrow_values=2**62 if narrow else 0,
            batch_norm_wide_threads=TUNING.batch_norm_wide_threads if narrow else t,
        )
        kernels = own
        if t > TUNING.batch_norm_wide_threads:  # kernels built for a wider block
            kernels = Kernels(storage, "float32", tuning)
        forms = FORMS if narrow else {"one block": FORMS["one block"]}
        for form, values in forms.items():
            form_tuning = replace(tuning, batch_norm_channel_values=values)
            plan = batch_norm_plan(plane, storage, 1e-5, 0.1, form_tuning, True)
            call, written = _passes(kernels, plan, x, dy, params)
            call()
            torch.cuda.synchronize()
            if reference is None:
                reference = [w.clone() for w in written]
            row[f"{form}, {t} error"] = _largest_error(written, reference)
            row[f"{form}, {t}"] = _gpu_time([call], REPS)[0] * 1e3
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", nargs="+", type=int, default=[256, 512, 1024])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=DTYPES)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json")
    args = p.parse_args()
    least = TUNING.batch_norm_threads  # the narrowest block the one-block kernels take
    args.threads = block_sizes(p, args.threads, least, least=least)
    if not torch.cuda.is_available():
        raise SystemExit("sweep_batch_norm.py needs a CUDA GPU")
    rows = []
    for dtype in args.dtypes:
        totals: dict[str, float] = {}
        for channels, side, layers in SHAPES:
            row = run_shape(channels, side, dtype, args.batch, args.threads)
            row["layers"] = layers
            rows.append(row)
            timed = {k: v for k, v in row.items() if k.split(", ")[0] in FORMS and "error" not in k}
            for k, v in timed.items():
                totals[k] = totals.get(k, 0.0) + v * layers / 1e3
            err = max(v for k, v in row.items() if k.endswith("error"))
            figures = "  ".join(f"{k} {v:7.1f}" for k, v in timed.items())
            print(
                f"{dtype:9} {channels:4}ch {side:3}² x{layers:<3} {figures} us  (error {err:.1e})"
            )
        print(
            f"{dtype:9} one Large step, ms: " + ", ".join(f"{k} {v:.2f}" for k, v in totals.items())
        )
        rows.append({"dtype": dtype, "total_ms": totals})
    if args.json:
        write_gpu_rows(args.json, rows)


if __name__ == "__main__":
    main()
