"""How fast can the frame walk's access pattern go? Synthetic kernels, no shift.

Each kernel has the frame walk's organisation (a thread = a band of R rows of one column
group through all frames of one (sample, channel); per source frame one pass loads R + 1
rows, and the frame between two passes is stored) but no shift or weights: an aligned
source, the output the sum of two consecutive rows of two consecutive frames. It varies
the columns per lane (V = 1, 2 or 4: 4, 8 or 16-byte loads and stores) and R, so the
measurement says whether wider accesses would lift the frame walk, whose shifted loads
are 4 bytes per lane. Every kernel's output is checked against torch. Times are by
CUDA-graph replay, against a copy of the same bytes in the same run.

With --shifts it then times the op's forward (the frame walk) at the same shape for
shift patterns that switch its parts on one by one (integer shifts: one column slot,
one frame, one row; a fraction along W: two slots; along H or T: two rows or frames), so
the gap between the probe and the op can be split by cause.

    python benchmarks/access_probe.py [--shape 8 8 72 56 56] [--shifts]
"""

from __future__ import annotations

import argparse
import types

import torch
from bench_shift import _gpu_time, same_size_bandwidth  # this folder (run as a script)
from numba import cuda
from numba import types as nt
from numba.cuda.extending import intrinsic

from rubiks_shift import _cuda
from rubiks_shift._cuda_kernels import kernel_decorator, ldg, offset

f32 = nt.float32
i32 = nt.int32


def _vector_access(width: int):
    """(load, store) of ``width`` consecutive float32 as one ld.global.nc.v / st.global.v
    (the address must be aligned to 4 * width bytes)."""
    regs = ", ".join(f"${i}" for i in range(width))

    @intrinsic
    def vload(typingctx, ptr, index):
        def codegen(context, builder, sig, args):
            from llvmlite import ir

            address = builder.ptrtoint(builder.gep(args[0], [args[1]]), ir.IntType(64))
            struct = ir.LiteralStructType([ir.FloatType()] * width)
            fn = ir.FunctionType(struct, [ir.IntType(64)])
            text = f"ld.global.nc.v{width}.f32 {{{regs}}}, [${width}];"
            value = builder.asm(fn, text, ",".join(["=f"] * width + ["l"]), [address], False)
            items = [builder.extract_value(value, i) for i in range(width)]
            return context.make_tuple(builder, sig.return_type, items)

        return nt.UniTuple(f32, width)(ptr, index), codegen

    @intrinsic
    def vstore(typingctx, ptr, index, values):
        def codegen(context, builder, sig, args):
            from llvmlite import ir

            address = builder.ptrtoint(builder.gep(args[0], [args[1]]), ir.IntType(64))
            items = [builder.extract_value(args[2], i) for i in range(width)]
            fn = ir.FunctionType(ir.VoidType(), [ir.IntType(64)] + [ir.FloatType()] * width)
            values = ", ".join(f"${i + 1}" for i in range(width))
            text = f"st.global.v{width}.f32 [$0], {{{values}}};"
            builder.asm(fn, text, ",".join(["l"] + ["f"] * width), [address, *items], True)
            return context.get_dummy_value()

        return nt.void(ptr, index, values), codegen

    return vload, vstore


def build_probe(width: int, rows: int, registers: int | None):
    """The synthetic frame walk with ``width`` columns per lane and ``rows`` rows per
    band: dst[n, t, c, h, w] = src rows h and h + 1 of frames t and t + 1 (the last frame
    and row reading the next one inside the tensor, or frame / row 0 again at its end)."""
    R, V = rows, width
    if V == 1:

        @cuda.jit(device=True, inline="always")
        def load_row(p, out, j):
            out[j] = ldg(p, 0)

        @cuda.jit(device=True, inline="always")
        def store_row(p, values, k):
            p[0] = values[k]

    else:
        vload, vstore = _vector_access(V)

        @cuda.jit(device=True, inline="always")
        def load_row(p, out, j):
            vals = vload(p, 0)
            for v in range(V):
                out[j * V + v] = vals[v]

        if V == 2:

            @cuda.jit(device=True, inline="always")
            def store_row(p, values, k):
                vstore(p, 0, (values[k * 2], values[k * 2 + 1]))

        else:

            @cuda.jit(device=True, inline="always")
            def store_row(p, values, k):
                i = k * 4
                vstore(p, 0, (values[i], values[i + 1], values[i + 2], values[i + 3]))

    ROW = (R + 1) * V
    OUT = R * V

    @kernel_decorator(registers)
    def probe(src, dst, tasks, C, T, H, W):
        g = i32(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x)
        if g >= tasks:
            return
        groups = W // V
        bands = H // R
        wg = g % groups
        r = g // groups
        band = r % bands
        r = r // bands
        c = r % C
        n = r // C
        plane = H * W
        frame = C * plane
        raw = cuda.local.array(ROW, f32)
        prev = cuda.local.array(OUT, f32)
        cur = cuda.local.array(OUT, f32)
        base = (n * T * C + c) * plane + band * R * W + wg * V
        for t in range(T + 1):
            ts = t if t < T else 0
            p = offset(src, base + ts * frame)
            for j in range(R + 1):
                hs = band * R + j
                load_row(offset(p, (j if hs < H else -band * R) * W), raw, j)
            for k in range(OUT):
                cur[k] = raw[k] + raw[k + V]
            if t > 0:
                q = offset(dst, base + (t - 1) * frame)
                for k in range(R):
                    for v in range(V):
                        prev[k * V + v] = prev[k * V + v] + cur[k * V + v]
                    store_row(offset(q, k * W), prev, k)
            for k in range(OUT):
                prev[k] = cur[k]

    return probe


