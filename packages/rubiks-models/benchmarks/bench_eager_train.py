"""Eager training steps on one GPU, the forms of a channel-major block side by side in one
process, and the host time of the calls such a block makes.

Eager steps of RubiksNet are bound by the host (the GPU needs a fraction of the step),
and the host's pace moves between machines and over minutes, so the forms are compared
round by round in one process: TSM-R50, then each RubiksNet model with its small-plane
blocks as one autograd node (``node``, the default), as composed differentiable ops
(``composed``) and frame by frame (``frames``, ``set_channel_major_plane(0)``), ``--iters``
steps each per round after two warm-up steps. Then ``--calls`` times, in µs per call, the
calls one channel-major block of RubiksNet-Large at 14² makes (each one at the host's
pace: its GPU work is shorter than its host time)::

    python packages/rubiks-models/benchmarks/bench_eager_train.py --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import time

import bench_models  # this folder (run as a script): TSM-R50 and the model builder
import torch
import torch.nn.functional as F

from rubiks_models import rubiksnet
from rubiks_shift import kernels

FORMS = ("node", "composed", "frames")


def set_form(model: torch.nn.Module, form: str) -> None:
    """Make ``model``'s channel-major blocks run as ``form`` (see the module docstring)."""
    for block in model.modules():
        if isinstance(block, rubiksnet.RubiksBlock):
            block.__dict__.pop("_one_node_settings", None)
            if form == "composed":
                block._one_node_settings = lambda x: None
            if block.has_channel_major:
                plane = 0 if form == "frames" else rubiksnet.CHANNEL_MAJOR_PLANE
                block.channel_major_plane = plane


def train_steps(models: list[str], args) -> dict:
    """ms per eager training step (wall, host included) per (model, form), each round."""
    clip = torch.randn(args.batch, args.frames, 3, args.size, args.size, device="cuda")
    target = torch.randint(0, args.classes, (args.batch,), device="cuda")
    cases = []
    for name in models:
        model, _ = bench_models.build(name, args.classes, args.frames)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        forms = (None,) if name == "tsm_r50" else FORMS
        cases += [(name, form, model, opt) for form in forms]

    def step(model, opt) -> None:
        with torch.autocast("cuda", torch.bfloat16, enabled=args.dtype == "bf16"):
            loss = F.cross_entropy(model(clip), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times: dict = {(name, form): [] for name, form, _, _ in cases}
    for _ in range(args.rounds):
        for name, form, model, opt in cases:
            if form is not None:
                set_form(model, form)
            for _ in range(2):
                step(model, opt)
            times[(name, form)].append(
                bench_models.time_loop(lambda m=model, o=opt: step(m, o), args.iters, 1)
            )
    return times


def _us_per_call(fn, n: int = 300, repeats: int = 5) -> float:
    for _ in range(20):
        fn()
    best = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - start) / n * 1e6)
        torch.cuda.synchronize()
    return min(best)


def block_calls() -> dict:
    """µs of host time per call of what one bf16 channel-major block of RubiksNet-Large at
    14² (288 channels, one clip of 8 frames: little GPU work) calls."""
    c, points = 288, 8 * 14 * 14
    bf16 = dict(device="cuda", dtype=torch.bfloat16)
    w, a, s = (
        torch.randn(c, c, **bf16),
        torch.randn(c, points, **bf16),
        torch.randn(c, points, **bf16),
    )
    w32 = torch.randn(c, c, device="cuda")
    x = torch.randn(1, c, points, 1, **bf16)
    ones, zeros = torch.ones(c, device="cuda"), torch.zeros(c, device="cuda")
    stats = kernels.batch_norm_relu_forward(x, ones, zeros, zeros.clone(), ones.clone(), 0.1, 1e-5)[
        1
    ]
    clip = torch.randn(c, 1, 8, 14, 14, **bf16).permute(1, 2, 0, 3, 4)
    shift = torch.rand(3, c, device="cuda")
    small = torch.zeros(16, device="cuda")
    calls = {
        "add_ on 16 values (a torch op's floor)": lambda: small.add_(1),
        "weight cast fp32 -> bf16": lambda: w32.to(torch.bfloat16),
        "mm": lambda: torch.mm(w, a),
        "mm, transposed operand (backward)": lambda: torch.mm(a, s.t()),
        "addmm": lambda: torch.addmm(s, w, a),
        "batch_norm_relu_forward (3 launches)": lambda: kernels.batch_norm_relu_forward(
            x, ones, zeros, zeros.clone(), ones.clone(), 0.1, 1e-5
        ),
        "batch_norm_relu_backward (3 launches)": lambda: kernels.batch_norm_relu_backward(
            x, x, ones, stats, 0.1, 1e-5
        ),
        "shift3d_forward": lambda: kernels.shift3d_forward(clip, shift),
        "shift3d_backward (3 launches)": lambda: kernels.shift3d_backward(clip, clip, shift),
    }
    return {name: round(_us_per_call(fn), 1) for name, fn in calls.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tsm_r50", "rubiksnet_large", "rubiksnet_tiny"])
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=174)
    p.add_argument("--no-calls", action="store_true", help="skip the per-call host times")
    p.add_argument("--json", help="write the results here (atomically)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    times = train_steps(args.models, args)
    base = statistics.median(times[("tsm_r50", None)]) if ("tsm_r50", None) in times else None
    results: dict = {"device": torch.cuda.get_device_name(), "dtype": args.dtype, "steps": {}}
    print(f"eager {args.dtype} training step, ms (median of {args.rounds} rounds; every round)")
    for (name, form), values in times.items():
        median = statistics.median(values)
        ratio = f" ({median / base:.2f}x)" if base else ""
        key = name if form is None else f"{name} {form}"
        print(f"{key:<28} {median:8.2f}{ratio}   " + " ".join(f"{v:.2f}" for v in values))
        results["steps"][key] = {"median_ms": median, "rounds_ms": values}
    if not args.no_calls:
        results["calls_us"] = block_calls()
        print("\nhost time per call, µs (one bf16 channel-major block of RubiksNet-Large at 14²)")
        for name, us in results["calls_us"].items():
            print(f"{name:<40} {us:8.1f}")
    if args.json:
        bench_models.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
