"""Whole models under rubiks-shift's default tuning and under a launch-only change of it.

    python packages/rubiks-models/benchmarks/bench_tuning.py --set pixel_walk_affine_plane=0
        [--models rubiksnet_large:fused rubiksnet_tiny:fused]
        [--modes infer_graph_bf16 infer_graph_fp32] [--rounds 2] [--json OUT.json]

A kernel layout is judged by what it does to the whole model: each (model, mode) of
``bench_models.py`` is built and timed with the default ``rubiks_shift`` tuning and with
the fields ``--set`` changes (launch-only fields: which walk a call takes, its tasks'
layout; ``rubiks_shift._cuda.use_tuning`` refuses kernel-defining ones), the two one
after the other, round after round, in one process. Prints ms per batch (and the host's
issuing time, as ``bench_models.py``) for both and their ratio.
"""

from __future__ import annotations

import argparse
import ast
import statistics
from dataclasses import replace
from types import SimpleNamespace

from bench_models import add_clip_arguments, check_positive, run_mode, write_json

from rubiks_shift import _cuda
from rubiks_shift._cuda_tuning import TUNING


def parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` (VALUE a Python literal) as (key, value)."""
    key, sep, value = text.partition("=")
    if not sep or not hasattr(TUNING, key):
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE with a Tuning field, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not a Python literal") from e


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_clip_arguments(p)
    p.add_argument(
        "--set", type=parse_setting, action="append", required=True, metavar="FIELD=VALUE",
        help="a launch-only Tuning field (repeatable)",
    )  # fmt: skip
    p.add_argument("--models", nargs="+", default=["rubiksnet_large:fused", "rubiksnet_tiny:fused"])
    p.add_argument("--modes", nargs="+", default=["infer_graph_bf16", "infer_graph_fp32"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the results here (atomically)")
    args = p.parse_args(argv)
    check_positive(p, args, ("batch", "frames", "size", "classes", "rounds", "iters", "repeats"))
    changed = replace(TUNING, **dict(args.set))
    with _cuda.tuned(changed):  # refused here, before any model is built, if not launch-only
        pass
    run_args = SimpleNamespace(**vars(args), compile_mode=None, fullgraph=False)
    rows = []
    for rnd in range(args.rounds):
        for model in args.models:
            for mode in args.modes:
                for label, tuning in (("default", TUNING), ("changed", changed)):
                    with _cuda.tuned(tuning):
                        r = run_mode(model, mode, run_args)
                    rows.append(dict(r, round=rnd, model=model, mode=mode, tuning=label))
                    print(f"round {rnd} {model} {mode} {label}: {r.get('ms', r)}", flush=True)
    print(f"\n| model | mode | default ms | with {' '.join(f'{k}={v!r}' for k, v in args.set)} |")
    print("|---|---|---|---|")
    for model in args.models:
        for mode in args.modes:

            def ms(label, model=model, mode=mode):
                return [
                    r["ms"]
                    for r in rows
                    if (r["model"], r["mode"], r["tuning"]) == (model, mode, label) and "ms" in r
                ]

            base, other = ms("default"), ms("changed")
            if base and other:
                ratio = statistics.median(other) / statistics.median(base)
                cells = " / ".join(f"{v:.2f}" for v in base), " / ".join(f"{v:.2f}" for v in other)
                print(f"| {model} | {mode} | {cells[0]} | {cells[1]} ({ratio:.3f}x) |")
    if args.json:
        write_json(args.json, {"set": dict(args.set), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
