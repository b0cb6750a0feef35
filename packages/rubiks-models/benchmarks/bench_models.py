"""RubiksNet against TSM-ResNet50 on one GPU, side by side, in the modes people run.

    python packages/rubiks-models/benchmarks/bench_models.py [--models ...] [--modes ...]
        [--batch 8 --frames 8 --size 224] [--matmul-precision high] [--json OUT.json]

Every figure is the time per batch (8 clips x 8 frames x 224², 174 classes by default) as
a user meets it: ``--iters`` calls back to back with the host's issuing included, the
device synchronised once at the end; the median of ``--repeats`` such loops. Beside it,
``host``: the median time the host takes to issue one call with the device idle; where
it nears the time per batch, the host sets the pace. With ``--rounds N`` every (model,
mode) is built and timed once per round, round after round, and reported as the median
of its rounds with their range. Models:

* ``tsm_r50``: torchvision's ResNet-50 with TSM's temporal shift (1/8 of the channels one
  frame forward, 1/8 one frame back, in the residual branch before conv1 of every
  bottleneck), frame logits averaged.
* ``rubiksnet_<tier>`` (timm, eval-mode batch norms) and ``rubiksnet_<tier>:fused``, its
  fused inference form (:func:`rubiks_models.fused.fuse_model`; inference modes only).
* ``rubiksnet_<tier>_aq`` (soft temporal attention) and ``rubiksnet_<tier>_aq:hard`` (the
  deployment form, integer temporal shifts; ``:hard:fused`` fused as well);
  ``:fused-conv`` / ``:fused-bmm`` force the fused form's 1x1-convolution path, and a
  suffix ``@<pixels>`` sets its ``channel_major_plane`` (``:fused@0``: frame by frame);
  on an unfused model (``rubiksnet_large@0``) it sets the channel-major plane of 16-bit
  training (:meth:`rubiks_models.RubiksNet.set_channel_major_plane`). ``:traced`` or
  ``:one_op`` after ``:fused`` sets what torch.compile makes of it (``compile_as``: the
  blocks traced for Inductor, or the eager forward called as one op, CUDA's default);
  ``:epilogue-on`` / ``:epilogue-off`` after ``:fused`` set its ``conv1_epilogue`` (bn2's
  bias and ReLU in conv1's product; default "auto"); ``:replay-off`` after ``:fused``
  makes its identity blocks take the checked op calls at every eager call instead of
  replaying their bound ones (``FusedBlock.replays_forward``); ``:graphs-off`` makes an
  unfused model's stages run their blocks directly in eager training instead of
  replaying them as CUDA graphs (:meth:`rubiks_models.RubiksNet.set_eager_graphs`), and a
  fused model's eager forward run its blocks instead of replaying a CUDA graph of itself
  (:meth:`rubiks_models.fused.FusedRubiksNet.set_eager_graphs`);
  ``:compiled-replays`` / ``:traced-stages`` on an unfused model make torch.compile call
  its training stages as ops that replay their graphs, or trace them
  (:meth:`rubiks_models.RubiksNet.set_compiled_replays` on or off); ``:keep-activations``
  on an unfused model makes its blocks keep every activation for the backward instead of
  recomputing the cheap ones (:meth:`rubiks_models.RubiksNet.set_activation_recompute`).

Modes (inference under ``torch.inference_mode``; train = forward, cross-entropy, backward,
SGD step with momentum): ``infer_fp32``, ``infer_bf16`` (autocast), ``infer_cl_fp32`` /
``_bf16`` (channels-last model and input), ``infer_compile_fp32`` / ``_bf16``
(``torch.compile``, ``--compile-mode`` and ``--fullgraph`` as asked; compile time
reported apart), ``infer_graph_fp32`` / ``_bf16``
(:class:`rubiks_models.cuda_graphs.GraphedInference`), ``train_fp32``, ``train_bf16``,
``train_cl_fp32`` / ``_bf16``, ``train_compile_fp32`` / ``_bf16``, ``train_graph_fp32`` /
``_bf16`` (:class:`rubiks_models.cuda_graphs.GraphedTrainStep`); every mode also reports the
peak memory of its timed calls (allocated, and reserved by the allocator). The table gives
each figure's ratio to TSM-R50 in the same mode.

``--profile N`` profiles N calls of each run after every run is timed: GPU time per kind
of kernel and the ``--profile-kernels`` kernels with the most time (torch.profiler), or
with ``--profile-host`` the host's Python functions with the most time of their own
(cProfile).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch._inductor.config
import torch.nn.functional as F
from torch import nn

MODES = (
    "infer_fp32",
    "infer_bf16",
    "infer_cl_fp32",
    "infer_cl_bf16",
    "infer_compile_fp32",
    "infer_compile_bf16",
    "infer_graph_fp32",
    "infer_graph_bf16",
    "train_fp32",
    "train_bf16",
    "train_cl_fp32",
    "train_cl_bf16",
    "train_compile_fp32",
    "train_compile_bf16",
    "train_graph_fp32",
    "train_graph_bf16",
)
TIER_MODELS = (  # TSM-R50 and the smallest and largest tiers, as built and fused
    "tsm_r50",
    "rubiksnet_tiny",
    "rubiksnet_tiny:fused",
    "rubiksnet_large",
    "rubiksnet_large:fused",
)
DEFAULT_MODELS = (*TIER_MODELS, "rubiksnet_large_aq", "rubiksnet_large_aq:hard:fused")


# ------------------------------------------------------------------------- TSM-R50


def temporal_shift(x: torch.Tensor, frames: int, fold_div: int = 8) -> torch.Tensor:
    """TSM's shift of (N*T, C, H, W): channels [0, C/8) read frame t + 1, [C/8, C/4) frame
    t - 1 (zeros past the clip ends), the rest stay."""
    nt, c, h, w = x.shape
    clip = x.view(nt // frames, frames, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(clip)
    out[:, :-1, :fold] = clip[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = clip[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = clip[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


class _ShiftThen(nn.Module):
    def __init__(self, conv: nn.Module, frames: int) -> None:
        super().__init__()
        self.conv, self.frames = conv, frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(temporal_shift(x, self.frames))


class TSMResNet50(nn.Module):
    """TSM-ResNet50 for (B, T, 3, H, W) clips: frame logits averaged over T."""

    def __init__(self, num_classes: int, frames: int) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.net = resnet50(num_classes=num_classes)
        for layer in (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4):
            for block in layer:
                block.conv1 = _ShiftThen(block.conv1, frames)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        logits = self.net(x.flatten(0, 1))
        return logits.view(b, t, -1).mean(1)


# ---------------------------------------------------------------------------- models


def build(name: str, num_classes: int, frames: int, device: str = "cuda") -> tuple[nn.Module, bool]:
    """(model on ``device``, whether it can train)."""
    if name == "tsm_r50":
        return TSMResNet50(num_classes, frames).to(device), True
    import timm

    import rubiks_models  # noqa: F401  (registers the models)
    from rubiks_models.deploy import quantize_model
    from rubiks_models.fused import fuse_model

    arch, *forms = name.split(":")
    arch, _, train_plane = arch.partition("@")
    known_form = re.compile(
        r"hard|traced|one_op|epilogue-(on|off)|replay-off|graphs-off|compiled-replays"
        r"|traced-stages|keep-activations"
        r"|fused(-conv|-bmm)?(@\d+)?"
    )
    unknown = {f for f in forms if not known_form.fullmatch(f)}
    fused = [f for f in forms if f.startswith("fused")]
    compile_as = [f for f in forms if f in ("traced", "one_op")]
    if len(compile_as) > 1 or (compile_as and not fused):
        raise ValueError(f"':traced' or ':one_op' is one form of a fused model, in {name!r}")
    epilogue = [f.removeprefix("epilogue-") for f in forms if f.startswith("epilogue-")]
    if len(epilogue) > 1 or (epilogue and not fused):
        raise ValueError(f"':epilogue-on' or '-off' is one form of a fused model, in {name!r}")
    if "replay-off" in forms and not fused:
        raise ValueError(f"':replay-off' is one form of a fused model, in {name!r}")
    if "compiled-replays" in forms and "traced-stages" in forms:
        raise ValueError(f"':compiled-replays' and ':traced-stages' exclude each other: {name!r}")
    for form in ("compiled-replays", "traced-stages", "keep-activations"):
        if form in forms and fused:
            raise ValueError(f"':{form}' is a form of an unfused model (training), in {name!r}")
    if unknown or (train_plane and not train_plane.isdigit()):
        raise ValueError(f"unknown model form(s) {sorted(unknown)} in {name!r}")
    model = timm.create_model(arch, num_classes=num_classes).to(device)
    if train_plane:
        model.set_channel_major_plane(int(train_plane))
    if "graphs-off" in forms and not fused:
        model.set_eager_graphs(False)
    if "keep-activations" in forms:
        model.set_activation_recompute(False)
    if "compiled-replays" in forms or "traced-stages" in forms:
        model.set_compiled_replays("compiled-replays" in forms)
    for m in model.modules():  # trained-looking batch norms (the statistics matter to fusion)
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.uniform_(-0.1, 0.1)
    if "hard" in forms:
        model = quantize_model(model.eval())
    if fused:
        form, _, plane = fused[0].partition("@")
        gemm = form.removeprefix("fused").removeprefix("-") or "auto"
        kwargs = {"channel_major_plane": int(plane)} if plane else {}
        if compile_as:
            kwargs["compile_as"] = compile_as[0]
        if epilogue:
            kwargs["conv1_epilogue"] = epilogue[0]
        fused_model = fuse_model(model.eval(), gemm, **kwargs)
        for block in fused_model.blocks:
            block.replays_forward = block.replays_forward and "replay-off" not in forms
        if "graphs-off" in forms:
            fused_model.set_eager_graphs(False)
        return fused_model, False
    return model, True


# ---------------------------------------------------------------------------- timing


def _seconds_per_call(fn: Callable[[], object], calls: int, rounds: int, wait: bool) -> list[float]:
    """Seconds per call of ``calls`` back-to-back calls in each of ``rounds`` rounds, each
    started with the device idle; the clock stops after the device is done where ``wait``
    (the wall time), before waiting for it otherwise (the host's time to issue them)."""
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if wait:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / calls)
        torch.cuda.synchronize()
    return times


