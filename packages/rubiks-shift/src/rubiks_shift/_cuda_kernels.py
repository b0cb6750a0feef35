"""Numba-CUDA kernels: shared device helpers, the shift gradient and its finalize.

(The gather kernel, forward and grad_x, lives in ``_cuda_gather``.) Tensors arrive as
raw pointers to C-contiguous data (one kernel parameter each, no array descriptor, no
negative-index wraparound code). Kernels are produced per storage dtype: values are
loaded into an accumulation type (float64 for float64 data, float32 otherwise) and
stored back in the storage type. bfloat16 tensors are passed as int16 bit patterns and
converted in registers. ``offset`` makes per-thread base pointers, so the inner loops
index with 32-bit offsets instead of Numba's 64-bit index arithmetic.

Shift gradient: the blocks of grid row c own channel c; their threads take (output
plane, row chunk, column) tasks in a block-stride loop, accumulate the three partial
derivatives per thread, reduce per block in shared memory in a fixed tree and write one
partial per block; a finalize kernel (one block per channel) reduces the partials in a
fixed order and applies the normalisation. No atomics: the gradient is bit-for-bit
deterministic.
"""

from __future__ import annotations

import math

import numpy as np

if not hasattr(np, "row_stack"):  # numba-cuda <= 0.30 still calls this alias, gone in numpy 2.5
    np.row_stack = np.vstack

from numba import cuda
from numba import types as nt

from ._cuda_config import (  # noqa: F401  (re-exported: benchmarks read them here)
    FINALIZE_THREADS,
    GS_GROUP,
    MAX_REGISTERS,
    REDUCE_THREADS,
    SHIFT_LIMIT,
    STORAGE,
)


def inlined(fn):
    """``fn`` as a device function that NVVM inlines into every caller. (Numba's own
    ``inline="always"`` copies and re-types the callee's IR at each call site: the
    row-walk gather took 65 s to PTX that way on a 2-core machine, 3 s inlined by NVVM,
    with the same instructions within 1 %.) The simulator takes a plain device function."""
    from numba import config

    if config.ENABLE_CUDASIM:
        return cuda.jit(device=True)(fn)
    return cuda.jit(device=True, forceinline=True)(fn)


_NUMBA_STORAGE = {
    "float16": nt.float16,
    "bfloat16": nt.int16,
    "float32": nt.float32,
    "float64": nt.float64,
}


def accumulator(storage: str):
    return nt.float64 if storage == "float64" else nt.float32


def _load_store(storage: str):
    """(load, store) of one element of ``storage`` at ``a[i]``, converted to and from the
    accumulation type. Loads are read-only loads (``ld.global.nc``): every tensor a kernel
    here reads is one it does not write."""
    acc = accumulator(storage)
    if storage == "bfloat16":

        @inlined
        def load(a, i):
            return bf16_load(a, i)

        @inlined
        def store(a, i, v):
            a[i] = bf16_bits(v)

    elif storage == "float16":

        @inlined
        def load(a, i):
            return nt.float32(ldg(a, i))

        @inlined
        def store(a, i, v):
            a[i] = nt.float16(v)

    else:

        @inlined
        def load(a, i):
            return acc(ldg(a, i))

        @inlined
        def store(a, i, v):
            a[i] = acc(v)

    return load, store


# PTX type suffix and asm constraint of a read-only load, per element type
_LDG = {
    "float32": ("f32", "f"),
    "float64": ("f64", "d"),
    "float16": ("b16", "h"),
    "int16": ("b16", "h"),
}


def _make_ldg():
    from numba import config

    if config.ENABLE_CUDASIM:

        def ldg(a, i):
            return a[i]

        return ldg
    from numba.cuda.extending import intrinsic

    @intrinsic
    def ldg(typingctx, ptr, index):
        """``ptr[index]`` through the read-only data path (``ld.global.nc``). The load is
        an opaque asm statement without memory effects, so neither LLVM nor ptxas orders it
        after the kernel's stores (src and dst could alias as far as they know): ptxas
        batches a row group's loads ahead of its stores. Only for memory that no thread
        writes during the kernel."""
        if not isinstance(ptr, nt.CPointer) or not isinstance(index, nt.Integer):
            return None
        kind = _LDG.get(str(ptr.dtype))
        if kind is None:
            return None
        suffix, constraint = kind

        def codegen(context, builder, sig, args):
            from llvmlite import ir

            i64t = ir.IntType(64)
            value_type = context.get_value_type(ptr.dtype)
            asm_type = ir.IntType(16) if suffix == "b16" else value_type
            address = builder.ptrtoint(builder.gep(args[0], [args[1]]), i64t)
            fn = ir.FunctionType(asm_type, [i64t])
            text = f"ld.global.nc.{suffix} $0, [$1];"
            value = builder.asm(fn, text, f"={constraint},l", [address], side_effect=False)
            return builder.bitcast(value, value_type) if asm_type != value_type else value

        return ptr.dtype(ptr, index), codegen

    return ldg


