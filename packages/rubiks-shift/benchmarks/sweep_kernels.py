"""Sweep the CUDA kernels' tuning knobs on one GPU (kernel time by CUDA-graph replay).

For each benchmark shape it times the gather kernels (forward and adjoint): the row walk
in its default layout (without --quick also both task orders x grid caps, waves of
resident blocks, 0 = one thread per task, over rows per task) and the frame walk in its
default layout, over frames per task, FRAME_VARIANTS (row bound, register cap) and
FRAME_BLOCKS (block size), with --baseline an earlier _cuda_gather.py's frame walk beside
it; and the shift-gradient kernel over its row group, register cap, rows per task and
blocks per channel, each against a device-to-device copy of the same bytes measured in
the same run. Each variant is a ``dataclasses.replace`` of the default ``Tuning``: its
kernels are built from it (compiled in this process, not cached) and its launches
planned with it. Every variant's output is checked against the row walk's default layout before it
is timed (bit for bit for the same kernel, to 1e-5 of the largest output, 2e-2 in 16-bit
types, for the other walk).

    python benchmarks/sweep_kernels.py [--json out.json] [--quick] [--gather-only]
        [--dtype bfloat16] [--quantize] [--baseline old_cuda_gather.py]
"""

from __future__ import annotations

import argparse
import itertools
import types
from dataclasses import replace

import torch
from bench_shift import _gpu_time, copy_bandwidth, write_json  # this folder (a script)

from rubiks_shift import _cuda_launch, _cuda_plan
from rubiks_shift._checks import output_shape
from rubiks_shift._cuda_gather import gather_signature
from rubiks_shift._cuda_kernels import Kernels
from rubiks_shift._cuda_tuning import TUNING, Tuning

SHAPES = [
    ((8, 8, 72, 56, 56), (1, 1, 1)),
    ((16, 8, 256, 56, 56), (1, 1, 1)),
    ((8, 8, 576, 7, 7), (1, 1, 1)),
    ((8, 8, 72, 112, 112), (1, 2, 2)),
]


def graph_ms(fns, reps: int = 20) -> float:
    """ms per call of ``fns`` (rotated input sets), by CUDA-graph replay (bench_shift's
    timer)."""
    return _gpu_time(fns, reps)[0]


def copy_tbps() -> float:
    """The device-to-device copy bandwidth of bench_shift (bytes read + written), TB/s."""
    return copy_bandwidth("cuda", _gpu_time, 20) / 1e12


_built: dict = {}


def kernels_for(storage: str, tuning: Tuning = TUNING) -> Kernels:
    """The kernels of ``storage`` (float32 shifts) built with ``tuning``'s compile-time
    values, for ``_cuda_launch.run``: one set per distinct values, so variants that differ
    in their launches only share compiled kernels."""
    key = (storage, tuple(tuning.kernel_values().items()))
    if key not in _built:
        _built[key] = Kernels(storage, "float32", tuning)
    return _built[key]


def baseline_set(storage: str, module, tuning: Tuning = TUNING):
    """The frame walk of an earlier ``_cuda_gather.py`` (``load_baseline``; its
    ``build_gather`` called as this version's is) as a kernel namespace for
    ``_cuda_launch.run``."""
    kernel = module.build_gather(
        storage,
        "float32",
        registers=tuning.frame_walk_registers,
        frame_rows=tuning.frame_walk_rows,
        frames=True,
    )
    return types.SimpleNamespace(
        storage=storage,
        shift_storage="float32",
        gather_frames=kernel,
        gather_frames_sig=gather_signature(storage, "float32", frames=True),
    )


# frame-walk variants the sweep builds beside the default: (rows bound R, register cap)
FRAME_VARIANTS = [(8, 56), (8, 64), (12, 72), (16, 80)]
# and the frame walk at another block size than the default (its kernel as built with the
# cap, the launch only): (register cap, threads per block)
FRAME_BLOCKS = [(72, 256), (64, 256)]
# the gathers' walks (a quantized shift at stride 1 would otherwise take the quantized
# pass, which is not a gather)
GATHERS = replace(TUNING, integer_shift=False)
ROWS = replace(GATHERS, stride_one_walk="rows")  # the row walk at every stride


