"""Training batch norm + ReLU on a GPU: ``batch_norm_relu`` against torch's, per shape.

    python packages/rubiks-shift/benchmarks/bench_batch_norm.py [--dtypes bfloat16 float32]
        [--batch 64] [--layout frames | channel-major] [--json OUT.json]

For every (channels, H = W) at which RubiksNet-Large (8 clips x 8 frames at 224², a batch
of 64 images to its 2-D batch norms) applies a batch norm followed by a ReLU, with the
number of such layers, this times one training forward + backward (x, weight and bias
needing gradients; running statistics updated) of: ``batch_norm_relu`` (this package's
kernels) as its plan picks for the shape (``default``) and in each of its two forms
(``spans``: every channel cut into spans of several blocks, three launches per
direction; ``one block``: a block per channel, one launch per direction), both forms
with every kernel moving one value at a time instead of words of two (``spans, single
values``, ``one block, single values``; bfloat16 and float32), torch's
``relu(F.batch_norm(...))`` on a contiguous (NCHW) tensor, and torch's on a
channels-last copy, beside a copy of x (two passes over it).
``--layout channel-major`` gives this package's forms the frames of a channel-major clip
((C, B, H, W) storage seen as (B, C, H, W), what RubiksNet's 16-bit training passes from
28² planes on); torch's take NCHW either way. Every figure is µs per call, CUDA graph
replay (``bench_shift._gpu_time``), and for this package's forms also issued eagerly,
back to back (host time included); the totals weigh each shape by its layer count: the
batch norm + ReLU time of one Large training step. The gradients of each of this
package's forms are compared with torch's first (relative to their largest value).
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import replace

import torch
import torch.nn.functional as F
from bench_shift import _gpu_time, write_gpu_rows  # this folder (a script)

from rubiks_shift import _cuda, batch_norm_relu

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


# this package's forms, as the tuning they run with: the channel values up to which a
# channel is one block, and (``..., single values``) every kernel moving one value at a
# time instead of words of two (bfloat16 and float32)
OURS = {
    "default": {},
    "spans": {"batch_norm_channel_values": 0},
    "one block": {"batch_norm_channel_values": 2**62},
    "spans, single values": {"batch_norm_channel_values": 0, "batch_norm_pairs": False},
    "one block, single values": {"batch_norm_channel_values": 2**62, "batch_norm_pairs": False},
}


def _step(fn, x, dy, w, b, rm, rv):
    def call():
        xx = x.detach().requires_grad_()
        y = fn(xx, rm, rv, w, b, True, 0.1, 1e-5)
        return torch.autograd.grad(y, (xx, w, b), dy)

    return call


def _form(changes: dict) -> contextlib.AbstractContextManager:
    """The tuning with ``changes`` for a ``with`` block (none: left as it is)."""
    if not changes:
        return contextlib.nullcontext()
    return _cuda.tuned(replace(_cuda._tuning, **changes))


def _relative_errors(ours, theirs) -> list[float]:
    return [
        ((a.double() - r.double()).abs().max() / r.double().abs().max().clamp_min(1e-30)).item()
        for a, r in zip(ours, theirs, strict=True)
    ]


def run_shape(channels: int, side: int, dtype: torch.dtype, batch: int, layout: str) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (batch, channels, side, side)
    x = (torch.randn(shape, device="cuda", generator=g) * 2 + 0.5).to(dtype)
    dy = torch.randn(shape, device="cuda", generator=g).to(dtype)
    w = (torch.rand(channels, device="cuda", generator=g) + 0.5).requires_grad_()
    b = torch.randn(channels, device="cuda", generator=g).requires_grad_()
    rm, rv = torch.zeros(channels, device="cuda"), torch.ones(channels, device="cuda")
    x_cl = x.contiguous(memory_format=torch.channels_last)
    dy_cl = dy.contiguous(memory_format=torch.channels_last)
    x_ours, dy_ours = x, dy
    if layout == "channel-major":
        x_ours, dy_ours = (t.transpose(0, 1).contiguous().transpose(0, 1) for t in (x, dy))
    ours = _step(batch_norm_relu, x_ours, dy_ours, w, b, rm, rv)
    theirs = _step(_torch, x, dy, w, b, rm, rv)
    row = {"channels": channels, "side": side, "dtype": str(dtype).removeprefix("torch.")}
    row["layout"] = layout
    row["grad_errors"] = {}  # (x, weight, bias) of each of ours against torch's
    row["copy_us"] = _gpu_time([lambda: x.clone()], REPS)[0] * 1e3
    expected = theirs()
    for name, changes in OURS.items():
        with _form(changes):
            row["grad_errors"][name] = _relative_errors(ours(), expected)
            kernels_ms, eager_ms = _gpu_time([ours], REPS)
        row[name], row[name + ", eager"] = kernels_ms * 1e3, eager_ms * 1e3
    row["torch"] = _gpu_time([theirs], REPS)[0] * 1e3
    row["torch, channels-last"] = (
        _gpu_time([_step(_torch, x_cl, dy_cl, w, b, rm, rv)], REPS)[0] * 1e3
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=DTYPES)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--layout", choices=("frames", "channel-major"), default="frames")
    p.add_argument("--json")
    args = p.parse_args()
    if args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    if not torch.cuda.is_available():
        raise SystemExit("bench_batch_norm.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    rows = []
    ours = [*OURS, *(f"{name}, eager" for name in OURS)]
    forms = ("copy_us", *ours, "torch", "torch, channels-last")
    for dtype in args.dtypes:
        totals = dict.fromkeys(forms, 0.0)
        for channels, side, layers in SHAPES:
            row = run_shape(channels, side, DTYPES[dtype], args.batch, args.layout)
            row["layers"] = layers
            rows.append(row)
            for f in forms:
                totals[f] += row[f] * layers / 1e3
            figures = "  ".join(
                f"{name} {row[name]:6.1f} ({row[name + ', eager']:6.1f} eager)" for name in OURS
            )
            err = max(max(e) for e in row["grad_errors"].values())
            print(
                f"{dtype:9} {channels:4}ch {side:3}² x{layers:<3} copy {row['copy_us']:6.1f}  "
                f"{figures}  torch {row['torch']:7.1f}  channels-last "
                f"{row['torch, channels-last']:7.1f} us  largest grad error {err:.1e}"
            )
        print(
            f"{dtype:9} one Large step ({args.layout}), ms: "
            + ", ".join(f"{name} {value:.2f}" for name, value in totals.items())
        )
        rows.append({"dtype": dtype, "layout": args.layout, "total_ms": totals})
    if args.json:
        write_gpu_rows(args.json, rows)


if __name__ == "__main__":
    main()