ldg = _make_ldg()


def _make_bf16():
    """(bf16_load, bf16_bits): a read-only load of a bfloat16 (stored as int16) as
    float32, and float32 -> bfloat16 bits rounded to nearest even (NaN stays NaN). On a
    GPU each is one asm statement (``ld.global.nc.u16`` + shift; ``cvt.rn.bf16.f32``);
    under the simulator, integer arithmetic."""
    from numba import config

    if config.ENABLE_CUDASIM:
        from numba.cuda import libdevice

        def bf16_load(a, i):
            return libdevice.int_as_float((nt.int32(a[i]) & 0xFFFF) << 16)

        def bf16_bits(v):
            bits = nt.int64(libdevice.float_as_int(v)) & 0xFFFFFFFF
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
            return nt.int16(nt.int64(0x7FC0) if v != v else rounded)

        return bf16_load, bf16_bits
    from numba.cuda.extending import intrinsic

    @intrinsic
    def bf16_load(typingctx, ptr, index):
        if not isinstance(ptr, nt.CPointer) or ptr.dtype != nt.int16:
            return None

        def codegen(context, builder, sig, args):
            from llvmlite import ir

            i64t = ir.IntType(64)
            address = builder.ptrtoint(builder.gep(args[0], [args[1]]), i64t)
            fn = ir.FunctionType(ir.IntType(32), [i64t])
            text = "{ .reg .b32 t; ld.global.nc.u16 t, [$1]; shl.b32 $0, t, 16; }"
            bits = builder.asm(fn, text, "=r,l", [address], side_effect=False)
            return builder.bitcast(bits, ir.FloatType())

        return nt.float32(ptr, index), codegen

    @intrinsic
    def bf16_bits(typingctx, value):
        if value != nt.float32:
            return None

        def codegen(context, builder, sig, args):
            from llvmlite import ir

            fn = ir.FunctionType(ir.IntType(16), [ir.FloatType()])
            return builder.asm(fn, "cvt.rn.bf16.f32 $0, $1;", "=h,f", args, side_effect=False)

        return nt.int16(value), codegen

    return bf16_load, bf16_bits


bf16_load, bf16_bits = _make_bf16()


# zero of each element type in PTX, for the masked load's "not loaded" value
_PTX_ZERO = {"f32": "0f00000000", "f64": "0d0000000000000000", "b16": "0"}


def _make_ldg_if():
    """ldg_if(ptr, index, bits, mask): ``ptr[index]`` through the read-only path where
    ``bits & mask`` is not 0, else 0, as one predicated load (the test inside the same asm
    statement, one LOP3 to a predicate): nothing is read where the test fails, so the
    address may be out of range there (under the simulator: ``ptr[index] if bits & mask
    else 0``). bf16_load_if: the same for bfloat16 storage, widened to float32."""
    from numba import config

    if config.ENABLE_CUDASIM:

        def ldg_if(a, i, bits, mask):
            return a[i] if bits & mask else a.dtype.type(0)

        def bf16_load_if(a, i, bits, mask):
            return bf16_load(a, i) if bits & mask else nt.float32(0.0)

        return ldg_if, bf16_load_if
    from numba.cuda.extending import intrinsic

    def operands(builder, args):
        from llvmlite import ir

        i32t = ir.IntType(32)
        address = builder.ptrtoint(builder.gep(args[0], [args[1]]), ir.IntType(64))
        return [address, builder.trunc(args[2], i32t), builder.trunc(args[3], i32t)]

    def valid(ptr, index, bits, mask) -> bool:
        return (
            isinstance(ptr, nt.CPointer)
            and isinstance(index, nt.Integer)
            and isinstance(bits, nt.Integer)
            and isinstance(mask, nt.Integer)
        )

    test = "{ .reg .pred p; .reg .b32 t; and.b32 t, $2, $3; setp.ne.u32 p, t, 0; "

    @intrinsic
    def ldg_if(typingctx, ptr, index, bits, mask):
        if not valid(ptr, index, bits, mask) or str(ptr.dtype) not in _LDG:
            return None
        suffix, constraint = _LDG[str(ptr.dtype)]

        def codegen(context, builder, sig, args):
            from llvmlite import ir

            value_type = context.get_value_type(ptr.dtype)
            asm_type = ir.IntType(16) if suffix == "b16" else value_type
            i32t = ir.IntType(32)
            fn = ir.FunctionType(asm_type, [ir.IntType(64), i32t, i32t])
            mov = "mov.b16" if suffix == "b16" else f"mov.{suffix}"
            text = test + f"{mov} $0, {_PTX_ZERO[suffix]}; @p ld.global.nc.{suffix} $0, [$1]; }}"
            ops = operands(builder, args)
            value = builder.asm(fn, text, f"={constraint},l,r,r", ops, side_effect=False)
            return builder.bitcast(value, value_type) if asm_type != value_type else value

        return ptr.dtype(ptr, index, bits, mask), codegen

    @intrinsic
    def bf16_load_if(typingctx, ptr, index, bits, mask):
        if not valid(ptr, index, bits, mask) or ptr.dtype != nt.int16:
            return None

        def codegen(context, builder, sig, args):
            from llvmlite import ir

            i32t = ir.IntType(32)
            fn = ir.FunctionType(i32t, [ir.IntType(64), i32t, i32t])
            text = test + (
                ".reg .b32 v; mov.b32 v, 0; @p ld.global.nc.u16 v, [$1]; shl.b32 $0, v, 16; }"
            )
            bits_ = builder.asm(fn, text, "=r,l,r,r", operands(builder, args), False)
            return builder.bitcast(bits_, ir.FloatType())

        return nt.float32(ptr, index, bits, mask), codegen

    return ldg_if, bf16_load_if