def time_loop(fn: Callable[[], object], iters: int, repeats: int) -> float:
    """Median over ``repeats`` of the wall time per call of ``iters`` back-to-back calls
    (host issuing included), in ms."""
    return statistics.median(_seconds_per_call(fn, iters, repeats, wait=True)) * 1e3


def host_us_per_call(
    fn: Callable[[], object],
    calls: int,
    rounds: int,
    statistic: Callable[[list[float]], float] = statistics.median,
) -> float:
    """Host time per call of ``calls`` back-to-back calls, in µs: each of ``rounds``
    rounds starts with the device idle and stops the clock before waiting for it; the
    rounds reduced by ``statistic``. For calls whose GPU work is small (the host's pace)."""
    return statistic(_seconds_per_call(fn, calls, rounds, wait=False)) * 1e6


def issue_time(fn: Callable[[], object], calls: int) -> float:
    """Median host time of one call issued with the device idle (synchronised before
    each call), in ms: the host's part of a call. Near the wall time of ``time_loop``,
    the run is bound by the host. (A call of more than ~1,000 kernels may also wait for
    room in the launch queue.)"""
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


KERNEL_KINDS = (  # (kind, pattern on the kernel name), first match wins
    # torch's, cuDNN's and rubiks_shift's (Inductor's fused ones count as Triton)
    ("batch norm", r"^(?!triton).*(batch_norm|bn_|welford)"),
    ("shift (numba)", r"cudapy|numba|rubiks|gather|shift_grad"),
    ("triton (inductor)", r"^triton"),
    ("gemm / conv", r"gemm|nvjet|conv|cutlass|cudnn|xmma|implicit|dgrad|wgrad|nhwc|nchw|cublas"),
    ("reduce", r"reduce"),
    ("copy / cat", r"copy|cat_|CatArray|fill"),
    ("elementwise", r"elementwise|vectorized|unrolled"),
)


