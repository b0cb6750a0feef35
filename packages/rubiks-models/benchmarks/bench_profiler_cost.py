"""What one torch.profiler session costs the timings that follow it in the same process.

    python packages/rubiks-models/benchmarks/bench_profiler_cost.py \\
        [--models tsm_r50 rubiksnet_large:fused] [--modes infer_fp32 infer_bf16]

Times every (model, mode) of ``bench_models.py`` eager, traces a few calls of one of them
with ``torch.profiler`` (CUDA activity, as ``bench_models.py --profile`` does), then times
every (model, mode) again: ms per batch before and after. An after-effect would show in
host-bound runs (hundreds of small kernels per batch), not in GPU-bound ones; host-bound
runs also drift without any trace (BENCHMARKS.md, *Method*), so compare several calls.
``TEARDOWN_CUPTI=1`` in the environment asks Kineto to detach CUPTI when a trace ends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import bench_models  # this folder (run as a script): models, timing, profiling
import torch


def timed_runs(args) -> dict[str, float]:
    """ms per batch of every (model, mode), each built and timed afresh."""
    out = {}
    for mode in args.modes:
        for name in args.models:
            out[f"{mode} {name}"] = round(bench_models.run_mode(name, mode, args)["ms"], 3)
            torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tsm_r50", "rubiksnet_large:fused"])
    p.add_argument("--modes", nargs="+", default=["infer_fp32", "infer_bf16"])
    bench_models.add_clip_arguments(p)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", type=int, default=2, help="calls traced between the timings")
    args = p.parse_args(argv)
    bench_models.check_positive(p, args, (*bench_models.CLIP_ARGUMENTS, "iters", "repeats"))
    unknown = [m for m in args.modes if m not in bench_models.MODES or "compile" in m]
    if unknown:
        p.error(f"unsupported modes {unknown}: eager and graphed modes of bench_models.py")
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    info = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "TEARDOWN_CUPTI": os.environ.get("TEARDOWN_CUPTI"),
    }
    print(json.dumps(info), flush=True)
    before = timed_runs(args)
    bench_models.run_mode(args.models[0], args.modes[0], args, profile=args.profile)
    after = timed_runs(args)
    print("| run | before the trace, ms | after, ms | after / before |")
    print("|---|---|---|---|")
    for key, ms in before.items():
        print(f"| {key} | {ms:.2f} | {after[key]:.2f} | {after[key] / ms:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