ldg_if, bf16_load_if = _make_ldg_if()


def _make_fresh():
    from numba import config

    if config.ENABLE_CUDASIM:

        def fresh(x):
            return x

        return fresh
    from numba.cuda.extending import intrinsic

    @intrinsic
    def fresh(typingctx, value):
        """``value`` (an int32) through an asm statement LLVM must keep where it is: what
        is derived from it inside a loop is computed there, not hoisted out of the loop
        into registers held across it."""
        if value != nt.int32:
            return None

        def codegen(context, builder, sig, args):
            from llvmlite import ir

            fn = ir.FunctionType(ir.IntType(32), [ir.IntType(32)])
            return builder.asm(fn, "mov.b32 $0, $1;", "=r,r", args, side_effect=True)

        return nt.int32(value), codegen

    return fresh


fresh = _make_fresh()


def _make_warp_all():
    from numba import config

    if config.ENABLE_CUDASIM:  # the simulator runs the gathers as one-thread blocks

        def warp_all(flag):
            return bool(flag)

        return warp_all
    from numba.cuda.extending import intrinsic

    @intrinsic
    def warp_all(typingctx, flag):
        """Whether ``flag`` holds in every active lane of the warp (``vote.sync.all`` over
        ``activemask``): a choice of code path the lanes then take together."""
        if not isinstance(flag, nt.Boolean):
            return None

        def codegen(context, builder, sig, args):
            from llvmlite import ir

            i32t = ir.IntType(32)
            fn = ir.FunctionType(i32t, [i32t])
            text = (
                "{ .reg .pred p, q; .reg .b32 m; setp.ne.u32 p, $1, 0; activemask.b32 m; "
                "vote.sync.all.pred q, p, m; selp.u32 $0, 1, 0, q; }"
            )
            value = builder.asm(fn, text, "=r,r", [builder.zext(args[0], i32t)], True)
            return builder.icmp_unsigned("!=", value, ir.Constant(i32t, 0))

        return nt.boolean(flag), codegen

    return warp_all


warp_all = _make_warp_all()


def masked_load(storage: str):
    """load_if(a, i, bits, mask): element ``a[i]`` of ``storage`` as the accumulation type
    where ``bits & mask`` is not 0, else 0, without reading ``a[i]`` then (one predicated
    load)."""
    acc = accumulator(storage)
    if storage == "bfloat16":

        @inlined
        def load_if(a, i, bits, mask):
            return bf16_load_if(a, i, bits, mask)

    elif storage == "float16":

        @inlined
        def load_if(a, i, bits, mask):
            return nt.float32(ldg_if(a, i, bits, mask))

    else:

        @inlined
        def load_if(a, i, bits, mask):
            return acc(ldg_if(a, i, bits, mask))

    return load_if


class SimPointer:
    """A pointer into a flat array under the CUDA simulator: ``offset`` may leave the
    array (as a GPU pointer may, where nothing is read through it), and every element
    read or written through it is checked to lie inside the array."""

    __slots__ = ("array", "start")

    def __init__(self, array, start: int) -> None:
        self.array = array
        self.start = start

    @property
    def dtype(self):
        return self.array.dtype

    def _index(self, i) -> int:
        k = self.start + int(i)
        if not 0 <= k < len(self.array):
            raise IndexError(f"element {k} of an array of {len(self.array)}")
        return k

    def __getitem__(self, i):
        return self.array[self._index(i)]

    def __setitem__(self, i, value) -> None:
        self.array[self._index(i)] = value