PROFILE_KERNELS = 12  # the kernels a profile keeps by default (--profile-kernels)


def profile_kernels(fn: Callable[[], object], iters: int, top: int = PROFILE_KERNELS) -> dict:
    """GPU kernel time per call by kind of kernel (torch.profiler over ``iters`` calls):
    where the device time goes, how many kernels a call issues, and the ``top`` kernels
    by time (0: every kernel)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    per_kernel: dict[str, list[float]] = {}
    count = 0
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA or ev.device_time <= 0:
            continue
        if "memcpy" in ev.name.lower() or "memset" in ev.name.lower():
            kind = "memcpy / memset"
        else:
            kind = next((k for k, pat in KERNEL_KINDS if re.search(pat, ev.name, re.I)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + ev.device_time
        entry = per_kernel.setdefault(ev.name[:90], [0.0, 0])
        entry[0] += ev.device_time
        entry[1] += 1
        count += 1
    total = sum(kinds.values())
    ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])
    ranked = ranked[:top] if top else ranked
    return {
        "kernels_per_call": round(count / iters, 1),
        "gpu_ms_per_call": round(total / iters / 1e3, 3),
        "by_kind_ms": {
            k: round(v / iters / 1e3, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])
        },
        "top_kernels": [
            {"name": n, "ms": round(t / iters / 1e3, 3), "calls": round(c / iters, 1)}
            for n, (t, c) in ranked
        ],
    }


def profile_host(fn: Callable[[], object], iters: int) -> dict:
    """Where the host's time goes (cProfile over ``iters`` calls, the device synchronised
    once at the end): the functions with the most time of their own, per call. cProfile's
    own cost per Python call is included, so the times read high; compare within a run."""
    import cProfile
    import pstats

    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    profiler.disable()
    wall = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, calls, tt, ct, callers)
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:15]
    return {
        "profiled_ms_per_call": round(wall / iters * 1e3, 3),
        "top_functions": [
            {
                "function": f"{Path(file).name}:{line}({name})",
                "calls": round(calls / iters, 1),
                "own_us_per_call": round(own / calls * 1e6, 2),
                "with_callees_us_per_call": round(cum / calls * 1e6, 2),
            }
            for (file, line, name), (_, calls, own, cum, _) in top
        ],
    }


def _autocast(dtype: str):
    if dtype == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_mode(name: str, mode: str, args, profile: int = 0) -> dict:
    """Build ``name``, set it up for ``mode`` and time it (``profile`` > 0: profile that
    many calls instead)."""
    from rubiks_models.cuda_graphs import GraphedInference, GraphedTrainStep

    kind, *rest = mode.split("_")
    variant, dtype = (rest[0], rest[1]) if len(rest) == 2 else ("eager", rest[0])
    model, trainable = build(name, args.classes, args.frames)
    if kind == "train" and not trainable:
        return {"skipped": "inference-only form"}
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(args.batch, args.frames, 3, args.size, args.size, device="cuda", generator=g)
    target = torch.randint(0, args.classes, (args.batch,), device="cuda", generator=g)
    result: dict = {}
    if variant == "cl":
        model = model.to(memory_format=torch.channels_last)
        flat = x.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        x = flat.unflatten(0, (args.batch, args.frames))
    if variant == "compile":
        model = torch.compile(model, mode=args.compile_mode, fullgraph=args.fullgraph)
    if kind == "infer":
        model.eval()
        if variant == "graph":
            dt = torch.bfloat16 if dtype == "bf16" else None
            with torch.inference_mode(False):
                start = time.perf_counter()
                runner = GraphedInference(model, x, autocast_dtype=dt, copy_output=False)
                result["setup_s"] = round(time.perf_counter() - start, 2)
            fn = lambda: runner(x)
        else:

            def fn():
                with torch.inference_mode(), _autocast(dtype):
                    return model(x)

            start = time.perf_counter()
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            result["setup_s"] = round(time.perf_counter() - start, 2)
        return _measure_with_memory(fn, args, profile, result)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    if variant == "graph":
        dt = torch.bfloat16 if dtype == "bf16" else None
        start = time.perf_counter()
        runner = GraphedTrainStep(model, opt, F.cross_entropy, x, target, autocast_dtype=dt)
        result["setup_s"] = round(time.perf_counter() - start, 2)
        fn = lambda: runner.step(x, target)
    else:

        def fn():
            opt.zero_grad(set_to_none=True)
            with _autocast(dtype):
                loss = F.cross_entropy(model(x), target)
            loss.backward()
            opt.step()

        start = time.perf_counter()
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        result["setup_s"] = round(time.perf_counter() - start, 2)
    return _measure_with_memory(fn, args, profile, result)


def _measure_with_memory(fn, args, profile: int, result: dict) -> dict:
    """``_measure``, and where not profiling the peak memory of the timed calls (set-up
    and warm-up done): allocated, reserved, and reserved by pool."""
    if not profile:
        torch.cuda.reset_peak_memory_stats()
    result = _measure(fn, args, profile, result)
    if not profile:
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        # what the allocator holds: CUDA graphs keep memory that is free between replays
        result["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        result["reserved_by_pool"] = reserved_by_pool(
            torch.cuda.memory_snapshot(), torch.cuda.current_stream().cuda_stream
        )
    return result


def reserved_by_pool(segments: list[dict], stream: int) -> dict:
    """What the allocator holds after a run, by where it can be reused: the default pool
    on the timed loop's ``stream``, the default pool on other streams (reused only by
    work on those), and CUDA graphs' private pools. GiB reserved and allocated in each,
    from ``torch.cuda.memory_snapshot()``'s segments."""
    held: dict[str, dict[str, float]] = {}
    for seg in segments:
        if tuple(seg.get("segment_pool_id", (0, 0))) != (0, 0):
            where = "CUDA graph pools"
        elif seg["stream"] == stream:
            where = "default pool, this stream"
        else:
            where = "default pool, other streams"
        entry = held.setdefault(where, {"reserved_gib": 0.0, "allocated_gib": 0.0})
        entry["reserved_gib"] += seg["total_size"] / 2**30
        entry["allocated_gib"] += seg["allocated_size"] / 2**30
    return {w: {k: round(v, 3) for k, v in e.items()} for w, e in sorted(held.items())}


