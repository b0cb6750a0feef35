"""The quantized shift at stride 1 without padding as an elementwise pass.

Quantized, each channel's shift is a whole number of frames, rows and columns ``q``, and
each output value is one input value: ``y[p] = x[p + q]``, zero where ``p + q`` leaves
the clip (SPEC §1.3); its adjoint reads ``-q`` instead. The gathers' walks spend their
instructions on interpolation this does not need, at 3-6x a copy on small planes. Here a
thread takes one pixel of one channel through a group of consecutive slabs (a slab: one
sample's frame): the pixel's row and column, and so whether its source lies inside the
plane, are found once, and each value adds only its frame's test, a load and a store.
Consecutive threads take consecutive pixels, so each load instruction of a warp reads
consecutive addresses; a thread's values are one slab apart, all loaded before any is
stored. Both layouts are the same walk with other strides: channel-major clips
((C, N·T·H·W)) have slabs one plane apart, contiguous ones ((N·T·C, H·W)) C planes.
``shift_integer_affine`` applies the fused form's prologue relu(x * scale[c] + bias[c])
to each value it reads, as the affine gathers do (the same single-tap values bit for
bit).
"""

from __future__ import annotations

import math

from numba import cuda
from numba import types as nt

from ._cuda_device import divmod_, inlined, ldg, offset
from ._cuda_gather import _entry, device_parts, shift_signature
from ._cuda_scalars import IntegerShiftScalars

i32 = nt.int32


def shift_integer_signature(storage: str, shift_storage: str, affine: bool) -> tuple:
    """(src, shift, dst[, scale, bias], *IntegerShiftScalars), as the gathers take them."""
    return shift_signature(storage, shift_storage, affine, IntegerShiftScalars)


def build_shift_integer(storage: str, shift_storage: str, per_thread: int, affine: bool):
    """The kernel ``shift_integer`` (``affine``: ``shift_integer_affine``) for ``storage``
    tensors and ``shift_storage`` shifts, ``per_thread`` values per thread. A NaN shift
    gives NaN over its channel, as the gathers do."""
    p = device_parts(storage, shift_storage)
    acc, zero, nan, load, store = p.acc, p.zero, p.nan, p.load, p.store
    half, limit, within, prologue = p.half, p.limit, p.within, p.prologue
    channel_shift = p.channel_shift

    @inlined
    def whole(s, n):
        """floor(s + 1/2) of a shift component as int32, within [-n, n] (a shift of n
        or more along an axis of n reads outside the clip, as n does); the gathers'
        ``axis`` rounds the same way with branches: 16 more SASS instructions here."""
        s = min(max(s, -limit), limit)
        q = i32(math.floor(s + half))
        return i32(min(max(q, i32(-n)), i32(n)))

    @inlined
    def activate(v, s, b):
        if affine:
            return prologue(v, s, b, False)
        return v

    @inlined
    def body(src, shift, dst, scale, bias, tasks, C, per_channel, inv_per_channel, plane,
             inv_plane, W, inv_W, H, T, inv_T, S, chan_stride, slab_stride,
             adjoint):  # fmt: skip
        task = nt.int64(cuda.blockIdx.x) * nt.int64(cuda.blockDim.x) + cuda.threadIdx.x
        if task >= tasks:
            return
        c, rest = divmod_(task, per_channel, inv_per_channel)
        group, pixel = divmod_(rest, plane, inv_plane)
        y, x = divmod_(pixel, W, inv_W)
        s0 = group * per_thread
        count = min(nt.int64(per_thread), S - s0)  # this task's slabs
        full = count == per_thread
        base = c * chan_stride + s0 * slab_stride + pixel
        to = offset(dst, base)
        step = i32(slab_stride)
        # the NaN test before any rounding (the gathers' ``decode`` rounds first, which
        # the simulator refuses for NaN)
        s_t, s_h, s_w = channel_shift(shift, c, C)
        if s_t != s_t or s_h != s_h or s_w != s_w:
            for k in range(per_thread):
                if k < count:
                    store(to, i32(k) * step, nan)
            return
        qt, qh, qw = whole(s_t, T), whole(s_h, H), whole(s_w, W)
        if adjoint != 0:
            qt, qh, qw = -qt, -qh, -qw
        sc, bi = zero, zero
        if affine:
            sc, bi = acc(ldg(scale, c)), acc(ldg(bias, c))
        # the pixel's source row and column, for every slab; its frame, slab by slab
        in_plane = within(i32(y + qh), i32(H)) & within(i32(x + qw), i32(W))
        _, t64 = divmod_(s0, T, inv_T)
        t, t32 = i32(t64), i32(T)
        jump = i32(qt * step + qh * i32(W) + qw)
        at = offset(src, base)
        valid = i32(0)  # bit k: value k's source lies in the clip
        for k in range(per_thread):
            if in_plane & within(i32(t + qt), t32):
                valid |= i32(1) << k
            t = i32(t + 1)
            if t == t32:
                t = i32(0)
        values = cuda.local.array(per_thread, acc)
        if full:  # every value: loads (outside, a value reads its own place), then stores
            for k in range(per_thread):
                values[k] = load(at, i32(k) * step + (jump if valid & (1 << k) else i32(0)))
            for k in range(per_thread):
                store(to, i32(k) * step, activate(values[k], sc, bi) if valid & (1 << k) else zero)
        else:  # the last group's rest
            for k in range(per_thread):
                if k < count:
                    if valid & (1 << k):
                        store(to, i32(k) * step, activate(load(at, i32(k) * step + jump), sc, bi))
                    else:
                        store(to, i32(k) * step, zero)

    name = "shift_integer_affine" if affine else "shift_integer"
    return _entry(name, body, IntegerShiftScalars, affine, None)