def _make_offset():
    from numba import config

    if config.ENABLE_CUDASIM:  # kernels run as Python on flat arrays

        def offset(a, i):
            if isinstance(a, SimPointer):
                return SimPointer(a.array, a.start + int(i))
            return SimPointer(a, int(i))

        return offset
    from numba.cuda.extending import intrinsic

    @intrinsic
    def offset(typingctx, ptr, index):
        """``ptr + index`` (elements) as a new pointer: per-thread base pointers, so that
        the loads in the inner loops index with 32-bit offsets (one IMAD.WIDE each). The
        result passes through an opaque ``mov`` so LLVM cannot fold it back into one
        64-bit index per load."""
        if not isinstance(ptr, nt.CPointer) or not isinstance(index, nt.Integer):
            return None

        def codegen(context, builder, sig, args):
            from llvmlite import ir

            i64t = ir.IntType(64)
            moved = builder.gep(args[0], [args[1]])
            as_int = builder.ptrtoint(moved, i64t)
            fn = ir.FunctionType(i64t, [i64t])
            opaque = builder.asm(fn, "mov.b64 $0, $1;", "=l,l", [as_int], side_effect=False)
            return builder.inttoptr(opaque, moved.type)

        return ptr(ptr, index), codegen

    return offset


offset = _make_offset()


def kernel_decorator(max_registers: int | None = MAX_REGISTERS):
    """cuda.jit with a register cap (the simulator has no such option)."""
    from numba import config

    capped = max_registers and not config.ENABLE_CUDASIM
    return cuda.jit(max_registers=max_registers) if capped else cuda.jit


def kernel_ptx(dispatcher, signature: tuple, cc: tuple[int, int]) -> str:
    """The PTX of kernel ``dispatcher`` for ``signature`` and compute capability ``cc``,
    with or without a GPU on this machine.

    Device functions are inlined by NVVM (``forceinline``), so Numba compiles each one as
    a function of its own and asks the current device for its compute capability, which
    fails where there is no GPU; for this call that question is answered with ``cc``."""
    from types import SimpleNamespace

    from numba.cuda import dispatcher as numba_dispatcher

    current = numba_dispatcher.get_current_device
    numba_dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    try:
        ptx, _ = cuda.compile_ptx(dispatcher.py_func, signature, cc=cc)
    finally:
        numba_dispatcher.get_current_device = current
    return ptx


class Kernels:
    """The compiled-on-demand kernels of one (storage, shift storage) pair."""

    def __init__(self, storage: str, shift_storage: str) -> None:
        self.storage = storage
        self.shift_storage = shift_storage
        self.acc = accumulator(storage)
        ptr = nt.CPointer(_NUMBA_STORAGE[storage])
        sptr = nt.CPointer(_NUMBA_STORAGE[shift_storage])
        acc_ptr = nt.CPointer(self.acc)
        i64 = nt.int64
        self.grad_shift_sig = (ptr, ptr, sptr, acc_ptr) + (i64,) * 15 + (nt.float64,) * 3
        self.finalize_sig = (acc_ptr, sptr, acc_ptr, i64, i64, i64, self.acc)
        self.grad_shift, self.finalize = _build(storage, shift_storage)
        from ._cuda_gather import (
            FRAME_REGISTERS,
            build_gather,
            frames_signature,
            gather_signature,
        )

        # each gather also as ``<name>_affine``: the forward with the input prologue
        # relu(x * scale + bias) (two more pointer arguments after dst)
        for affine, suffix in ((False, ""), (True, "_affine")):
            sig = gather_signature(storage, shift_storage, affine)
            setattr(self, "gather" + suffix, build_gather(storage, shift_storage, affine=affine))
            setattr(self, f"gather{suffix}_sig", sig)
            narrow = build_gather(storage, shift_storage, narrow=True, affine=affine)
            setattr(self, f"gather_narrow{suffix}", narrow)
            setattr(self, f"gather_narrow{suffix}_sig", sig)
            frames = build_gather(
                storage, shift_storage, registers=FRAME_REGISTERS, frames=True, affine=affine
            )
            setattr(self, f"gather_frames{suffix}", frames)
            setattr(
                self, f"gather_frames{suffix}_sig", frames_signature(storage, shift_storage, affine)
            )


