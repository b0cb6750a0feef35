"""Training batch norm + ReLU on a GPU: ``batch_norm_relu`` against torch's, per shape.

    python packages/rubiks-shift/benchmarks/bench_batch_norm.py [--dtypes bfloat16 float32]
        [--batch 64] [--json OUT.json]

For every (channels, H = W) at which RubiksNet-Large (8 clips x 8 frames at 224², a batch
of 64 images to its 2-D batch norms) applies a batch norm followed by a ReLU, with the
number of such layers, this times one training forward + backward (x, weight and bias
needing gradients; running statistics updated) of: ``batch_norm_relu`` (this package's
kernels), torch's ``relu(F.batch_norm(...))`` on the same contiguous (NCHW) tensor, and
torch's on a channels-last copy, beside a copy of x (two passes over it). Every figure is
µs per call, CUDA graph replay (``bench_shift._gpu_time``); the totals weigh each shape by
its layer count: the batch norm + ReLU time of one Large training step. The gradients of
the two NCHW forms are compared first (relative to their largest value).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench_shift import _gpu_time, write_gpu_rows  # this folder (a script)

from rubiks_shift import batch_norm_relu

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (channels, H = W, batch norm + ReLU layers of RubiksNet-Large at this shape)
SHAPES = [
    (72, 112, 4),
    (72, 56, 5),
    (144, 56, 1),
    (144, 28, 15),
    (288, 28, 1),
    (288, 14, 71),
    (576, 14, 1),
    (576, 7, 5),
]
REPS = 20


def _torch(x, rm, rv, w, b, training, momentum, eps):
    return torch.relu(F.batch_norm(x, rm, rv, w, b, training, momentum, eps))


def _step(fn, x, dy, w, b, rm, rv):
    def call():
        xx = x.detach().requires_grad_()
        y = fn(xx, rm, rv, w, b, True, 0.1, 1e-5)
        return torch.autograd.grad(y, (xx, w, b), dy)

    return call


def run_shape(channels: int, side: int, dtype: torch.dtype, batch: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (batch, channels, side, side)
    x = (torch.randn(shape, device="cuda", generator=g) * 2 + 0.5).to(dtype)
    dy = torch.randn(shape, device="cuda", generator=g).to(dtype)
    w = (torch.rand(channels, device="cuda", generator=g) + 0.5).requires_grad_()
    b = torch.randn(channels, device="cuda", generator=g).requires_grad_()
    rm, rv = torch.zeros(channels, device="cuda"), torch.ones(channels, device="cuda")
    x_cl = x.contiguous(memory_format=torch.channels_last)
    dy_cl = dy.contiguous(memory_format=torch.channels_last)
    forms = {
        "batch_norm_relu": _step(batch_norm_relu, x, dy, w, b, rm, rv),
        "torch": _step(_torch, x, dy, w, b, rm, rv),
        "torch, channels-last": _step(_torch, x_cl, dy_cl, w, b, rm, rv),
    }
    ours, theirs = forms["batch_norm_relu"](), forms["torch"]()
    errors = [
        ((a.double() - r.double()).abs().max() / r.double().abs().max().clamp_min(1e-30)).item()
        for a, r in zip(ours, theirs, strict=True)
    ]
    row = {"channels": channels, "side": side, "dtype": str(dtype).removeprefix("torch.")}
    row["grad_errors"] = errors  # (x, weight, bias), relative to the largest
    row["copy_us"] = _gpu_time([lambda: x.clone()], REPS)[0] * 1e3
    for name, fn in forms.items():
        row[name] = _gpu_time([fn], REPS)[0] * 1e3
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=DTYPES)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_batch_norm.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    rows = []
    forms = ("copy_us", "batch_norm_relu", "torch", "torch, channels-last")
    for dtype in args.dtypes:
        totals = dict.fromkeys(forms, 0.0)
        for channels, side, layers in SHAPES:
            row = run_shape(channels, side, DTYPES[dtype], args.batch)
            row["layers"] = layers
            rows.append(row)
            for f in forms:
                totals[f] += row[f] * layers / 1e3
            err = " ".join(f"{e:.1e}" for e in row["grad_errors"])
            print(
                f"{dtype:9} {channels:4}ch {side:3}² x{layers:<3} copy {row['copy_us']:6.1f}  "
                f"ours {row['batch_norm_relu']:7.1f}  torch {row['torch']:7.1f}  "
                f"torch channels-last {row['torch, channels-last']:7.1f} us   "
                f"grad error x/w/b vs torch {err}"
            )
        print(
            f"{dtype:9} one Large step: copies {totals['copy_us']:.2f} ms, ours "
            f"{totals['batch_norm_relu']:.2f}, torch {totals['torch']:.2f}, torch "
            f"channels-last {totals['torch, channels-last']:.2f}"
        )
        rows.append({"dtype": dtype, "total_ms": totals})
    if args.json:
        write_gpu_rows(args.json, rows)


if __name__ == "__main__":
    main()
