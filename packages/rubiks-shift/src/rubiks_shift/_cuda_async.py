"""Asynchronous global-to-shared copies (``cp.async``, sm_80 and newer) for Numba kernels.

A copy lands in shared memory without passing through registers, so a block can keep
many bytes in flight while it computes: the tile walk (``_cuda_tiles``) stages source
frames this way. Each copy moves one 16-byte segment; ``commit`` closes the thread's
current group of copies and ``wait(n)`` blocks until at most ``n`` of its groups are
still pending (a ``cuda.syncthreads()`` afterwards makes every thread's landed copies
visible to the block).

Under the CUDA simulator the same calls are plain element copies (done at once), and
``address_of`` is 0, as if every tensor started on a 16-byte boundary.
"""

from __future__ import annotations

from numba import config
from numba import types as nt

SEGMENT_BYTES = 16


def _simulated():
    def shared_copy16(smem, s_index, src, g_index):
        """Copy the 16 bytes at src[g_index] to smem[s_index] (elements of smem's type;
        src elements outside the tensor are left out: on a GPU they are read and
        discarded)."""
        per = SEGMENT_BYTES // smem.itemsize
        for q in range(per):
            g = g_index + q
            if 0 <= g < src.size:
                smem[s_index + q] = src[g]

    def commit():
        pass

    def make_wait(pending: int):
        def wait():
            pass

        return wait

    def address_of(ptr):
        return 0

    def shared_base(smem):
        return 0

    def make_shared_load(storage: str):
        from numba.cuda import libdevice

        def shared_load(smem, address):
            v = smem[address // smem.itemsize]
            if storage == "bfloat16":
                return libdevice.int_as_float((nt.int32(v) & 0xFFFF) << 16)
            return nt.float64(v) if storage == "float64" else nt.float32(v)

        return shared_load

    return shared_copy16, commit, make_wait, address_of, shared_base, make_shared_load


def _compiled():
    from llvmlite import ir
    from numba.cuda.extending import intrinsic

    i64t = ir.IntType(64)

    @intrinsic
    def shared_copy16(typingctx, smem, s_index, src, g_index):
        """``cp.async.cg`` of the 16-byte segment at ``src + g_index`` (elements; the
        address must be 16-byte aligned) to ``smem[s_index]`` (a shared array; the same
        alignment). Bypasses L1 (the data is read once)."""
        if not isinstance(smem, nt.Array) or not isinstance(src, nt.CPointer):
            return None
        if not isinstance(s_index, nt.Integer) or not isinstance(g_index, nt.Integer):
            return None

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            dst = builder.ptrtoint(builder.gep(ary.data, [args[1]]), i64t)
            src_addr = builder.ptrtoint(builder.gep(args[2], [args[3]]), i64t)
            fn = ir.FunctionType(ir.VoidType(), [i64t, i64t])
            text = (
                "{ .reg .u64 s; cvta.to.shared.u64 s, $0; "
                "cp.async.cg.shared.global [s], [$1], 16; }"
            )
            builder.asm(fn, text, "l,l,~{memory}", [dst, src_addr], side_effect=True)
            return context.get_dummy_value()

        return nt.void(smem, s_index, src, g_index), codegen

    @intrinsic
    def commit(typingctx):
        """Close this thread's current group of copies (``cp.async.commit_group``)."""

        def codegen(context, builder, sig, args):
            fn = ir.FunctionType(ir.VoidType(), [])
            builder.asm(fn, "cp.async.commit_group;", "~{memory}", [], side_effect=True)
            return context.get_dummy_value()

        return nt.void(), codegen

    def make_wait(pending: int):
        """``wait()``: block until at most ``pending`` of this thread's copy groups are
        in flight (``cp.async.wait_group``, an immediate)."""
        text = f"cp.async.wait_group {int(pending)};"

        @intrinsic
        def wait(typingctx):
            def codegen(context, builder, sig, args):
                fn = ir.FunctionType(ir.VoidType(), [])
                builder.asm(fn, text, "~{memory}", [], side_effect=True)
                return context.get_dummy_value()

            return nt.void(), codegen

        return wait

    @intrinsic
    def address_of(typingctx, ptr):
        """The address a pointer argument holds, as int64."""
        if not isinstance(ptr, nt.CPointer):
            return None

        def codegen(context, builder, sig, args):
            return builder.ptrtoint(args[0], i64t)

        return nt.int64(ptr), codegen

    @intrinsic
    def shared_base(typingctx, smem):
        """The shared-window address (uint32) of a shared array's first element."""
        if not isinstance(smem, nt.Array):
            return None

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            generic = builder.ptrtoint(ary.data, i64t)
            fn = ir.FunctionType(ir.IntType(32), [i64t])
            text = "{ .reg .u64 s; cvta.to.shared.u64 s, $1; cvt.u32.u64 $0, s; }"
            return builder.asm(fn, text, "=r,l", [generic], side_effect=False)

        return nt.uint32(smem), codegen

    # PTX of a shared load of one element as its accumulation type, per storage type
    loads = {
        "float32": ("ld.shared.f32 $0, [$1];", "=f,r", ir.FloatType(), nt.float32),
        "float64": ("ld.shared.f64 $0, [$1];", "=d,r", ir.DoubleType(), nt.float64),
        "float16": (
            "{ .reg .b16 h; ld.shared.b16 h, [$1]; cvt.f32.f16 $0, h; }",
            "=f,r",
            ir.FloatType(),
            nt.float32,
        ),
        "bfloat16": (
            "{ .reg .b32 t; ld.shared.u16 t, [$1]; shl.b32 $0, t, 16; }",
            "=r,r",
            ir.IntType(32),
            nt.float32,
        ),
    }

    def make_shared_load(storage: str):
        """``shared_load(smem, address)``: the element at shared-window byte address
        ``address`` (``shared_base(smem)`` + a byte offset) as float32 (float64 for
        float64). A volatile asm statement: never moved across the barriers and copy
        waits that order it."""
        text, constraint, asm_type, result = loads[storage]

        @intrinsic
        def shared_load(typingctx, smem, address):
            if not isinstance(address, nt.Integer):
                return None

            def codegen(context, builder, sig, args):
                fn = ir.FunctionType(asm_type, [ir.IntType(32)])
                a32 = builder.trunc(args[1], ir.IntType(32)) if args[1].type.width > 32 else args[1]
                value = builder.asm(fn, text, constraint, [a32], side_effect=True)
                return builder.bitcast(value, ir.FloatType()) if storage == "bfloat16" else value

            return result(smem, address), codegen

        return shared_load

    return shared_copy16, commit, make_wait, address_of, shared_base, make_shared_load


shared_copy16, commit, make_wait, address_of, shared_base, make_shared_load = (
    _simulated() if config.ENABLE_CUDASIM else _compiled()
)
