"""The stem's 3x3 stride-2 convolution of 3-channel frames, in the forms it can take.

    python packages/rubiks-models/benchmarks/bench_stem.py [--tier large]
        [--dtypes bfloat16 float32] [--batch 8 --frames 8 --size 224] [--json OUT.json]

A RubiksNet's stem turns (N, 3, H, W) frames into (N, C, H/2, W/2) with a 3x3 convolution
of stride 2, and every later pass reads its output in (N, C, H, W) order. Three input
channels are a shape convolution kernels are not made for, so this times the forms that
compute the same values, each from NCHW frames to an NCHW result:

* ``conv2d``: ``F.conv2d`` on the NCHW frames (what the models run);
* ``conv2d channels-last``: the frames copied channels-last, ``F.conv2d``, the result
  copied back to NCHW (both copies timed);
* ``conv2d channels-last, 8 channels``: the same with the frames and weights padded
  with zero channels to 8, the channel count tensor-core convolutions are made for (the
  padding copy and the copy back timed);
* ``unfold + matmul``: the 27 taps of every output pixel gathered (``F.unfold``), then
  one (C, 27) x (27, pixels) product per frame, whose result is NCHW as it comes;
* ``space-to-depth 2x2``: the frames' 2x2 pixel blocks as 12 channels
  (``F.pixel_unshuffle``), then a 2x2 stride-1 convolution of those, whose weights are the
  3x3 ones rearranged (no stride, four times the input channels).

In training (``training`` in the report; the frames need no gradient, as a clip's) it
times the weight's gradient and a forward + backward:

* ``weight grad, cuDNN``: ``convolution_backward`` for the weight alone (what autograd
  runs for ``F.conv2d``);
* ``weight grad, unfold + bmm``: one product per frame of the output's gradient with the
  frames' unfolded taps (``F.unfold``), summed over the frames in float32;
* ``step, conv2d``: ``F.conv2d`` and autograd's weight gradient (what the models ran);
* ``step, node``: ``TrainingStem`` (the models' stem in training on CUDA).

Before timing, every form is checked against ``F.conv2d`` in float64 on a small input.
``write`` is the floor of any form: writing the result once (``fill_``). On a GPU a
figure is the time per call of 20 calls captured in one CUDA graph and replayed 10 times
(host time excluded) and, as ``eager``, of the calls issued back to back with the host;
on a CPU, the median of 5 calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from bench_block_parts import time_us as block_parts_time_us  # this folder (a script)

import rubiks_models  # noqa: F401  (registers the models)
from rubiks_models.archs import TIERS
from rubiks_models.io import atomic_write
from rubiks_models.training_stem import TrainingStem

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def conv2d(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, stride=2, padding=1)


def conv2d_channels_last(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    out = F.conv2d(x.contiguous(memory_format=torch.channels_last), w, stride=2, padding=1)
    return out.contiguous()


def padded_weight(w: torch.Tensor, channels: int = 8) -> torch.Tensor:
    """``w`` (C, in, 3, 3) with zero input channels appended up to ``channels``,
    channels-last."""
    shape = (w.shape[0], channels, 3, 3)
    out = torch.empty(shape, dtype=w.dtype, device=w.device, memory_format=torch.channels_last)
    out.zero_()
    out[:, : w.shape[1]] = w
    return out


def conv2d_padded_channels_last(x: torch.Tensor, w_padded: torch.Tensor) -> torch.Tensor:
    n, c, height, width = x.shape
    shape = (n, w_padded.shape[1], height, width)
    frames = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    frames[:, c:] = 0
    frames[:, :c] = x
    return F.conv2d(frames, w_padded, stride=2, padding=1).contiguous()


def unfold_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    n, _, height, width = x.shape
    cols = F.unfold(x, 3, padding=1, stride=2)  # (N, 27, pixels)
    out = torch.matmul(w.flatten(1), cols)  # (N, C, pixels)
    return out.view(n, w.shape[0], (height + 1) // 2, (width + 1) // 2)


def space_to_depth_weight(w: torch.Tensor) -> torch.Tensor:
    """The (C, 4 * in, 2, 2) weight that makes a 2x2 stride-1 convolution of the
    pixel-unshuffled frames, padded by one block at the top and left, equal the 3x3
    stride-2 convolution with padding 1 of ``w`` (C, in, 3, 3).

    Output row i reads input rows 2i - 1, 2i and 2i + 1: the odd row of block i - 1 (tap
    0) and both rows of block i (taps 1 and 2); columns alike."""
    c_out, c_in = w.shape[:2]
    s2d = w.new_zeros(c_out, c_in, 2, 2, 2, 2)  # (out, in, row in block, col in block, kh, kw)
    # (block offset, row within block) of each 3x3 tap: tap 0 -> (0, 1), 1 -> (1, 0), 2 -> (1, 1)
    where = {0: (0, 1), 1: (1, 0), 2: (1, 1)}
    for dy, (ky, py) in where.items():
        for dx, (kx, px) in where.items():
            s2d[:, :, py, px, ky, kx] = w[:, :, dy, dx]
    return s2d.reshape(c_out, c_in * 4, 2, 2)  # pixel_unshuffle's channel order: in, row, col


def space_to_depth(x: torch.Tensor, w_s2d: torch.Tensor) -> torch.Tensor:
    blocks = F.pixel_unshuffle(x, 2)  # (N, 4 * in, H / 2, W / 2)
    return F.conv2d(F.pad(blocks, (1, 0, 1, 0)), w_s2d)


def unfold_bmm_weight_grad(frames: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """The stem weight's (C, 3, 3, 3) gradient: per frame, the output gradient's
    (C, pixels) matrix times the frames' (pixels, 27) taps, summed over the frames (in
    float32 for 16-bit inputs, written so by cuBLAS where torch can)."""
    n, channels = grad_out.shape[:2]
    taps = F.unfold(frames, 3, padding=1, stride=2).transpose(1, 2)  # (N, pixels, 27)
    grad = grad_out.reshape(n, channels, -1)
    narrow = grad.dtype in (torch.bfloat16, torch.float16)
    if narrow and grad.is_cuda and hasattr(torch.ops.aten.bmm, "dtype"):
        per_frame = torch.bmm(grad, taps, out_dtype=torch.float32)
    else:
        per_frame = torch.bmm(grad, taps)
        per_frame = per_frame.float() if narrow else per_frame
    return per_frame.sum(0).view(channels, 3, 3, 3)


def check_forms() -> None:
    """Every form against F.conv2d in float64 (odd and even sizes); raises on a mismatch."""
    g = torch.Generator().manual_seed(0)
    for height, width in ((12, 10), (9, 7)):
        x = torch.randn(2, 3, height, width, dtype=torch.float64, generator=g)
        w = torch.randn(5, 3, 3, 3, dtype=torch.float64, generator=g)
        expected = conv2d(x, w)
        got = {
            "conv2d channels-last": conv2d_channels_last(x, w),
            "conv2d channels-last, 8 channels": conv2d_padded_channels_last(x, padded_weight(w)),
            "unfold + matmul": unfold_matmul(x, w),
        }
        if height % 2 == 0 and width % 2 == 0:  # pixel_unshuffle needs even sizes
            got["space-to-depth 2x2"] = space_to_depth(x, space_to_depth_weight(w))
        for name, out in got.items():
            torch.testing.assert_close(out, expected, msg=lambda m, name=name: f"{name}: {m}")
        weight = w.clone().requires_grad_()
        grad_out = torch.randn(expected.shape, dtype=torch.float64, generator=g)
        (want,) = torch.autograd.grad(conv2d(x, weight), weight, grad_out)
        torch.testing.assert_close(unfold_bmm_weight_grad(x, grad_out), want)


def time_us(fn: Callable[[], object], device: str) -> tuple[float, float | None]:
    """(graphed, eager) µs per call on a GPU (graphed: ``bench_block_parts.time_us``);
    (median, None) on a CPU."""
    graphed = block_parts_time_us(fn, device)
    if device == "cpu":
        return graphed, None
    eager = []
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        eager.append((time.perf_counter() - t0) / 20 * 1e6)
    return graphed, statistics.median(eager)


def time_forms(width: int, args, device: str, dtype: torch.dtype) -> dict[str, dict]:
    g = torch.Generator(device=device).manual_seed(0)
    n = args.batch * args.frames
    x = torch.randn(n, 3, args.size, args.size, device=device, dtype=dtype, generator=g)
    w = (torch.randn(width, 3, 3, 3, device=device, generator=g) / 27**0.5).to(dtype)
    w_s2d, w_padded = space_to_depth_weight(w), padded_weight(w)
    out = torch.empty_like(conv2d(x, w))
    forms = {
        "write": lambda: out.fill_(0),
        "conv2d": lambda: conv2d(x, w),
        "conv2d channels-last": lambda: conv2d_channels_last(x, w),
        "conv2d channels-last, 8 channels": lambda: conv2d_padded_channels_last(x, w_padded),
        "unfold + matmul": lambda: unfold_matmul(x, w),
    }
    if args.size % 2 == 0:
        forms["space-to-depth 2x2"] = lambda: space_to_depth(x, w_s2d)
    with torch.inference_mode():
        return time_each(forms, device)


def time_each(forms: dict[str, Callable[[], object]], device: str) -> dict[str, dict]:
    """Each form's µs per call (``time_us``): graphed as ``us``, eager as ``eager_us``
    where timed."""
    results = {}
    for name, fn in forms.items():
        graphed, eager = time_us(fn, device)
        results[name] = {"us": round(graphed, 1)}
        if eager is not None:
            results[name]["eager_us"] = round(eager, 1)
    return results


def time_training(width: int, args, device: str, dtype: torch.dtype) -> dict[str, dict]:
    """The training forms (module docstring), µs per call; the weight-gradient forms
    checked against each other first (to the dtype's rounding)."""
    g = torch.Generator(device=device).manual_seed(0)
    n = args.batch * args.frames
    x = torch.randn(n, 3, args.size, args.size, device=device, dtype=dtype, generator=g)
    w = (torch.randn(width, 3, 3, 3, device=device, generator=g) / 27**0.5).to(dtype)
    grad_out = torch.randn_like(conv2d(x, w))
    weight = w.detach().float().requires_grad_()

    def cudnn_weight_grad():
        mask = [False, True, False]
        return torch.ops.aten.convolution_backward(
            grad_out, x, w, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1, mask
        )[1]

    want = cudnn_weight_grad().double()
    got = unfold_bmm_weight_grad(x, grad_out).double()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale)

    def conv_step():
        out = F.conv2d(x, weight.to(dtype), stride=2, padding=1)
        return torch.autograd.grad(out, weight, grad_out)

    def node_step():
        return torch.autograd.grad(TrainingStem.apply(x, weight, dtype), weight, grad_out)

    forms = {
        "weight grad, cuDNN": cudnn_weight_grad,
        "weight grad, unfold + bmm": lambda: unfold_bmm_weight_grad(x, grad_out),
        "step, conv2d": conv_step,
        "step, node": node_step,
    }
    return time_each(forms, device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tier", default="large", choices=sorted(TIERS))
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="write the result here (atomically)")
    args = p.parse_args(argv)
    for name in ("batch", "frames", "size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    device = torch.device(args.device).type
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    check_forms()
    width = timm.create_model(f"rubiksnet_{args.tier}", num_classes=0).stem.out_channels
    report = {
        "tier": args.tier,
        "stem_channels": width,
        "input": [args.batch * args.frames, 3, args.size, args.size],
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "forms": {name: time_forms(width, args, device, DTYPES[name]) for name in args.dtypes},
        "training": {
            name: time_training(width, args, device, DTYPES[name]) for name in args.dtypes
        },
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
