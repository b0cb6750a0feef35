"""Time a fresh process's way to its first CUDA training step, cold and warm kernel cache.

Each run is a new Python process that imports torch and rubiks_shift (and rubiks_models),
builds RubiksNet-Tiny (where rubiks_models is importable; else a stack of RubiksShift3d
layers between convolutions, strided and not), moves it to the GPU and runs the first
forward and backward of a 1x8x3x224x224 clip, in float32 or under bfloat16 autocast,
then a second step for comparison. Per precision: one run with an empty kernel cache
(a new temporary folder as ``$RUBIKS_SHIFT_CACHE_DIR``: every kernel compiles), then one
with the cache it filled. Prints a table of seconds per phase and writes JSON.

    python benchmarks/startup.py [--json startup.json] [--precisions fp32 bf16]
        [--workers N] [--repeat-warm 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("import", "build", "forward", "backward", "first_step", "second_step")


def child(precision: str) -> dict:
    """The measured process: seconds per phase."""
    t0 = time.perf_counter()
    import torch

    import rubiks_shift

    try:
        import rubiks_models
    except ImportError:
        rubiks_models = None
    t1 = time.perf_counter()
    if rubiks_models is not None:
        from rubiks_models.rubiksnet import rubiksnet_tiny

        model = rubiksnet_tiny(num_classes=174)
        kind = "rubiksnet_tiny"
    else:
        model = _shift_stack(torch, rubiks_shift)
        kind = "RubiksShift3d stack"
    model = model.cuda().train()
    x = torch.randn(1, 8, 3, 224, 224, device="cuda")
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    steps = []
    for _ in range(2):
        start = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
            loss = out.float().square().mean()
        torch.cuda.synchronize()
        mid = time.perf_counter()
        loss.backward()
        torch.cuda.synchronize()
        steps.append((mid - start, time.perf_counter() - mid))
    return {
        "model": kind,
        "device": torch.cuda.get_device_name(),
        "import": t1 - t0,
        "build": t2 - t1,
        "forward": steps[0][0],
        "backward": steps[0][1],
        "first_step": sum(steps[0]),
        "second_step": sum(steps[1]),
    }


def _shift_stack(torch, rubiks_shift):
    """RubiksShift3d layers (strides 1 and 2, spatial and temporal) between convolutions,
    for (N, T, C, H, W) clips."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.shift = rubiks_shift.RubiksShift3d(c_in, stride=(1, stride, stride))
            self.conv = nn.Conv2d(c_in, c_out, 1)

        def forward(self, x):
            y = self.shift(x)
            n, t = y.shape[:2]
            return self.conv(y.flatten(0, 1)).unflatten(0, (n, t))

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 24, 3, stride=2, padding=1)
            self.blocks = nn.Sequential(
                Block(24, 24, 1), Block(24, 48, 2), Block(48, 48, 1), Block(48, 96, 2)
            )

        def forward(self, x):
            n, t = x.shape[:2]
            y = self.stem(x.flatten(0, 1)).unflatten(0, (n, t))
            return self.blocks(y).mean(dim=(1, 3, 4))

    return Stack()


def run(precision: str, cache: Path, workers: int | None) -> dict:
    env = dict(os.environ, RUBIKS_SHIFT_CACHE_DIR=str(cache))
    if workers is not None:
        env["RUBIKS_SHIFT_COMPILE_WORKERS"] = str(workers)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child", precision],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the {precision} run failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process"] = wall
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"]
    )
    parser.add_argument(
        "--workers", type=int, default=None,
        help="RUBIKS_SHIFT_COMPILE_WORKERS for the runs (default: the package's)",
    )  # fmt: skip
    parser.add_argument("--repeat-warm", type=int, default=2, help="warm runs per precision")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    rows: list[dict] = []
    head = ("precision", "cache", *PHASES, "process")
    print(" | ".join(f"{h:>11}" for h in head), flush=True)
    for precision in args.precisions:
        with tempfile.TemporaryDirectory(prefix="rubiks-shift-cache-") as tmp:
            cache = Path(tmp) / "kernels"
            for state in ["cold"] + ["warm"] * args.repeat_warm:
                row = dict(run(precision, cache, args.workers), precision=precision, cache=state)
                rows.append(row)
                cells = [precision, state, *(f"{row[p]:.2f}" for p in (*PHASES, "process"))]
                print(" | ".join(f"{c:>11}" for c in cells), flush=True)
                if args.json:  # rewritten after every run: a run cut short still reports
                    tmp_json = args.json.with_name(args.json.name + ".tmp")
                    tmp_json.write_text(json.dumps({"runs": rows}, indent=1) + "\n")
                    os.replace(tmp_json, args.json)
    print(f"# {rows[0]['device']}, {rows[0]['model']}, 1x8x3x224x224; seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