def _build(
    storage: str,
    shift_storage: str,
    group: int = GS_GROUP,
    registers: int | None = MAX_REGISTERS,
):
    """(grad_shift, finalize) for one (storage, shift storage) pair; ``group`` rows per
    unrolled row group of the cell path and ``registers`` the register cap of
    grad_shift (benchmark sweeps vary them)."""
    acc = accumulator(storage)
    load, _ = _load_store(storage)
    sload, _ = _load_store(shift_storage)
    zero = acc(0.0)
    one = acc(1.0)
    half = acc(0.5)
    limit = acc(SHIFT_LIMIT)
    nan = acc(math.nan)

    @inlined
    def clamp(s):
        if s > limit:
            return limit
        if s < -limit:
            return -limit
        return s

    @inlined
    def inside(i, n):
        return (i >= 0) & (i < n)

    @inlined
    def clampi(i, n):
        if i < 0:
            return nt.int64(0)
        if i >= n:
            return n - 1
        return i

    @inlined
    def shifts(shift, C, c):
        return acc(sload(shift, c)), acc(sload(shift, C + c)), acc(sload(shift, 2 * C + c))

    @inlined
    def columns(x, base, valid, h, H, W, cm, c0, c1, mm, m0, m1, iw0, iw1, dwm, dw0, dw1):
        """Interpolated (PI) and differentiated (PD) value along W of row h of a plane."""
        ok = valid & (h >= 0) & (h < H)
        off = base + clampi(h, H) * W
        lm = load(x, off + cm)
        l0 = load(x, off + c0)
        l1 = load(x, off + c1)
        xm = lm if (ok & mm) else zero
        x0 = l0 if (ok & m0) else zero
        x1 = l1 if (ok & m1) else zero
        return iw0 * x0 + iw1 * x1, dwm * xm + dw0 * x0 + dw1 * x1

    @inlined
    def stencil(s):
        """Interp weights (i0, i1) at offsets 0, +1 and derivative weights (dm, d0, d1) at
        offsets -1, 0, +1: analytic for a fractional shift, central at an integer one."""
        f = math.floor(s)
        r = s - acc(f)
        if r == zero:
            return nt.int64(f), one, zero, -half, zero, half, True
        return nt.int64(f), one - r, r, zero, -one, one, False

    @inlined
    def column_grad(
        gy, x, g_base, wo, r0, r1, sh, oh, sw, pw, fw, H, W, Wo, planes, valid, flags, wt, wh, ww
    ):
        """Shift-gradient contributions of one output column over rows [r0, r1) of one
        slab, for any stride and any (integer or fractional) shift. ``wt``/``wh``/``ww``
        are (interp0, interp1, diff-1, diff0, diff+1) per dimension (see ``stencil``)."""
        pm, pz, pp = planes
        vm, vz, vp = valid
        int_t, int_h, int_w = flags
        it0, it1, dtm, dt0, dt1 = wt
        ih0, ih1, dhm, dh0, dh1 = wh
        iw0, iw1, dwm, dw0, dw1 = ww
        a_t = zero
        a_h = zero
        a_w = zero
        bw = wo * sw - pw + fw
        mm = int_w & inside(bw - 1, W)
        m0 = inside(bw, W)
        m1 = inside(bw + 1, W)
        cm = clampi(bw - 1, W)
        c0 = clampi(bw, W)
        c1 = clampi(bw + 1, W)
        # PI/PD of planes m (t-1), z (t), p (t+1) at rows m (h-1), z (h), p (h+1)
        pi_mz = zero
        pi_mp = zero
        pi_zm = zero
        pi_zz = zero
        pi_zp = zero
        pd_zz = zero
        pd_zp = zero
        pi_pm = zero
        pi_pz = zero
        pi_pp = zero
        pd_pz = zero
        pd_pp = zero
        fresh = True
        for ho in range(r0, r1):
            bh = ho * sh + oh
            if fresh or sh != 1:
                if int_h:
                    pi_zm, _ = columns(
                        x, pz, vz, bh - 1, H, W, cm, c0, c1, mm, m0, m1, iw0, iw1, dwm, dw0, dw1
                    )
                    pi_pm, _ = columns(
                        x, pp, vp, bh - 1, H, W, cm, c0, c1, mm, m0, m1, iw0, iw1, dwm, dw0, dw1
                    )
                pi_zz, pd_zz = columns(
                    x, pz, vz, bh, H, W, cm, c0, c1, mm, m0, m1, iw0, iw1, dwm, dw0, dw1
                )
                pi_pz, pd_pz = columns(
                    x, pp, vp, bh, H, W, cm, c0, c1, mm, m0, m1, iw0, iw1, dwm, dw0, dw1
                )
                if int_t:
                    pi_mz, _ = columns(
                        x, pm, vm, bh, H, W, cm, c0, c1, mm, m0, m1, iw0, iw1, dwm, dw0, dw1
                    )
                fresh = False
            else:
                pi_zm = pi_zz
                pi_pm = pi_pz
                pi_zz = pi_zp
                pd_zz = pd_zp
                pi_pz = pi_pp
                pd_pz = pd_pp
                pi_mz = pi_mp
            pi_zp, pd_zp = columns(
                x, pz, vz, bh + 1, H, W, cm, c0, c1, mm, m0, m1, iw0, iw1, dwm, dw0, dw1
            )
            pi_pp, pd_pp = columns(
                x, pp, vp, bh + 1, H, W, cm, c0, c1, mm, m0, m1, iw0, iw1, dwm, dw0, dw1
            )
            if int_t:
                pi_mp, _ = columns(
                    x, pm, vm, bh + 1, H, W, cm, c0, c1, mm, m0, m1, iw0, iw1, dwm, dw0, dw1
                )
            g = load(gy, g_base + ho * Wo + wo)
            d_t = dt0 * (ih0 * pi_zz + ih1 * pi_zp) + dt1 * (ih0 * pi_pz + ih1 * pi_pp)
            if int_t:
                d_t += dtm * (ih0 * pi_mz + ih1 * pi_mp)
            d_h = it0 * (dh0 * pi_zz + dh1 * pi_zp) + it1 * (dh0 * pi_pz + dh1 * pi_pp)
            if int_h:
                d_h += dhm * (it0 * pi_zm + it1 * pi_pm)
            d_w = it0 * (ih0 * pd_zz + ih1 * pd_zp) + it1 * (ih0 * pd_pz + ih1 * pd_pp)
            a_t += g * d_t
            a_h += g * d_h
            a_w += g * d_w
        return a_t, a_h, a_w

    @inlined
    def divmod_(a, b, inv):
        """(a // b, a % b) for 0 <= a < 2^52, with ``inv`` the float64 reciprocal of b."""
        q = nt.int64(nt.float64(a) * inv)
        r = a - q * b
        if r < 0:
            q -= 1
            r += b
        elif r >= b:
            q += 1
            r -= b
        return q, r

    @inlined
    def cell_row(pz, pp, hs, row_off, H, live):
        """x of source row hs (offset row_off = hs * W) at the two column slots (0, +1)
        of frames z (pointer pz) and z + 1 (pp); zero where the row is outside the plane
        or the output row is not live (the load then reads row 0 and is discarded)."""
        ok = live & (nt.uint32(hs) < nt.uint32(H))
        r = row_off if ok else nt.int32(0)
        qz = offset(pz, r)
        qp = offset(pp, r)
        a = load(qz, 0)
        b = load(qz, 1)
        d = load(qp, 0)
        e = load(qp, 1)
        return (a if ok else zero), (b if ok else zero), (d if ok else zero), (e if ok else zero)

    @inlined
    def cell_sums(reuse, pz, pp, gcol, r0, r1, hs, sh, H, W, Wo):
        """The eight sums over output rows [r0, r1) of grad_y times x at the two column
        slots of frames z, z + 1 and source rows 0, +1 of each output row. ``reuse``
        (stride 1 along H): row 1 of one output is row 0 of the next. Rows go in
        unrolled groups of ``group``, branch-free, offsets advanced by addition."""
        sz00 = zero
        sz01 = zero
        sp00 = zero
        sp01 = zero
        sz10 = zero
        sz11 = zero
        sp10 = zero
        sp11 = zero
        a0, b0, d0, e0 = cell_row(pz, pp, hs, nt.int32(hs * W), H, True)
        ho = r0
        row = nt.int32(hs + 1) if reuse else hs
        row_off = nt.int32(row * W)
        step_off = nt.int32(W if reuse else sh * W)
        g_off = nt.int32(r0 * Wo)
        g_first = g_off
        while ho < r1:
            for _ in range(group):
                live = ho < r1
                if reuse:
                    a1, b1, d1, e1 = cell_row(pz, pp, row, row_off, H, live)
                else:
                    a0, b0, d0, e0 = cell_row(pz, pp, row, row_off, H, live)
                    a1, b1, d1, e1 = cell_row(
                        pz, pp, nt.int32(row + 1), nt.int32(row_off + W), H, live
                    )
                gv = load(gcol, g_off if live else g_first)
                g = gv if live else zero
                sz00 = cuda.fma(g, a0, sz00)
                sz01 = cuda.fma(g, b0, sz01)
                sp00 = cuda.fma(g, d0, sp00)
                sp01 = cuda.fma(g, e0, sp01)
                sz10 = cuda.fma(g, a1, sz10)
                sz11 = cuda.fma(g, b1, sz11)
                sp10 = cuda.fma(g, d1, sp10)
                sp11 = cuda.fma(g, e1, sp11)
                if reuse:
                    a0 = a1
                    b0 = b1
                    d0 = d1
                    e0 = e1
                ho = nt.int32(ho + 1)
                row = nt.int32(row + (1 if reuse else sh))
                row_off = nt.int32(row_off + step_off)
                g_off = nt.int32(g_off + Wo)
        return sz00, sz01, sp00, sp01, sz10, sz11, sp10, sp11

    @inlined
    def corner(s0, s1, e_ok, slot1):
        """A column corner's sum from the two slot sums (0 where the corner is outside)."""
        return (s1 if slot1 else s0) if e_ok else zero

    @kernel_decorator(registers)
    def grad_shift(
        gy,
        x,
        shift,
        partial,
        NT,
        T,
        C,
        H,
        W,
        To,
        Ho,
        Wo,
        st,
        sh,
        sw,
        pt,
        ph,
        pw,
        rows,
        inv_plane,
        inv_w,
        inv_t,
    ):
        """Per-block partial sums of the shift gradient of channel blockIdx.y.

        Tasks (output plane of this channel, row chunk, column) are spread over the
        blocks of the channel (grid x) with a block-stride loop; consecutive lanes hold
        consecutive columns. Fractional shifts (the training case) take the cell path:
        eight sums of grad_y times x over the interpolation cell per task (row reuse at
        stride 1 along H), corners outside the clip masked off, the per-channel weights
        applied once per task. Integer shift components (central differences) go through
        ``column_grad``."""
        c = nt.int64(cuda.blockIdx.y)
        tid = nt.int64(cuda.threadIdx.x)
        nthreads = nt.int64(cuda.blockDim.x)
        s_t, s_h, s_w = shifts(shift, C, c)
        ft, it0, it1, dtm, dt0, dt1, int_t = stencil(clamp(s_t))
        fh, ih0, ih1, dhm, dh0, dh1, int_h = stencil(clamp(s_h))
        fw, iw0, iw1, dwm, dw0, dw1, int_w = stencil(clamp(s_w))
        cell = (not int_t) & (not int_h) & (not int_w) & (W >= 2)
        plane = H * W
        oplane = Ho * Wo
        oh = fh - ph
        chunks = (Ho + rows - 1) // rows
        per_plane = chunks * Wo
        tasks = NT * per_plane
        acc_t = zero
        acc_h = zero
        acc_w = zero
        W32 = nt.int32(W)
        H32 = nt.int32(H)
        Wo32 = nt.int32(Wo)
        sh32 = nt.int32(sh)
        for k in range(
            nt.int64(cuda.blockIdx.x) * nthreads + tid, tasks, cuda.gridDim.x * nthreads
        ):
            slab, kk = divmod_(k, per_plane, inv_plane)
            chunk, wo = divmod_(kk, Wo, inv_w)
            n, to = divmod_(slab, To, inv_t)
            r0 = chunk * rows
            r1 = min(r0 + rows, Ho)
            bt = to * st - pt + ft
            bw = wo * sw - pw + fw
            vm = int_t & inside(bt - 1, T)
            vz = inside(bt, T)
            vp = inside(bt + 1, T)
            pm = ((n * T + clampi(bt - 1, T)) * C + c) * plane
            pz = ((n * T + clampi(bt, T)) * C + c) * plane
            pp = ((n * T + clampi(bt + 1, T)) * C + c) * plane
            g_base = (slab * C + c) * oplane
            if cell:
                # column slots c0, c0 + 1 inside the row; corner e (column bw + e) is
                # slot bw + e - c0 where it is inside. Frames outside the clip are read
                # clamped and their sums dropped.
                c0 = min(max(bw, nt.int64(0)), W - 2)
                pz_ = offset(x, pz + c0)
                pp_ = offset(x, pp + c0)
                gcol = offset(gy, g_base + wo)
                hs = nt.int32(r0 * sh + oh)
                if sh == 1:
                    z00, z01, p00, p01, z10, z11, p10, p11 = cell_sums(
                        True,
                        pz_,
                        pp_,
                        gcol,
                        nt.int32(r0),
                        nt.int32(r1),
                        hs,
                        sh32,
                        H32,
                        W32,
                        Wo32,
                    )
                else:
                    z00, z01, p00, p01, z10, z11, p10, p11 = cell_sums(
                        False,
                        pz_,
                        pp_,
                        gcol,
                        nt.int32(r0),
                        nt.int32(r1),
                        hs,
                        sh32,
                        H32,
                        W32,
                        Wo32,
                    )
                ok0 = inside(bw, W)
                ok1 = inside(bw + 1, W)
                e0_slot1 = bw != c0
                e1_slot1 = bw + 1 != c0
                sz00 = corner(z00, z01, ok0 & vz, e0_slot1)
                sz01 = corner(z00, z01, ok1 & vz, e1_slot1)
                sz10 = corner(z10, z11, ok0 & vz, e0_slot1)
                sz11 = corner(z10, z11, ok1 & vz, e1_slot1)
                sp00 = corner(p00, p01, ok0 & vp, e0_slot1)
                sp01 = corner(p00, p01, ok1 & vp, e1_slot1)
                sp10 = corner(p10, p11, ok0 & vp, e0_slot1)
                sp11 = corner(p10, p11, ok1 & vp, e1_slot1)
                # the per-channel weights, once per task (8 FMAs per output above)
                pi_z0 = iw0 * sz00 + iw1 * sz01
                pi_z1 = iw0 * sz10 + iw1 * sz11
                pi_p0 = iw0 * sp00 + iw1 * sp01
                pi_p1 = iw0 * sp10 + iw1 * sp11
                acc_t += ih0 * (pi_p0 - pi_z0) + ih1 * (pi_p1 - pi_z1)
                acc_h += it0 * (pi_z1 - pi_z0) + it1 * (pi_p1 - pi_p0)
                acc_w += it0 * (ih0 * (sz01 - sz00) + ih1 * (sz11 - sz10)) + it1 * (
                    ih0 * (sp01 - sp00) + ih1 * (sp11 - sp10)
                )
            else:
                a_t, a_h, a_w = column_grad(
                    gy,
                    x,
                    g_base,
                    wo,
                    r0,
                    r1,
                    sh,
                    oh,
                    sw,
                    pw,
                    fw,
                    H,
                    W,
                    Wo,
                    (pm, pz, pp),
                    (vm, vz, vp),
                    (int_t, int_h, int_w),
                    (it0, it1, dtm, dt0, dt1),
                    (ih0, ih1, dhm, dh0, dh1),
                    (iw0, iw1, dwm, dw0, dw1),
                )
                acc_t += a_t
                acc_h += a_h
                acc_w += a_w
        red_t = cuda.shared.array(REDUCE_THREADS, acc)
        red_h = cuda.shared.array(REDUCE_THREADS, acc)
        red_w = cuda.shared.array(REDUCE_THREADS, acc)
        for i in range(tid, REDUCE_THREADS, nthreads):
            red_t[i] = zero
            red_h[i] = zero
            red_w[i] = zero
        cuda.syncthreads()
        red_t[tid] = acc_t
        red_h[tid] = acc_h
        red_w[tid] = acc_w
        cuda.syncthreads()
        step = REDUCE_THREADS // 2
        while step > 0:
            if tid < step:
                red_t[tid] += red_t[tid + step]
                red_h[tid] += red_h[tid + step]
                red_w[tid] += red_w[tid + step]
            cuda.syncthreads()
            step //= 2
        if tid == 0:
            block = nt.int64(cuda.blockIdx.x)
            partial[(block * 3) * C + c] = red_t[0]
            partial[(block * 3 + 1) * C + c] = red_h[0]
            partial[(block * 3 + 2) * C + c] = red_w[0]

    # ---------------------------------------------------------------- finalize
    @cuda.jit
    def finalize(partial, shift, out, C, parts, normalize, t_factor):
        """One block per channel: fixed-order reduction of the partials, then normalise."""
        c = nt.int64(cuda.blockIdx.x)
        tid = nt.int64(cuda.threadIdx.x)
        g_t = zero
        g_h = zero
        g_w = zero
        for k in range(tid, parts, FINALIZE_THREADS):
            g_t += partial[(k * 3) * C + c]
            g_h += partial[(k * 3 + 1) * C + c]
            g_w += partial[(k * 3 + 2) * C + c]
        red_t = cuda.shared.array(FINALIZE_THREADS, acc)
        red_h = cuda.shared.array(FINALIZE_THREADS, acc)
        red_w = cuda.shared.array(FINALIZE_THREADS, acc)
        red_t[tid] = g_t
        red_h[tid] = g_h
        red_w[tid] = g_w
        cuda.syncthreads()
        step = FINALIZE_THREADS // 2
        while step > 0:
            if tid < step:
                red_t[tid] += red_t[tid + step]
                red_h[tid] += red_h[tid + step]
                red_w[tid] += red_w[tid + step]
            cuda.syncthreads()
            step //= 2
        if tid != 0:
            return
        g_t = red_t[0]
        g_h = red_h[0]
        g_w = red_w[0]
        s_t, s_h, s_w = shifts(shift, C, c)
        if s_t != s_t or s_h != s_h or s_w != s_w:
            g_t = nan
            g_h = nan
            g_w = nan
        elif normalize != 0:
            if t_factor < zero:
                if g_t > zero:
                    g_t = one
                elif g_t < zero:
                    g_t = -one
                g_h = zero
                g_w = zero
            else:
                g_t *= t_factor
                norm = math.sqrt(g_t * g_t + g_h * g_h + g_w * g_w)
                if norm > zero:
                    g_t /= norm
                    g_h /= norm
                    g_w /= norm
        out[c] = g_t
        out[C + c] = g_h
        out[2 * C + c] = g_w

    return grad_shift, finalize
