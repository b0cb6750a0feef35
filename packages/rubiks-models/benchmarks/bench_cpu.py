"""RubiksNet against TSM-ResNet50 on the CPU: float32 inference, side by side.

    python packages/rubiks-models/benchmarks/bench_cpu.py [--models ...]
        [--batch 1 --frames 8 --size 224] [--rounds 5] [--threads N] [--compile]
        [--json OUT.json]

Models as in ``bench_models.py`` (``tsm_r50``, ``rubiksnet_<tier>``, ``:fused``,
``:fused-conv`` / ``:fused-bmm``, ``@<pixels>``). Every model is built and warmed up
first (the first call of the CPU kernels compiles them or loads them from Numba's cache);
then each round times ``--iters`` forwards of every model in turn, under
``torch.inference_mode``, so that all models see the machine in the same state. A
model's figure is its median over the rounds (ms per batch), its ratio that median over
TSM-R50's. ``--compile`` adds each model compiled (``torch.compile(model,
fullgraph=True)``, Inductor's default mode; its compile time reported apart) to the same
rounds, as ``<name> compiled``, its ratio over TSM-R50 compiled where that is timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import bench_models  # this folder (run as a script): TSM-R50 and the model builder
import torch


def time_forwards(model: torch.nn.Module, clip: torch.Tensor, iters: int) -> float:
    """Wall time per forward of ``iters`` back-to-back forwards, in ms."""
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(iters):
            model(clip)
        return (time.perf_counter() - start) * 1e3 / iters


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(bench_models.TIER_MODELS))
    bench_models.add_clip_arguments(p)
    p.set_defaults(batch=1)
    p.add_argument("--iters", type=int, default=2, help="forwards per model and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument(
        "--compile", action="store_true",
        help="also time every model compiled (torch.compile, fullgraph=True)",
    )  # fmt: skip
    p.add_argument("--json", default=None, help="write the results here (atomically)")
    args = p.parse_args(argv)
    bench_models.check_positive(p, args, (*bench_models.CLIP_ARGUMENTS, "iters", "rounds"))
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clip = torch.randn(args.batch, args.frames, 3, args.size, args.size)
    models = {}
    compile_s = {}
    for name in args.models:
        try:
            model, _ = bench_models.build(name, args.classes, args.frames, device="cpu")
        except ValueError as e:
            p.error(str(e))
        models[name] = model.eval()
        time_forwards(models[name], clip, 1)  # compile or load the kernels, warm the caches
        print(f"# {name}: built and warmed up", file=sys.stderr, flush=True)
        if args.compile:
            compiled = torch.compile(models[name], fullgraph=True)
            start = time.perf_counter()
            time_forwards(compiled, clip, 1)
            compile_s[name] = round(time.perf_counter() - start, 1)
            time_forwards(compiled, clip, 1)
            models[f"{name} compiled"] = compiled
            print(f"# {name}: compiled in {compile_s[name]} s", file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        for name, model in models.items():
            times[name].append(time_forwards(model, clip, args.iters))
        print(f"# round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    shape = f"{args.batch} x {args.frames} x {args.size}²"
    print(f"float32 inference on the CPU, {torch.get_num_threads()} threads, clips {shape}")
    print("| model | ms per batch (median) | rounds, min-max | vs TSM-R50 |")
    print("|---|---|---|---|")
    for name, ms in medians.items():
        base = medians.get("tsm_r50 compiled" if name.endswith(" compiled") else "tsm_r50")
        ratio = f"{ms / base:.2f}x" if base and not name.startswith("tsm_r50") else "-"
        spread = f"{min(times[name]):.1f}-{max(times[name]):.1f}"
        print(f"| {name} | {ms:.1f} | {spread} | {ratio} |")
    if args.json:
        payload = {
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "clip": [args.batch, args.frames, 3, args.size, args.size],
            "rounds": args.rounds,
            "iters": args.iters,
            "ms": times,
            "median_ms": medians,
            "compile_s": compile_s,
        }
        bench_models.write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
