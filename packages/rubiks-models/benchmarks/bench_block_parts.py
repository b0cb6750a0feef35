"""Where a fused RubiksNet block's time goes, stage by stage, against a copy of its tensor.

    python packages/rubiks-models/benchmarks/bench_block_parts.py [--tier large]
        [--dtype bfloat16] [--batch 8 --frames 8 --size 224] [--json OUT.json]

For each stage of a tier (its channels, its H x W at the given input size, its number of
blocks) this times, on one (B, T, C, H, W) tensor: a copy (the memory floor of one pass),
each pass of the fused block (``rubiks_models.fused``) in its two layouts — relu(bn1(x))
through the shift kernel with a zero shift, the shift with relu(. + b2) applied as it
reads, and the 1x1 convolutions: on (N, T, C, H, W) frames, products batched per frame
over H * W columns; on channel-major clips, one product over all N * T * H * W points.
On a GPU a figure is the time per call of 20 calls captured in one CUDA graph and
replayed 10 times (host time excluded); on a CPU, the median of 5 calls.
``totals`` weighs each stage by its number of blocks: a whole network's time in that
part.
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

import rubiks_models  # noqa: F401  (registers the models)
from rubiks_models.archs import TIERS
from rubiks_models.io import atomic_write
from rubiks_shift import affine_relu_shift3d

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def time_us(fn: Callable[[], object], device: str) -> float:
    """Time per call in µs (see the module docstring)."""
    if device == "cpu":
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1e6
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(20):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / 200


def stages(tier: str, size: int) -> list[tuple[int, int, int]]:
    """(channels, H = W, blocks) per stage of ``tier`` at input ``size``, from the model's
    own feature_info (each stride-2 step rounds up, so H = ceil(size / reduction))."""
    model = timm.create_model(f"rubiksnet_{tier}", num_classes=0)
    return [
        (info["num_chs"], -(-size // info["reduction"]), len(stage.blocks))
        for info, stage in zip(model.feature_info, model.stages, strict=True)
    ]


def stage_parts(c: int, side: int, args, device: str, dtype: torch.dtype) -> dict[str, float]:
    b, t = args.batch, args.frames
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(b, t, c, side, side, device=device, dtype=dtype, generator=g)
    scale = torch.rand(c, device=device, generator=g) + 0.5
    bias = torch.randn(c, device=device, generator=g) * 0.1
    ones, zero = torch.ones(c, device=device), torch.zeros(3, c, device=device)
    shift = (torch.rand(3, c, device=device, generator=g) - 0.5) * 2
    w = (torch.randn(c, c, device=device, generator=g) / c**0.5).to(dtype)
    cols = x.view(b * t, c, side * side)  # per frame: C x (H * W)
    major = x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)
    points = major.permute(2, 0, 1, 3, 4).reshape(c, -1)  # channel-major: C x points
    out_cols, out_points = torch.empty_like(cols), torch.empty_like(points)
    w_batched = w.expand(b * t, -1, -1)
    parts = {
        "copy": lambda: out_cols.copy_(cols),
        "frames: bn1_relu (shift kernel, zero shift)": lambda: affine_relu_shift3d(
            x, scale, bias, zero, quantize=True
        ),
        "frames: shift with relu(. + b2)": lambda: affine_relu_shift3d(x, ones, bias, shift),
        "frames: 1x1 conv, batched over H*W columns": lambda: torch.matmul(w, cols),
        "frames: 1x1 conv + residual, batched": lambda: out_cols.baddbmm_(w_batched, cols),
        "channel-major: bn1_relu": lambda: affine_relu_shift3d(
            major, scale, bias, zero, quantize=True
        ),
        "channel-major: shift with relu(. + b2)": lambda: affine_relu_shift3d(
            major, ones, bias, shift
        ),
        "channel-major: 1x1 conv, one product": lambda: torch.mm(w, points),
        "channel-major: 1x1 conv + residual": lambda: out_points.addmm_(w, points),
    }
    with torch.inference_mode():
        return {name: round(time_us(fn, device), 1) for name, fn in parts.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tier", default="large", choices=sorted(TIERS))
    p.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results here (atomically)")
    args = p.parse_args(argv)
    for n in ("batch", "frames", "size"):
        if getattr(args, n) < 1:
            p.error(f"--{n} must be >= 1")
    if args.json and not Path(args.json).parent.is_dir():
        p.error(f"--json: folder {Path(args.json).parent} does not exist")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU here")
    torch.backends.cudnn.benchmark = True
    dtype = DTYPES[args.dtype]
    per_stage, totals = {}, {}
    for c, side, blocks in stages(args.tier, args.size):
        parts = stage_parts(c, side, args, args.device, dtype)
        key = f"C={c} {side}x{side} x{blocks}"
        per_stage[key] = parts
        print(key, json.dumps(parts), flush=True)
        for name, us in parts.items():
            totals[name] = totals.get(name, 0.0) + us * blocks / 1e3
    totals = {name: round(ms, 3) for name, ms in totals.items()}
    print("totals over the network's blocks (ms):", json.dumps(totals, indent=1))
    if args.json:
        info = {
            "device": torch.cuda.get_device_name() if args.device != "cpu" else "cpu",
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
            "tier": args.tier,
            "dtype": args.dtype,
            "shape": [args.batch, args.frames, 3, args.size, args.size],
        }
        payload = {"info": info, "stages_us": per_stage, "totals_ms": totals}
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