def expected(x: torch.Tensor) -> torch.Tensor:
    """What the probe computes, in torch."""

    def rows(a: torch.Tensor) -> torch.Tensor:
        return a + torch.roll(a, -1, -2)

    return rows(x) + rows(torch.roll(x, -1, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=5, default=[8, 8, 72, 56, 56])
    parser.add_argument("--shifts", action="store_true", help="the op over shift patterns")
    args = parser.parse_args()
    shape = tuple(args.shape)
    n, t, c, h, w = shape
    device = torch.cuda.current_device()
    g = torch.Generator(device="cuda").manual_seed(0)
    xs = [torch.randn(shape, device="cuda", generator=g) for _ in range(3)]
    nbytes = 2 * xs[0].numel() * 4
    floor_ms = nbytes / same_size_bandwidth("cuda", _gpu_time, 20, nbytes // 2) * 1e3
    print(f"# {torch.cuda.get_device_name()}, {shape} float32; same-size copy {floor_ms:.4f} ms")
    print("V | R | registers | threads | ms | % of same-size copy")
    sig = (nt.CPointer(f32), nt.CPointer(f32), nt.int64, nt.int64, nt.int64, nt.int64, nt.int64)
    want = expected(xs[0])
    for width, rows, registers in [
        (1, 8, 64),
        (2, 8, 96),
        (2, 4, 64),
        (4, 4, 96),
        (4, 2, 64),
        (4, 8, 128),
    ]:
        if h % rows or w % width:
            continue
        kernel = build_probe(width, rows, registers)
        ns = types.SimpleNamespace(storage="float32", shift_storage="float32", probe=kernel)
        ns.probe_sig = sig
        tasks = n * c * (h // rows) * (w // width)
        step = _cuda.Step("probe", (-(-tasks // 256), 1, 1), (256, 1, 1), (tasks, c, t, h, w))
        dst = torch.full(shape, float("nan"), device="cuda")
        _cuda._run(ns, step, (xs[0], dst), device)
        torch.testing.assert_close(dst, want, rtol=1e-5, atol=1e-5)
        ms, _ = _gpu_time([lambda a=(ns, step, (x, dst)): _cuda._run(*a, device) for x in xs], 20)
        used = kernel.overloads[tuple(sig)].regs_per_thread
        print(f"{width} | {rows} | {used} | {tasks} | {ms:.4f} | {100 * floor_ms / ms:.1f}%")
    if args.shifts:
        time_shift_patterns(xs, floor_ms)


# (t, h, w) shift of every channel; "random": uniform in [-2, 2) per channel and axis
SHIFT_PATTERNS = [
    ("zero", (0.0, 0.0, 0.0)),
    ("w integer 1", (0.0, 0.0, 1.0)),
    ("w 0.5", (0.0, 0.0, 0.5)),
    ("h 0.5", (0.0, 0.5, 0.0)),
    ("t 0.5", (0.5, 0.0, 0.0)),
    ("all 0.5", (0.5, 0.5, 0.5)),
    ("all 1.5", (1.5, 1.5, 1.5)),
    ("random", None),
]


def time_shift_patterns(xs, floor_ms: float) -> None:
    """The op's forward over SHIFT_PATTERNS, against the same-size copy."""
    channels = xs[0].shape[2]
    g = torch.Generator(device="cuda").manual_seed(1)
    print("shift | ms | % of same-size copy")
    for name, value in SHIFT_PATTERNS:
        if value is None:
            shift = torch.rand(3, channels, device="cuda", generator=g) * 4 - 2
        else:
            shift = torch.tensor(value, device="cuda")[:, None].expand(3, channels).contiguous()
        fns = [lambda x=x, s=shift: _cuda.forward(x, s, (1, 1, 1), (0, 0, 0), False) for x in xs]
        ms, _ = _gpu_time(fns, 20)
        print(f"{name} | {ms:.4f} | {100 * floor_ms / ms:.1f}%")


if __name__ == "__main__":
    main()
