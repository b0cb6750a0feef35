"""Device helpers shared by the CUDA kernels, and how a kernel is declared.

Tensors arrive as raw pointers to C-contiguous data (one kernel parameter each, no array
descriptor, no negative-index wraparound code). Kernels are produced per storage dtype:
values are loaded into an accumulation type (float64 for float64 data, float32
otherwise) and stored back in the storage type. bfloat16 tensors are passed as int16 bit
patterns and converted in registers. ``offset`` makes per-thread base pointers, so the
inner loops index with 32-bit offsets instead of Numba's 64-bit index arithmetic.

Here: ``inlined`` (device functions NVVM inlines), the per-dtype ``load_store`` and
``masked_load``, the intrinsics (``ldg`` read-only loads, ``ldg_if`` predicated ones,
bfloat16 conversion of one value or of a 32-bit pair, float32 pairs as 64-bit words,
``offset``, ``fresh``, ``warp_all``), ``divmod_`` by a float64 reciprocal, and how a
kernel is declared: pointer types, scalar types from its ``_cuda_scalars`` block, its
parameter list checked against that block (``check_parameters``, ``kernel``) and its
register cap (``kernel_decorator``). Each intrinsic has a simulator form
(``NUMBA_ENABLE_CUDASIM=1``: the kernels run as Python on flat arrays, bit casts through
numpy views).
"""

from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import numpy as np

if not hasattr(np, "row_stack"):  # numba-cuda <= 0.30 still calls this alias, gone in numpy 2.5
    np.row_stack = np.vstack

from numba import cuda
from numba import types as nt

from ._cuda_scalars import Acc

# Shifts are clamped to +-SHIFT_LIMIT before they become integer offsets (the same
# bound as ``_checks.SHIFT_LIMIT``, which imports torch: the compile workers do not).
SHIFT_LIMIT = float(2**24)


def inlined(fn):
    """``fn`` as a device function that NVVM inlines into every caller. (Numba's own
    ``inline="always"`` copies and re-types the callee's IR at each call site: the
    row-walk gather took 65 s to PTX that way on a 2-core machine, 3 s inlined by NVVM,
    with the same instructions within 1 %.) The simulator takes a plain device function."""
    from numba import config

    if config.ENABLE_CUDASIM:
        return cuda.jit(device=True)(fn)
    return cuda.jit(device=True, forceinline=True)(fn)


NUMBA_STORAGE = {
    "float16": nt.float16,
    "bfloat16": nt.int16,
    "float32": nt.float32,
    "float64": nt.float64,
}


def accumulator(storage: str):
    return nt.float64 if storage == "float64" else nt.float32


class AccConstants(NamedTuple):
    """A kernel's accumulation type and the constants its code uses, in that type."""

    acc: object  # the Numba type
    zero: object
    one: object
    half: object
    limit: object  # SHIFT_LIMIT
    nan: object


def acc_constants(storage: str) -> AccConstants:
    """``AccConstants`` of the kernels for ``storage`` tensors."""
    acc = accumulator(storage)
    return AccConstants(acc, acc(0.0), acc(1.0), acc(0.5), acc(SHIFT_LIMIT), acc(math.nan))


def relu_fma(storage: str):
    """The fused kernels' input prologue for ``storage`` tensors: ``relu_fma(v, s, b,
    drop)`` = relu(v * s + b) in the accumulation type, rounded once (a NaN stays NaN, as
    in torch.relu), and 0 where ``drop`` (a compile-time False drops nothing)."""
    zero = acc_constants(storage).zero

    @inlined
    def relu_fma(v, s, b, drop):
        u = cuda.fma(v, s, b)
        return zero if (u <= zero) | drop else u

    return relu_fma


def load_store(storage: str):
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
    "int32": ("s32", "r"),
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


def _sim_bits16(value) -> int:
    """The simulator's int16 element as its 16 bits (0 to 0xFFFF)."""
    return int(value) & 0xFFFF


def _sim_int16(bits: int):
    """The low 16 bits of ``bits`` as the simulator's int16 element."""
    return np.array([bits & 0xFFFF], np.uint16).view(np.int16)[0]


def _sim_int32(bits: int):
    """The low 32 bits of ``bits`` as the simulator's int32 (a word of two bfloat16)."""
    return np.array([bits & 0xFFFFFFFF], np.uint32).view(np.int32)[0]


def _sim_float(bits: int):
    """The low 32 bits of ``bits`` as a float32 (the simulator's bit cast)."""
    return np.array([bits & 0xFFFFFFFF], np.uint32).view(np.float32)[0]


def _make_bf16():
    """(bf16_load, bf16_bits): a read-only load of a bfloat16 (stored as int16) as
    float32, and float32 -> bfloat16 bits rounded to nearest even (NaN stays NaN). On a
    GPU each is one asm statement (``ld.global.nc.u16`` + shift; ``cvt.rn.bf16.f32``);
    under the simulator, integer arithmetic."""
    from numba import config

    if config.ENABLE_CUDASIM:

        def bf16_load(a, i):
            return _sim_float(_sim_bits16(a[i]) << 16)

        def bf16_bits(v):
            bits = int(np.array([v], np.float32).view(np.uint32)[0])
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
            return _sim_int16(0x7FC0 if v != v else rounded)

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


