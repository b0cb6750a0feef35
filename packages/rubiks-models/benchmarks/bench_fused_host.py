"""Host time of a fused RubiksNet's eager forward: what the Python side costs per call.

    python packages/rubiks-models/benchmarks/bench_fused_host.py [--tier large]
        [--device cuda] [--dtype bfloat16] [--batch 1 --frames 2 --size 64]
        [--calls 200 --rounds 5] [--json OUT.json]

Builds the fused form of a tier (``fuse_model``, random weights) and times back-to-back
eager forwards under ``torch.inference_mode()`` on a small clip, so that the host, not
the device, sets the pace. Per round: ``issue`` is the mean host time of one forward
call (on a GPU the calls return before their kernels finish; a synchronize follows the
round), ``wall`` the mean time per forward including that synchronize. The best round
of each is reported, in µs per forward and per block. On a GPU, ``issue`` close to
``wall`` means the forward is host-bound at this size. On a CPU both include the CPU
kernels; compare commits on one machine at one size to see the Python's share change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import timm
import torch

import rubiks_models  # noqa: F401  (registers the models)
from rubiks_models.archs import TIERS
from rubiks_models.fused import fuse_model
from rubiks_models.io import atomic_write

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(model: torch.nn.Module, x: torch.Tensor, calls: int, rounds: int) -> dict:
    """Best-of-``rounds`` mean issue and wall time per forward, in µs."""
    issue, wall = [], []
    with torch.inference_mode():
        for _ in range(3):  # warm-up: kernel loading, plan and binding caches
            model(x)
        _sync(x.device)
        for _ in range(rounds):
            spent = 0.0
            start = time.perf_counter()
            for _ in range(calls):
                t0 = time.perf_counter()
                model(x)
                spent += time.perf_counter() - t0
            _sync(x.device)
            wall.append((time.perf_counter() - start) / calls * 1e6)
            issue.append(spent / calls * 1e6)
    return {"issue_us": min(issue), "wall_us": min(wall)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="large", choices=sorted(TIERS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the result here (atomically)")
    args = parser.parse_args(argv)
    for name in ("batch", "frames", "size", "calls", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    dtype = DTYPES[args.dtype]

    torch.manual_seed(0)
    model = timm.create_model(f"rubiksnet_{args.tier}", num_classes=174).eval()
    fused = fuse_model(model.to(device))
    x = torch.randn(args.batch, args.frames, 3, args.size, args.size, device=device, dtype=dtype)
    result = time_forward(fused, x, args.calls, args.rounds)
    blocks = len(fused.blocks)
    report = {
        "tier": args.tier,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "shape": list(x.shape),
        "blocks": blocks,
        **result,
        "issue_us_per_block": result["issue_us"] / blocks,
    }
    print(
        f"{args.tier} fused, {args.dtype}, {report['device']}, x {tuple(x.shape)}: "
        f"issue {result['issue_us']:.1f} µs per forward ({report['issue_us_per_block']:.2f} "
        f"per block, {blocks} blocks), wall {result['wall_us']:.1f} µs"
    )
    if args.json:
        text = json.dumps(report, indent=2) + "\n"
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