def load_baseline(path: str):
    """An earlier ``_cuda_gather.py`` (say from git history) as a module inside the
    package, so that its kernels are timed beside the current ones in the same run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rubiks_shift._cuda_gather_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gather_variants(quick: bool, storage: str = "float32", baseline=None):
    """(name, kernels, tuning, rows per task to try, frame split) for ``storage`` tensors:
    the row walk in its default layout and the two task orders x grid caps (not quick),
    the frame walk in its default layout, over frames per task (the task's frames split
    in 2 or 3) and FRAME_VARIANTS, and the ``baseline`` module's frame walk."""
    yield "rows-auto", kernels_for(storage, ROWS), ROWS, None, None
    if not quick:
        for order, waves in itertools.product(("frames", "planes"), (0, 1)):
            tuning = replace(ROWS, row_walk_order=order, row_walk_waves=waves)
            yield f"rows-{order}-w{waves}", kernels_for(storage, tuning), tuning, "rows", None
    yield "frames-auto", kernels_for(storage), GATHERS, None, None
    if baseline is not None:
        yield "baseline-frames-auto", baseline_set(storage, baseline), GATHERS, None, None
    for split in (2,) if quick else (2, 3):
        yield f"frames-auto-f/{split}", kernels_for(storage), GATHERS, None, split
    for bound, reg in FRAME_VARIANTS:
        tuning = replace(GATHERS, frame_walk_rows=bound, frame_walk_registers=reg)
        yield f"frames-R{bound}r{reg}", kernels_for(storage, tuning), tuning, (bound,), None
    for reg, threads in FRAME_BLOCKS:
        tuning = replace(GATHERS, frame_walk_registers=reg, frame_walk_threads=threads)
        yield f"frames-r{reg}-b{threads}", kernels_for(storage, tuning), tuning, None, None


def gs_variants(quick: bool):
    """(name, tuning, kernels) of the shift-gradient variants: row group x register cap."""
    groups = [4] if quick else [4, 8]
    regs = [64] if quick else [64, 96]
    for group, reg in itertools.product(groups, regs):
        tuning = replace(TUNING, grad_shift_group=group, grad_shift_registers=reg)
        yield f"g{group}r{reg}", tuning, kernels_for("float32", tuning)


