"""RubiksShift timing against the memory floor measured in the same run.

Prints one table: shape, direction, dtype, time, floor, % of floor, reference time
(docs/spec.md §5, the original CUDA extension on an H100) where known, and host time per eager
call on a tiny tensor. On a CUDA machine it times the GPU kernels with CUDA events; on a
CPU-only machine it times the Numba CPU kernels against a same-size memcpy.

    python benchmarks/bench_shift.py [--device cuda|cpu] [--json out.json] [--quick]
        [--host-only]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import torch

import rubiks_shift
from rubiks_shift import rubiks_shift3d

# (shape, stride, reference fwd ms, reference fwd+bwd ms) from docs/spec.md §5
GPU_CASES = [
    ((8, 8, 72, 56, 56), (1, 1, 1), 0.166, 0.536),
    ((16, 8, 256, 56, 56), (1, 1, 1), None, None),
    ((8, 8, 576, 7, 7), (1, 1, 1), 0.038, 0.249),
    ((8, 8, 72, 112, 112), (1, 2, 2), 0.203, 2.12),
]
CPU_CASES = [
    ((2, 8, 72, 56, 56), (1, 1, 1), None, None),
    ((2, 8, 576, 7, 7), (1, 1, 1), None, None),
    ((2, 8, 72, 112, 112), (1, 2, 2), None, None),
]


def _gpu_time(fns, reps: int) -> tuple[float, float]:
    """(kernel ms, eager ms) per call, cycling through ``fns`` (one per input set).

    Kernel time: the calls captured in a CUDA graph and replayed, so host overhead and
    launch gaps are excluded. Eager time: the same calls issued back to back from Python,
    CUDA events around the whole loop (host overhead shows when it exceeds GPU time).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            for fn in fns:
                fn()
    torch.cuda.current_stream().wait_stream(side)
    per_graph = 10
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(per_graph):
            for fn in fns:
                fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(5):
        start.record()
        for _ in range(max(1, reps // per_graph)):
            graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / (max(1, reps // per_graph) * per_graph * len(fns)))
    kernel_ms = statistics.median(samples)
    samples = []
    for _ in range(5):
        start.record()
        for _ in range(reps):
            for fn in fns:
                fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / (reps * len(fns)))
    return kernel_ms, statistics.median(samples)


def _cpu_time(fns, reps: int) -> tuple[float, float]:
    """(ms, ms) per call: on the CPU kernel and eager time are the same measurement.

    The best of ``4 * reps`` calls: on a small shared machine one busy core stalls a
    2-thread parallel region by a scheduler slice, so a median mixes in other jobs' load.
    """
    for fn in fns:
        fn()
    times = []
    for _ in range(4 * reps):
        for fn in fns:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    ms = min(times)
    return ms, ms


def copy_bandwidth(device: str, timer, reps: int) -> float:
    """Bytes read + written per second of a large device-to-device (or memcpy) copy."""
    numel = (1 << 28) if device == "cuda" else (1 << 25)
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    kernel_ms, eager_ms = timer([lambda: dst.copy_(src)], reps)
    ms = min(kernel_ms, eager_ms)  # the better of graph replay and back-to-back launches
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def write_json(path: str, data: dict, **kwargs) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file beside it, then a rename):
    a run cut short leaves the previous results or none, never half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_gpu_rows(path: str, rows: list[dict]) -> None:
    """Write a GPU benchmark's ``rows`` to ``path`` (atomically, ``write_json``) with the
    run's device, date, commit and torch version."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    meta = {
        "device": torch.cuda.get_device_name(),
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "torch": torch.__version__,
    }
    write_json(path, {"meta": meta, "rows": rows}, indent=1)


def block_sizes(
    parser: argparse.ArgumentParser, threads: list[int], first: int, least: int = 32
) -> list[int]:
    """A sweep's ``--threads``, each a power of two from ``least`` to 1024 (else
    ``parser.error``), with ``first`` (the default block size, every variant's reference)
    first and each size once."""
    bad = [t for t in threads if t < least or t > 1024 or t & (t - 1)]
    if bad:
        parser.error(f"--threads takes powers of two from {least} to 1024, got {bad}")
    return list(dict.fromkeys([first, *threads]))


def same_size_bandwidth(device: str, timer, reps: int, nbytes: int) -> float:
    """Bytes read + written per second of a device-to-device copy of ``nbytes`` (rotated
    over three buffers, as the op's inputs are): the floor at this size, where a copy's
    own ramp-up, tail and launch show."""
    numel = max(1, nbytes // 4)
    sets = 3 if device == "cuda" else 1
    srcs = [torch.randn(numel, device=device) for _ in range(sets)]
    dst = torch.empty_like(srcs[0])
    kernel_ms, eager_ms = timer([lambda s=s: dst.copy_(s) for s in srcs], reps)
    return 2 * numel * 4 / (min(kernel_ms, eager_ms) * 1e-3)


def single_call_us(
    forms: dict[str, Callable[[], object]],
    rounds: int,
    calls: int,
    pick: Callable[[list[float]], float] = statistics.median,
) -> dict[str, float]:
    """Microseconds of one call of each of ``forms`` (name -> function), each call timed
    alone (CPU calls, nothing to synchronise): per round, ``pick`` of the times of
    ``calls`` calls; the median over ``rounds`` rounds interleaving the forms."""
    samples: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(rounds):
        for name, fn in forms.items():
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            samples[name].append(pick(times) * 1e6)
    return {name: statistics.median(v) for name, v in samples.items()}


def best_us_per_call(
    items: dict, device: str, calls: int = 2000, rounds: int = 5, warmup: int = 100
) -> dict[str, float]:
    """Host microseconds per call of each of ``items`` (name -> function): the best of
    ``rounds`` interleaved rounds of ``calls`` calls, after ``warmup`` calls, with the
    device synchronised around each timed loop (one pass read 27.4 us with the clone at
    13.7 where, moments later, the rounds gave 14.9 and 8.4 on the same H200 machine,
    2026-12-01: host timings drift with neighbours)."""

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    best = dict.fromkeys(items, float("inf"))
    for _ in range(rounds):
        for name, fn in items.items():
            for _ in range(warmup):
                fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls * 1e6)
    return best


CHAIN = 16  # shift layers per backward call in the chained host measurement


class EmptyFunction(torch.autograd.Function):
    """The floor of any Python-level autograd op: saves its inputs, allocates its outputs
    and computes nothing."""

    @staticmethod
    def forward(ctx, x, shift):
        ctx.save_for_backward(x, shift)
        return torch.empty_like(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, shift = ctx.saved_tensors
        return torch.empty_like(x), torch.empty_like(shift)


def chain_backward(x: torch.Tensor, shifts: list, grad_y: torch.Tensor, layer) -> None:
    """``layer`` once per shift of ``shifts`` in a chain from ``x``, one backward: the
    engine's fixed cost of a backward call is shared by the layers (as in a model);
    gradients are set to None afterwards, as a training step's ``zero_grad`` does."""
    y = x
    for s in shifts:
        y = layer(y, s)
    y.backward(grad_y)
    for s in shifts:
        s.grad = None
    x.grad = None


def host_overhead_us(device: str) -> dict[str, float]:
    """Host microseconds per eager call on a tiny tensor (the kernels' work is negligible),
    best of 5 interleaved rounds (``best_us_per_call``): the forward, and forward +
    backward per layer of a chain of ``CHAIN`` layers with one backward call (as in a
    model), beside an empty autograd.Function in the same chain."""
    x = torch.randn(1, 2, 4, 4, 4, device=device)
    shift = torch.rand(3, 4, device=device)
    xg = x.clone().requires_grad_()
    gy = torch.ones_like(x)
    shifts = [torch.nn.Parameter(torch.rand(3, 4, device=device)) for _ in range(CHAIN)]

    chained = {
        f"rubiks_shift3d forward + backward, per layer of {CHAIN}": lambda: chain_backward(
            xg, shifts, gy, rubiks_shift3d
        ),
        f"floor: empty autograd.Function, per layer of {CHAIN}": lambda: chain_backward(
            xg, shifts, gy, EmptyFunction.apply
        ),
    }
    items = {
        "rubiks_shift3d forward": lambda: rubiks_shift3d(x, shift),
        "torch.ops.rubiks_shift.shift3d forward": lambda: torch.ops.rubiks_shift.shift3d(
            x, shift, [1, 1, 1], [0, 0, 0], False, True, 1.0
        ),
        "torch.clone (scale)": lambda: x.clone(),
    }
    best = best_us_per_call(items, device)
    for name, us in best_us_per_call(chained, device, calls=200, warmup=10).items():
        best[name] = us / CHAIN
    return best


def bench_case(device, shape, stride, dtype, timer, reps, bandwidth, quantize=False):
    g = torch.Generator(device=device).manual_seed(0)
    # Several input sets, rotated, so repeated calls do not run out of L2.
    sets = 3 if device == "cuda" else 1
    xs = [torch.randn(shape, device=device, generator=g).to(dtype) for _ in range(sets)]
    shift = torch.rand(3, shape[2], device=device, generator=g) * 4 - 2
    shift_p = torch.nn.Parameter(shift.clone())
    y = rubiks_shift3d(xs[0], shift, stride)
    gys = [torch.randn(y.shape, device=device, generator=g).to(dtype) for _ in range(sets)]
    xg = [x.clone().requires_grad_() for x in xs]
    fwd = [(lambda x=x: rubiks_shift3d(x, shift, stride, quantize=quantize)) for x in xs]

    def make_fwd_bwd(x, gy):
        def run():
            out = rubiks_shift3d(x, shift_p, stride, quantize=quantize)
            torch.autograd.grad(out, (x, shift_p), gy)

        return run

    fwd_bwd = [make_fwd_bwd(x, gy) for x, gy in zip(xg, gys, strict=True)]
    in_bytes = xs[0].numel() * xs[0].element_size()
    out_bytes = y.numel() * xs[0].element_size()
    rows = []
    same = same_size_bandwidth(device, timer, reps, (in_bytes + out_bytes) // 2)
    kernel_ms, eager_ms = timer(fwd, reps)
    fwd_bytes = in_bytes + out_bytes
    rows.append(
        (
            "fwd" + ("-quantize" if quantize else ""),
            kernel_ms,
            eager_ms,
            fwd_bytes / bandwidth * 1e3,
            fwd_bytes / same * 1e3,
        )
    )
    if not quantize:
        kernel_ms, eager_ms = timer(fwd_bwd, reps)
        # forward: read x, write y; backward: read grad_y and x, write grad_x
        fb_bytes = 3 * in_bytes + 2 * out_bytes
        rows.append(
            ("fwd+bwd", kernel_ms, eager_ms, fb_bytes / bandwidth * 1e3, fb_bytes / same * 1e3)
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write all figures to this file")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--host-only", action="store_true", help="only the host time per call (tiny tensors)"
    )
    args = parser.parse_args()
    device = args.device
    if args.host_only:
        for k, v in host_overhead_us(device).items():
            print(f"{k:<52} {v:8.1f} us")
        return
    cuda = device == "cuda"
    timer = _gpu_time if cuda else _cpu_time
    reps = (20 if args.quick else 100) if cuda else (3 if args.quick else 7)
    bandwidth = copy_bandwidth(device, timer, reps)
    name = (
        torch.cuda.get_device_name()
        if cuda
        else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()}"
    )
    print(
        f"# rubiks-shift {rubiks_shift.__version__}, torch {torch.__version__}, {name}, "
        f"{datetime.date.today().isoformat()}"
    )
    print(f"# copy bandwidth (read+write): {bandwidth / 1e12:.3f} TB/s")
    table = []
    cases = GPU_CASES if cuda else CPU_CASES
    dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    for shape, stride, ref_fwd, ref_fb in cases:
        for dtype in dtypes:
            for quantize in (False, True) if dtype == torch.float32 else (False,):
                for direction, ms, eager, floor, same_floor in bench_case(
                    device, shape, stride, dtype, timer, reps, bandwidth, quantize
                ):
                    ref = (
                        {"fwd": ref_fwd, "fwd+bwd": ref_fb}.get(direction)
                        if dtype == torch.float32
                        else None
                    )
                    table.append(
                        dict(
                            shape=shape,
                            stride=stride,
                            dtype=str(dtype).split(".")[1],
                            direction=direction,
                            ms=ms,
                            eager_ms=eager,
                            floor_ms=floor,
                            same_size_floor_ms=same_floor,
                            reference_ms=ref,
                        )
                    )
    overhead = host_overhead_us(device)
    header = (
        f"| {'shape':<22} | {'stride':<9} | {'dtype':<8} | {'direction':<12} | {'ms':>8} | "
        f"{'eager ms':>8} | {'floor ms':>8} | {'% floor':>7} | {'same-size floor':>15} | "
        f"{'% same-size':>11} | {'ref ms':>7} | {'vs ref':>6} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in table:
        pct = 100 * r["floor_ms"] / r["ms"]
        same = 100 * r["same_size_floor_ms"] / r["ms"]
        ref = f"{r['reference_ms']:.3f}" if r["reference_ms"] else "-"
        speed = f"{r['reference_ms'] / r['ms']:.2f}x" if r["reference_ms"] else "-"
        print(
            f"| {r['shape']!s:<22} | {r['stride']!s:<9} | {r['dtype']:<8} | {r['direction']:<12} | "
            f"{r['ms']:8.4f} | {r['eager_ms']:8.4f} | {r['floor_ms']:8.4f} | {pct:6.1f}% | "
            f"{r['same_size_floor_ms']:15.4f} | {same:10.1f}% | {ref:>7} | {speed:>6} |"
        )
    for k, v in overhead.items():
        print(f"# host time per eager call, tiny tensor, {k}: {v:.1f} us (best of 5)")
    if args.json:
        write_json(
            args.json,
            dict(
                device=name,
                date=datetime.date.today().isoformat(),
                bandwidth=bandwidth,
                rows=table,
                host_us=overhead,
            ),
            indent=1,
        )


if __name__ == "__main__":
    main()
