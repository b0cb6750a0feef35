"""Compiled training steps, one process per model, and where their host time goes.

Each model runs in a fresh process, so no model's compiled graphs, CUDA-graph memory
pool or caches are there when the next is timed: ``torch.compile(model, mode=...,
fullgraph=True)``, then forward, cross-entropy, backward and an eager SGD step with
momentum, as a user writes it. Prints
the step time (median of ``--repeats`` loops of ``--iters`` back-to-back steps, host
included), the optimizer step's share, and torch.profiler's host-side entries per step
(how many gradient accumulations, graph launches and kernel launches the host makes).

    python benchmarks/bench_compiled_train.py --models tsm_r50 rubiksnet_large rubiksnet_large@0

Model names are ``bench_models.py``'s (``@0``: the frame-by-frame blocks).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_models  # this folder (run as a script): TSM-R50 and the model builder
import torch
import torch.nn.functional as F

HOST_ENTRIES = (  # torch.profiler CPU entries counted per step
    "torch::autograd::AccumulateGrad",
    "cudaGraphLaunch",
    "cudaLaunchKernel",
    "Optimizer.step#SGD.step",
)


def measure(name: str, args) -> dict:
    """One model's compiled step (run in this process)."""
    torch.backends.cudnn.benchmark = True
    model, trainable = bench_models.build(name, args.classes, args.frames)
    if not trainable:
        raise ValueError(f"{name!r} is an inference-only form")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    compiled = torch.compile(model, mode=args.compile_mode, fullgraph=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(args.batch, args.frames, 3, args.size, args.size, device="cuda", generator=g)
    target = torch.randint(0, args.classes, (args.batch,), device="cuda", generator=g)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with bench_models._autocast(args.dtype):
            loss = F.cross_entropy(compiled(x), target)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    for _ in range(4):  # compile, warm up, record the CUDA graphs
        step()
    torch.cuda.synchronize()
    result = {"setup_s": round(time.perf_counter() - start, 1)}
    result["ms"] = round(bench_models.time_loop(step, args.iters, args.repeats), 3)
    result["optimizer_step_ms"] = round(bench_models.time_loop(opt.step, args.iters, 1), 3)
    steps = 3
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    calls: collections.Counter = collections.Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CPU and event.name in HOST_ENTRIES:
            calls[event.name] += 1
    result["host_calls_per_step"] = {k: calls[k] / steps for k in HOST_ENTRIES}
    result["parameters"] = sum(1 for _ in model.parameters())
    return result


def table(results: dict, base: str = "tsm_r50") -> str:
    lines = [
        "| model | step ms | ratio | optimizer step ms | parameter tensors | graph launches |",
        "|---|---|---|---|---|---|",
    ]
    ref = results.get(base, {}).get("ms")
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | |")
            continue
        ratio = f"{r['ms'] / ref:.2f}x" if ref else "-"
        launches = r["host_calls_per_step"]["cudaGraphLaunch"]
        lines.append(
            f"| {name} | {r['ms']:.2f} | {ratio} | {r['optimizer_step_ms']:.2f} "
            f"| {r['parameters']} | {launches:g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tsm_r50", "rubiksnet_large"])
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--compile-mode", default="reduce-overhead", choices=bench_models.COMPILE_MODES)
    bench_models.add_clip_arguments(p)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300, help="seconds per model's process")
    p.add_argument("--json", help="write the results here (atomically)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this model here
    args = p.parse_args(argv)
    bench_models.check_positive(p, args, (*bench_models.CLIP_ARGUMENTS, "iters", "repeats"))
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    if args.one:
        bench_models.write_json(args.json, measure(args.one, args))
        return 0
    info = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "mode": args.compile_mode,
        "dtype": args.dtype,
        "shape": [args.batch, args.frames, 3, args.size, args.size],
    }
    print(json.dumps(info), flush=True)
    forwarded = [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("dtype", "compile_mode", *bench_models.CLIP_ARGUMENTS, "iters", "repeats")
    ]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            out = os.path.join(tmp, "one.json")
            cmd = [sys.executable, __file__, "--one", name, "--json", out, *forwarded]
            try:
                done = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
            except subprocess.TimeoutExpired:
                results[name] = {"error": f"over {args.timeout:g} s"}
                continue
            if done.returncode != 0:
                results[name] = {"error": done.stderr.strip().splitlines()[-1][:200]}
                continue
            results[name] = json.loads(Path(out).read_text())
            print(name, json.dumps(results[name]), flush=True)
    print(table(results))
    if args.json:
        bench_models.write_json(args.json, {"info": info, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