def row_options(h: int, group: int) -> list[int]:
    return sorted({min(h, group), min(h, 2 * group), min(h, 3 * group), h})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gather-only", action="store_true", help="skip the shift gradient")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"]
    )
    parser.add_argument("--quantize", action="store_true", help="the quantized gather")
    parser.add_argument(
        "--baseline", help="an earlier _cuda_gather.py whose frame walk is timed beside"
    )
    args = parser.parse_args()
    storage, quantize = args.dtype, args.quantize
    dtype = getattr(torch, storage)
    if (storage != "float32" or quantize) and not args.gather_only:
        parser.error("--dtype other than float32 and --quantize need --gather-only")
    tbps = copy_tbps()
    print(
        f"# {torch.cuda.get_device_name()}, copy {tbps:.3f} TB/s (read + write); gather "
        f"{storage}{' quantized' if quantize else ''}"
    )
    device = torch.cuda.current_device()
    defaults = _cuda_launch.kernel_set(storage, "float32")
    results = []
    baseline = load_baseline(args.baseline) if args.baseline else None
    gvars = list(gather_variants(args.quick, storage, baseline))
    svars = list(gs_variants(args.quick))
    for shape, stride in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)
        xs = [torch.randn(shape, device="cuda", generator=g).to(dtype) for _ in range(3)]
        shift = (torch.rand(3, shape[2], device="cuda", generator=g) * 4 - 2).contiguous()
        y_shape = output_shape(shape, stride, (0, 0, 0))
        gys = [torch.randn(y_shape, device="cuda", generator=g).to(dtype) for _ in range(3)]
        bytes_x = xs[0].numel() * xs[0].element_size()
        bytes_y = gys[0].numel() * gys[0].element_size()
        for direction, src_shape, dst_shape, srcs in (
            ("fwd", shape, y_shape, xs),
            ("adj", y_shape, shape, gys),
        ):
            dst = torch.empty(dst_shape, device="cuda", dtype=dtype)
            adjoint = direction == "adj"
            shapes = (src_shape, dst_shape, stride, (0, 0, 0), quantize, adjoint, storage)
            (ref_step,) = _cuda_plan.gather_plan(*shapes, ROWS)
            ref = torch.empty(dst_shape, device="cuda", dtype=dtype)
            _cuda_launch.run(defaults, ref_step, (srcs[0], shift, ref), device)
            floor = (bytes_x + bytes_y) / (tbps * 1e12) * 1e3
            for name, ns, tuning, row_set, split in gvars:
                frame_walk = tuning.stride_one_walk == "frames"
                if frame_walk and not _cuda_plan.frames_walk_applies(src_shape, stride):
                    continue
                if row_set is None:
                    row_set = [None]
                elif row_set == "rows":
                    row_set = row_options(dst_shape[3], tuning.row_walk_group)
                else:
                    row_set = sorted({min(dst_shape[3], r) for r in row_set})
                frames = -(-dst_shape[1] // split) if split else None
                for rows in row_set:
                    (step,) = _cuda_plan.gather_plan(*shapes, tuning, rows, frames)
                    dst.fill_(float("nan"))
                    _cuda_launch.run(ns, step, (srcs[0], shift, dst), device)
                    if step.name == ref_step.name:
                        # the layout decides which thread computes an output, not how:
                        # the default kernel's bits
                        assert torch.equal(dst, ref), (name, rows, (dst - ref).abs().max())
                    else:  # the other walk sums in another order
                        tol = 1e-5 if storage == "float32" else 2e-2
                        err = float(((dst.double() - ref.double()).abs()).max())
                        scale = float(ref.double().abs().max())
                        assert err <= tol * scale, (name, rows, err, scale)
                    ms = graph_ms(
                        [
                            lambda a=(ns, step, (s, shift, dst)): _cuda_launch.run(*a, device)
                            for s in srcs
                        ]
                    )
                    results.append(
                        dict(
                            shape=shape,
                            stride=stride,
                            kernel=f"gather-{direction}",
                            dtype=storage,
                            quantize=quantize,
                            waves=step.waves,
                            variant=name,
                            rows=step.scalars.rows,
                            frames=getattr(step.scalars, "frames_per_task", None),
                            ms=ms,
                            floor_ms=floor,
                        )
                    )
        if args.gather_only:
            continue
        # shift gradient: reads grad_y and x
        gs_shapes = (shape, y_shape, stride, (0, 0, 0), True, 1.0)
        parts0, step0, _ = _cuda_plan.shift_grad_plan(*gs_shapes)
        partial0 = torch.empty(parts0 * 3 * shape[2], device="cuda")
        _cuda_launch.run(defaults, step0, (gys[0], xs[0], shift, partial0), device)
        ref = partial0.view(parts0, 3, shape[2]).sum(0)
        floor = (bytes_x + bytes_y) / (tbps * 1e12) * 1e3
        for name, tuning, ns in svars:
            group = tuning.grad_shift_group
            for rows, per_thread in itertools.product(row_options(y_shape[3], group), (1, 2)):
                variant = replace(tuning, grad_shift_tasks_per_thread=per_thread)
                parts, step, _ = _cuda_plan.shift_grad_plan(*gs_shapes, variant, rows)
                blocks = parts
                partial = torch.empty(parts * 3 * shape[2], device="cuda")
                _cuda_launch.run(ns, step, (gys[0], xs[0], shift, partial), device)
                got = partial.view(parts, 3, shape[2]).sum(0)
                assert torch.allclose(got, ref, rtol=1e-3, atol=1e-2), (name, rows, per_thread)
                ms = graph_ms(
                    [
                        lambda a=(ns, step, (gys[i], xs[i], shift, partial)): _cuda_launch.run(
                            *a, device
                        )
                        for i in range(3)
                    ]
                )
                results.append(
                    dict(
                        shape=shape,
                        stride=stride,
                        kernel="grad_shift",
                        variant=name,
                        rows=rows,
                        blocks=blocks,
                        ms=ms,
                        floor_ms=floor,
                    )
                )
    for key, rows in itertools.groupby(
        results, key=lambda r: (tuple(r["shape"]), tuple(r["stride"]), r["kernel"])
    ):
        rows = sorted(rows, key=lambda r: r["ms"])
        best = rows[0]
        print(
            f"{key[0]!s:<20} {key[1]!s:<9} {key[2]:<12} best {best['ms']:.4f} ms "
            f"({100 * best['floor_ms'] / best['ms']:.0f}% of floor {best['floor_ms']:.4f}) "
            f"{best['variant']} rows={best['rows']} frames={best.get('frames', '-')} "
            f"blocks={best.get('blocks', '-')}"
        )
        shown = {best["variant"]}
        for r in rows[1:]:  # each other variant at its best rows per task
            if r["variant"] in shown:
                continue
            shown.add(r["variant"])
            print(
                f"{'':<44} {r['ms']:.4f} ms {r['variant']} rows={r['rows']} "
                f"frames={r.get('frames', '-')} blocks={r.get('blocks', '-')}"
            )
    seen = set()
    for name, ns, *_ in gvars:  # registers and spills of each compiled kernel
        for kname in ("gather", "gather_frames"):
            kernel = getattr(ns, kname, None)
            if kernel is None or id(kernel) in seen or not kernel.overloads:
                continue
            seen.add(id(kernel))
            regs = kernel.get_regs_per_thread()  # {signature: count}, one signature here
            local = kernel.get_local_mem_per_thread()
            regs, local = list(regs.values()), list(local.values())
            print(f"# {name}: {kname} {regs} registers, {local} bytes of local memory per thread")
    if args.json:
        gpu = torch.cuda.get_device_name()
        write_json(args.json, dict(device=gpu, copy_tbps=tbps, rows=results))


if __name__ == "__main__":
    main()
