"""Eager training steps on one GPU, the forms of a RubiksNet stage and block side by side
in one process, and the host time of the calls such a block makes.

The host's pace moves between machines and over minutes, so the forms are compared round
by round in one process, in each of ``--dtypes`` (bf16 autocast, fp32): TSM-R50, then each
RubiksNet model with its stages replayed as CUDA graphs (``graphs``, the default:
:mod:`rubiks_models.stage_graphs`) and with the stages running their blocks directly:
in bf16 with the small-plane blocks as one autograd node each (``node``), as composed
differentiable ops (``composed``) and frame by frame (``frames``,
``set_channel_major_plane(0)``); in fp32 (which trains frame by frame) ``eager``.
``--iters`` steps each per round after two warm-up steps (the second one captures the
graphs). Then the host time of one channel-major RubiksNet-Large block's
forward + backward in each form, and of each call such a block makes (µs; their GPU
work is shorter than their host time)::

    python packages/rubiks-models/benchmarks/bench_eager_train.py --rounds 6
"""

from __future__ import annotations

import argparse
import statistics

import bench_models  # this folder (run as a script): TSM-R50 and the model builder
import torch
import torch.nn.functional as F

from rubiks_models import rubiksnet
from rubiks_models.channel_major_block import to_channel_major
from rubiks_shift import kernels

FORMS = {"bf16": ("graphs", "node", "composed", "frames"), "fp32": ("graphs", "eager")}


def set_form(model: torch.nn.Module, form: str) -> None:
    """Make ``model``'s stages and channel-major blocks run as ``form`` (see the module
    docstring)."""
    for block in model.modules():
        if isinstance(block, rubiksnet.RubiksBlock):
            block.__dict__.pop("_one_node_inputs", None)
            if form == "composed":
                block._one_node_inputs = lambda x: None
            if block.has_channel_major:
                plane = 0 if form == "frames" else rubiksnet.CHANNEL_MAJOR_PLANE
                block.channel_major_plane = plane
        if isinstance(block, rubiksnet.RubiksStage):
            block.eager_graphs = form == "graphs"
            block.reset_graphs()


def _forms(name: str, dtype: str) -> tuple:
    """The forms worth timing: only 16-bit steps run channel-major."""
    return (None,) if name == "tsm_r50" else FORMS[dtype]


def train_steps(models: list[str], args) -> dict:
    """ms per eager training step (wall, host included) per (dtype, model, form), each
    round."""
    clip = torch.randn(args.batch, args.frames, 3, args.size, args.size, device="cuda")
    target = torch.randint(0, args.classes, (args.batch,), device="cuda")
    cases = []
    for name in models:
        model, _ = bench_models.build(name, args.classes, args.frames)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for dtype in args.dtypes:
            cases += [(dtype, name, form, model, opt) for form in _forms(name, dtype)]

    def step(model, opt, dtype: str) -> None:
        with bench_models._autocast(dtype):
            loss = F.cross_entropy(model(clip), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times: dict = {case[:3]: [] for case in cases}
    for _ in range(args.rounds):
        for dtype, name, form, model, opt in cases:
            if name != "tsm_r50":
                set_form(model, form)
            for _ in range(2):
                step(model, opt, dtype)
            run = lambda m=model, o=opt, d=dtype: step(m, o, d)
            times[(dtype, name, form)].append(bench_models.time_loop(run, args.iters, 1))
    return times


def block_step_host(repeats: int = 7, n: int = 200) -> dict:
    """µs of host time per bf16 forward + backward of one channel-major RubiksNet-Large
    block (288 channels, 14², one clip of 2 frames: the GPU work is far shorter than the
    host's), a stage of its own, in each form, the best of ``repeats`` loops of ``n``."""
    block = rubiksnet.RubiksStage([
        rubiksnet.RubiksBlock(
            288, 288, variant="rubiks3d", se_reduction=0, shift_init="uniform",
            t_init="uniform", normalize_grad=True, normalize_t_factor=1.0, aq_tau=2.0,
            deploy=False,
        )
    ]).cuda().train()  # fmt: skip
    frames = torch.randn(1, 2, 288, 14, 14, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn_like(frames)
    results = {}
    for form in FORMS["bf16"]:  # each form's input in the layout the model hands it
        x = frames if form == "frames" else to_channel_major(frames)
        x = x.detach().requires_grad_()

        def once(x=x) -> None:
            with torch.autocast("cuda", torch.bfloat16):
                y = block(x)
            y.backward(grad)

        set_form(block, form)
        results[form] = round(_us_per_call(once, n, repeats), 1)
    return results


def _us_per_call(fn, n: int = 300, repeats: int = 5) -> float:
    """Host µs per call after 20 warm-up calls, the best of ``repeats`` rounds."""
    for _ in range(20):
        fn()
    return bench_models.host_us_per_call(fn, n, repeats, min)


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
    p.add_argument("--dtypes", nargs="+", choices=["bf16", "fp32"], default=["bf16", "fp32"])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--iters", type=int, default=10)
    bench_models.add_clip_arguments(p)
    p.add_argument("--no-calls", action="store_true", help="skip the host times of one block")
    p.add_argument("--json", help="write the results here (atomically)")
    args = p.parse_args(argv)
    bench_models.check_positive(p, args, (*bench_models.CLIP_ARGUMENTS, "rounds", "iters"))
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    times = train_steps(args.models, args)
    results: dict = {"device": torch.cuda.get_device_name(), "steps": {}}
    print(f"eager training step, ms (median of {args.rounds} rounds; every round)")
    for (dtype, name, form), values in times.items():
        median = statistics.median(values)
        base = times.get((dtype, "tsm_r50", None))
        ratio = f" ({median / statistics.median(base):.2f}x)" if base else ""
        key = " ".join(k for k in (dtype, name, form) if k)
        print(f"{key:<33} {median:8.2f}{ratio}   " + " ".join(f"{v:.2f}" for v in values))
        results["steps"][key] = {"median_ms": median, "rounds_ms": values}
    if not args.no_calls:
        results["block_us"] = block_step_host()
        print(
            "\nhost time of one bf16 Large block's forward + backward (288 ch, 14², 2 frames), µs"
        )
        for form, us in results["block_us"].items():
            print(f"{form:<40} {us:8.1f}")
        results["calls_us"] = block_calls()
        print("\nhost time per call, µs (one bf16 channel-major block of RubiksNet-Large at 14²)")
        for name, us in results["calls_us"].items():
            print(f"{name:<40} {us:8.1f}")
    if args.json:
        bench_models.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