def _word_access(element, word):
    """(load, store) intrinsics of words of two ``element`` values (Numba types; ``word``
    the word's integer type, int32 or int64): ``load(a, i)`` reads word ``i`` after
    pointer ``a`` (elements 2i and 2i + 1, aligned to the word) through the read-only path
    (``ld.global.nc``), ``store(a, i, w)`` writes it. GPU only: the simulator forms index
    the elements."""
    from numba.cuda.extending import intrinsic

    bits = word.bitwidth
    text = f"ld.global.nc.u{bits} $0, [$1];"
    constraint = {32: "=r,l", 64: "=l,l"}[bits]

    def word_address(builder, ptr, index):
        from llvmlite import ir

        words = builder.bitcast(ptr, ir.IntType(bits).as_pointer())
        return builder.gep(words, [index])

    def of_elements(ptr, index) -> bool:
        return (
            isinstance(ptr, nt.CPointer) and ptr.dtype == element and isinstance(index, nt.Integer)
        )

    @intrinsic
    def load_word(typingctx, ptr, index):
        if not of_elements(ptr, index):
            return None

        def codegen(context, builder, sig, args):
            from llvmlite import ir

            i64t = ir.IntType(64)
            address = builder.ptrtoint(word_address(builder, args[0], args[1]), i64t)
            fn = ir.FunctionType(ir.IntType(bits), [i64t])
            return builder.asm(fn, text, constraint, [address], side_effect=False)

        return word(ptr, index), codegen

    @intrinsic
    def store_word(typingctx, ptr, index, value):
        if not of_elements(ptr, index) or value != word:
            return None

        def codegen(context, builder, sig, args):
            builder.store(args[2], word_address(builder, args[0], args[1]), align=bits // 8)
            return context.get_dummy_value()

        return nt.void(ptr, index, value), codegen

    return load_word, store_word


def _make_bf16_pairs():
    """Two adjacent bfloat16 values as one 32-bit word: (bf16x2_load, bf16x2_store,
    bf16_low, bf16_high, bf16x2_bits). ``bf16x2_load(a, i)`` reads word ``i`` of an int16
    pointer (elements 2i and 2i + 1, 4-byte aligned) through the read-only path;
    ``bf16x2_store(a, i, w)`` writes it; ``bf16_low`` / ``bf16_high`` give its first /
    second value as float32; ``bf16x2_bits(first, second)`` rounds two float32 values to
    one word (``cvt.rn.bf16x2.f32``, as ``bf16_bits`` rounds each). Little-endian: the
    first value is the low half."""
    from numba import config

    if config.ENABLE_CUDASIM:

        def bf16x2_load(a, i):
            return _sim_int32(_sim_bits16(a[2 * i]) | (_sim_bits16(a[2 * i + 1]) << 16))

        def bf16x2_store(a, i, w):
            a[2 * i] = _sim_int16(int(w))
            a[2 * i + 1] = _sim_int16(int(w) >> 16)

        def bf16_low(w):
            return _sim_float(int(w) << 16)

        def bf16_high(w):
            return _sim_float(int(w) & 0xFFFF0000)

        def bf16x2_bits(first, second):
            return _sim_int32(
                _sim_bits16(bf16_bits(first)) | (_sim_bits16(bf16_bits(second)) << 16)
            )

        return bf16x2_load, bf16x2_store, bf16_low, bf16_high, bf16x2_bits
    from numba.cuda.extending import intrinsic

    bf16x2_load, bf16x2_store = _word_access(nt.int16, nt.int32)

    def half_as_float(shifted: bool):
        def typer(typingctx, word):
            if word != nt.int32:
                return None

            def codegen(context, builder, sig, args):
                from llvmlite import ir

                i32t = ir.IntType(32)
                if shifted:
                    bits = builder.shl(args[0], ir.Constant(i32t, 16))
                else:
                    bits = builder.and_(args[0], ir.Constant(i32t, 0xFFFF0000))
                return builder.bitcast(bits, ir.FloatType())

            return nt.float32(word), codegen

        return intrinsic(typer)

    @intrinsic
    def bf16x2_bits(typingctx, first, second):
        if first != nt.float32 or second != nt.float32:
            return None

        def codegen(context, builder, sig, args):
            from llvmlite import ir

            fn = ir.FunctionType(ir.IntType(32), [ir.FloatType(), ir.FloatType()])
            text = "cvt.rn.bf16x2.f32 $0, $1, $2;"  # $1 to the high half, $2 to the low
            operands = [args[1], args[0]]
            return builder.asm(fn, text, "=r,f,f", operands, side_effect=False)

        return nt.int32(first, second), codegen

    return bf16x2_load, bf16x2_store, half_as_float(True), half_as_float(False), bf16x2_bits


bf16x2_load, bf16x2_store, bf16_low, bf16_high, bf16x2_bits = _make_bf16_pairs()


def _sim_int64(bits: int):
    """The low 64 bits of ``bits`` as the simulator's int64 (a word of two float32)."""
    return np.array([bits & 0xFFFFFFFFFFFFFFFF], np.uint64).view(np.int64)[0]


def _sim_bits32(value) -> int:
    """A float32 value as its 32 bits (0 to 0xFFFFFFFF)."""
    return int(np.array([value], np.float32).view(np.uint32)[0])


def _make_f32_pairs():
    """Two adjacent float32 values as one 64-bit word: (f32x2_load, f32x2_store,
    f32_low, f32_high, f32x2_bits), as ``_make_bf16_pairs`` gives for bfloat16.
    ``f32x2_load(a, i)`` reads word ``i`` of a float32 pointer (elements 2i and 2i + 1,
    8-byte aligned) through the read-only path (``ld.global.nc.u64``); ``f32x2_store(a,
    i, w)`` writes it; ``f32_low`` / ``f32_high`` give its first / second value;
    ``f32x2_bits(first, second)`` packs two values into one word (bit casts: exact)."""
    from numba import config

    if config.ENABLE_CUDASIM:

        def f32x2_load(a, i):
            return _sim_int64(_sim_bits32(a[2 * i]) | (_sim_bits32(a[2 * i + 1]) << 32))

        def f32_low(w):
            return _sim_float(int(w))

        def f32_high(w):
            return _sim_float(int(w) >> 32)

        def f32x2_store(a, i, w):
            a[2 * i] = f32_low(w)
            a[2 * i + 1] = f32_high(w)

        def f32x2_bits(first, second):
            return _sim_int64(_sim_bits32(first) | (_sim_bits32(second) << 32))

        return f32x2_load, f32x2_store, f32_low, f32_high, f32x2_bits
    from numba.cuda.extending import intrinsic

    f32x2_load, f32x2_store = _word_access(nt.float32, nt.int64)

    def half_as_float(high: bool):
        def typer(typingctx, word):
            if word != nt.int64:
                return None

            def codegen(context, builder, sig, args):
                from llvmlite import ir

                bits = args[0]
                if high:
                    bits = builder.lshr(bits, ir.Constant(ir.IntType(64), 32))
                return builder.bitcast(builder.trunc(bits, ir.IntType(32)), ir.FloatType())

            return nt.float32(word), codegen

        return intrinsic(typer)

    @intrinsic
    def f32x2_bits(typingctx, first, second):
        if first != nt.float32 or second != nt.float32:
            return None

        def codegen(context, builder, sig, args):
            from llvmlite import ir

            i32t, i64t = ir.IntType(32), ir.IntType(64)
            low, high = (builder.zext(builder.bitcast(a, i32t), i64t) for a in args)
            return builder.or_(low, builder.shl(high, ir.Constant(i64t, 32)))

        return nt.int64(first, second), codegen

    return f32x2_load, f32x2_store, half_as_float(False), half_as_float(True), f32x2_bits


f32x2_load, f32x2_store, f32_low, f32_high, f32x2_bits = _make_f32_pairs()


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


def kernel_decorator(max_registers: int | None):
    """cuda.jit with a register cap (None: none; the simulator has no such option)."""
    from numba import config

    capped = max_registers and not config.ENABLE_CUDASIM
    return cuda.jit(max_registers=max_registers) if capped else cuda.jit


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
def plane_index(n, t, c, N, T, C, channel_major):
    """Index of plane (sample n, frame t, channel c) of a clip with N samples, T frames
    and C channels: planes in (N, T, C) order, or (C, N, T) where ``channel_major``."""
    if channel_major != 0:
        return (c * N + n) * T + t
    return (n * T + t) * C + c


def storage_pointer(storage: str):
    """The Numba type of a pointer to ``storage`` elements (bfloat16: int16 bits)."""
    return nt.CPointer(NUMBA_STORAGE[storage])


def scalar_types(scalars, acc) -> tuple:
    """The Numba types of a kernel's scalar arguments, in order: the fields of
    ``scalars`` (a ``_cuda_scalars`` NamedTuple), ``int`` as int64, ``float`` as float64,
    ``Acc`` as ``acc``."""
    kinds = {int: nt.int64, float: nt.float64, Acc: acc}
    return tuple(kinds[kind] for kind in scalars.__annotations__.values())


def check_parameters(fn, pointers: tuple[str, ...], scalars) -> None:
    """Raise TypeError where the Python function ``fn`` does not take ``pointers`` and
    then the fields of ``scalars`` (a ``_cuda_scalars`` NamedTuple), in that order."""
    names = tuple(inspect.signature(fn).parameters)
    expected = (*pointers, *scalars._fields)
    if names != expected:
        raise TypeError(
            f"{fn.__qualname__} takes ({', '.join(names)}); its scalar block "
            f"{scalars.__name__} says ({', '.join(expected)})"
        )


def kernel(fn, pointers: tuple[str, ...], scalars, registers: int | None):
    """``fn`` as a kernel with register cap ``registers``, after checking that it takes
    ``pointers`` and then the fields of ``scalars`` (``check_parameters``)."""
    check_parameters(fn, pointers, scalars)
    return kernel_decorator(registers)(fn)