def _measure(fn: Callable[[], object], args, profile: int, result: dict) -> dict:
    if profile:
        if getattr(args, "profile_host", False):
            result["profile"] = profile_host(fn, profile)
        else:
            top = getattr(args, "profile_kernels", PROFILE_KERNELS)
            result["profile"] = profile_kernels(fn, profile, top)
    else:
        result["ms"] = time_loop(fn, args.iters, args.repeats)
        result["host_ms"] = round(issue_time(fn, args.iters), 3)
    return result


# ---------------------------------------------------------------------------- report


def host_info() -> dict:
    """The host the figures ran on: its CPU, the CPUs this process may use, and the load
    averages (1, 5, 15 min) at the start (host-bound figures follow the host)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_start": _load_averages(),
    }


def _load_averages() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def add_round(model_results: dict, mode: str, r: dict) -> None:
    """Record one round's result ``r`` of ``mode``: the first as it is; a later timed one
    adds its figures to ``rounds`` / ``host_rounds`` (which start with the first round's),
    ``ms`` and ``host_ms`` becoming their medians (``peak_gib`` and ``reserved_gib`` the
    largest, ``reserved_by_pool`` the first round's); a later failed or skipped one is
    kept under ``round_errors`` beside the earlier figures."""
    entry = model_results.get(mode)
    if entry is None:
        model_results[mode] = dict(r)
        return
    if "ms" not in r:
        entry.setdefault("round_errors", []).append(r.get("error") or r.get("skipped"))
        return
    if "ms" not in entry:  # the first timed round, after failed or skipped ones
        errors = [*entry.get("round_errors", ()), entry.get("error") or entry.get("skipped")]
        model_results[mode] = dict(r, round_errors=errors)
        return
    entry.setdefault("rounds", [entry["ms"]]).append(r["ms"])
    entry["ms"] = statistics.median(entry["rounds"])
    if "host_ms" in r and "host_ms" in entry:
        entry.setdefault("host_rounds", [entry["host_ms"]]).append(r["host_ms"])
        entry["host_ms"] = statistics.median(entry["host_rounds"])
    for key in ("peak_gib", "reserved_gib"):
        if key in r:
            entry[key] = max(entry.get(key, 0), r[key])


def table(results: dict, models: list[str], modes: list[str]) -> str:
    lines = ["| mode | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for mode in modes:
        base = results.get("tsm_r50", {}).get(mode, {}).get("ms")
        cells = []
        for name in models:
            r = results.get(name, {}).get(mode, {})
            if "ms" in r:
                cell = f"{r['ms']:.2f}"
                if len(r.get("rounds", ())) > 1:
                    cell += f" [{min(r['rounds']):.2f}-{max(r['rounds']):.2f}]"
                if base and name != "tsm_r50":
                    cell += f" ({r['ms'] / base:.2f}x)"
                if "host_ms" in r:
                    cell += f", host {r['host_ms']:.2f}"
                if "peak_gib" in r:
                    cell += f", {r['peak_gib']} GiB"
                if "reserved_gib" in r:
                    cell += f" (reserved {r['reserved_gib']})"
            elif "error" in r:
                cell = "error"
            else:
                cell = "-"
            cells.append(cell)
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: str, payload: dict) -> None:
    from rubiks_models.io import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=1)))


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CLIP_ARGUMENTS = ("batch", "frames", "size", "classes")


def add_clip_arguments(p: argparse.ArgumentParser) -> None:
    """The batch every benchmark here runs: ``--batch`` clips of ``--frames`` frames of
    ``--size``² pixels, ``--classes`` classes (check them with ``check_positive``)."""
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=174)


def check_positive(p: argparse.ArgumentParser, args, names: tuple[str, ...]) -> None:
    """Stop with a usage error unless every option in ``names`` is >= 1."""
    for n in names:
        if getattr(args, n) < 1:
            p.error(f"--{n} must be >= 1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--modes", nargs="+", default=[m for m in MODES if "compile" not in m])
    add_clip_arguments(p)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--rounds", type=int, default=1,
        help="time every (model, mode) once per round, round after round; report the "
        "median of the rounds and their range",
    )  # fmt: skip
    p.add_argument(
        "--compile-mode", default=None, choices=COMPILE_MODES,
        help="torch.compile mode of the *_compile_* modes (default: torch's default)",
    )  # fmt: skip
    p.add_argument(
        "--fullgraph", action="store_true",
        help="torch.compile(fullgraph=True): a graph break is an error instead",
    )  # fmt: skip
    p.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="also profile N calls of each run, after all timings: GPU time per kind of "
        "kernel",
    )  # fmt: skip
    p.add_argument(
        "--profile-kernels", type=int, default=PROFILE_KERNELS, metavar="K",
        help="with --profile N: keep the K kernels with the most time (0: every kernel)",
    )  # fmt: skip
    p.add_argument(
        "--profile-host", action="store_true",
        help="with --profile N: profile the host instead (cProfile over N calls: the "
        "Python functions with the most time of their own, per call)",
    )  # fmt: skip
    p.add_argument(
        "--inductor", action="append", default=[], metavar="KEY=VALUE",
        help="set torch._inductor.config.KEY (a Python literal) for every compiled run, "
        "e.g. layout_optimization=False; repeatable",
    )  # fmt: skip
    p.add_argument(
        "--compile-ops", choices=("default", "registered", "all-torch"), default="default",
        help="how compiled code runs the inference ops of a ':fused:traced' model: "
        "'default' keeps rubiks_shift.COMPILE_AS_TORCH as it is (the default), "
        "'registered' calls every registered op, 'all-torch' traces every op as plain torch",
    )  # fmt: skip
    p.add_argument(
        "--matmul-precision", choices=("highest", "high", "medium"), default=None,
        help="torch.set_float32_matmul_precision for every run ('high': float32 matrix "
        "products may use TF32, as cuDNN's convolutions do by default)",
    )  # fmt: skip
    p.add_argument("--budget", type=float, default=0, help="stop starting new runs after S s")
    p.add_argument("--json", help="write the results here (atomically)")
    args = p.parse_args(argv)
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    check_positive(p, args, (*CLIP_ARGUMENTS, "iters", "repeats", "rounds"))
    if args.profile_host and not args.profile:
        p.error("--profile-host needs --profile N (the calls to profile)")
    if args.profile_kernels < 0:
        p.error("--profile-kernels must be >= 0 (0: every kernel)")
    if args.json and not Path(args.json).parent.is_dir():
        p.error(f"--json: folder {Path(args.json).parent} does not exist")
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)
    inductor = {}
    for item in args.inductor:
        key, sep, value = item.partition("=")
        if not sep or not hasattr(torch._inductor.config, key):
            p.error(f"--inductor: expected KEY=VALUE, KEY in torch._inductor.config; got {item!r}")
        try:
            inductor[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            p.error(f"--inductor {key}: {value!r} is not a Python literal")
        setattr(torch._inductor.config, key, inductor[key])
    from rubiks_shift import COMPILE_AS_TORCH

    if args.compile_ops != "default":
        for op in COMPILE_AS_TORCH:
            COMPILE_AS_TORCH[op] = args.compile_ops == "all-torch"
    info = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "compile": {
            "mode": args.compile_mode or "default",
            "fullgraph": args.fullgraph,
            "inductor": inductor,
            "ops": args.compile_ops,
        },
        "shape": [args.batch, args.frames, 3, args.size, args.size],
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "host": host_info(),
    }
    print(json.dumps(info), flush=True)
    results: dict = {}
    started = time.perf_counter()
    # Every timing runs before any profile: once torch.profiler has traced CUDA, Kineto
    # may keep CUPTI attached and the process's kernel launches cost more host time
    # (BENCHMARKS.md, *Method*), which would slow the host-bound figures after it.
    # --rounds > 1: every (model, mode) is built and timed once per round, round after
    # round, so that a drift of the host's speed spreads over all of them alike
    passes = [0] * args.rounds + ([args.profile] if args.profile else [])
    for profile in passes:
        for mode in args.modes:
            for name in args.models:
                if profile and "ms" not in results.get(name, {}).get(mode, {}):
                    continue  # skipped or failed when timed
                if args.budget and time.perf_counter() - started > args.budget:
                    if profile:
                        results[name][mode]["profile"] = {"skipped": "budget"}
                    else:
                        add_round(results.setdefault(name, {}), mode, {"skipped": "budget"})
                    continue
                try:
                    r = run_mode(name, mode, args, profile)
                except Exception as exc:  # one failing run must not lose the others
                    r = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                torch.cuda.empty_cache()
                torch._dynamo.reset()
                if profile:
                    results[name][mode]["profile"] = r.get("profile", r)
                    print(f"{mode:<20} {name:<32} profile", flush=True)
                    print(json.dumps(r.get("profile", r), indent=1), flush=True)
                else:
                    add_round(results.setdefault(name, {}), mode, r)
                    print(f"{mode:<20} {name:<32} {r}", flush=True)
                if args.json:  # after every run: a call cut short keeps what it measured
                    write_json(args.json, {"info": info, "results": results})
    print(table(results, args.models, args.modes))
    # the host's load at the end beside the start's: host-bound figures follow it
    info["host"]["load_end"] = _load_averages()
    print(json.dumps({"host": info["host"]}), flush=True)
    if args.json:
        write_json(args.json, {"info": info, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
