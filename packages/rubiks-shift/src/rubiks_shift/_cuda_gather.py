"""The gather kernel: the forward and its adjoint (grad_x), any stride.

Thread mapping. One thread per (destination plane, row chunk, column) *task*, tasks
flattened in that order over a 1-D grid, so consecutive lanes hold consecutive columns of
one row (coalesced loads and stores) and no lane idles on narrow planes. Each thread
walks the rows of its chunk; at stride 1 along H it reuses the source row it read for the
previous output row, so every output costs four loads (two frames x two columns) and one
store. Per-thread quantities (channel, shift, weights, corner masks) are computed once
per task; intra-plane offsets are 32-bit (the wrapper guarantees planes < 2^31
elements), plane bases 64-bit.

Corners outside the source, or with weight 0 (integer or quantized shifts), are never
added (selects, not zero weights, so an inf in an unread position cannot leak in as
inf * 0); every load address is clamped in range. A NaN shift makes its channel NaN.
"""

from __future__ import annotations

import math
import os

from numba import cuda
from numba import types as nt

from ._cuda_kernels import SHIFT_LIMIT, _load_store, accumulator, kernel_decorator, offset

# 40 registers: no spills, 6 blocks of 256 threads per SM (a 64 cap let ptxas take 44,
# 5 blocks, and the forward went from 0.092 to 0.102 ms; H100, 2026-11-23)
GATHER_REGISTERS = int(os.environ.get("RUBIKS_SHIFT_GATHER_REGISTERS", "40")) or None
i32 = nt.int32
i64 = nt.int64
f64 = nt.float64


def gather_signature(storage: str, shift_storage: str) -> tuple:
    from ._cuda_kernels import _NUMBA_STORAGE

    ptr = nt.CPointer(_NUMBA_STORAGE[storage])
    sptr = nt.CPointer(_NUMBA_STORAGE[shift_storage])
    return (ptr, sptr, ptr) + (i64,) * 17 + (f64,) * 4


def build_gather(storage: str, shift_storage: str):
    acc = accumulator(storage)
    load, store = _load_store(storage)
    sload, _ = _load_store(shift_storage)
    zero = acc(0.0)
    one = acc(1.0)
    half = acc(0.5)
    limit = acc(SHIFT_LIMIT)
    nan = acc(math.nan)

    @cuda.jit(device=True, inline="always")
    def divmod_(a, b, inv):
        """(a // b, a % b) for 0 <= a < 2^52 with a float64 reciprocal ``inv`` of b."""
        q = i64(f64(a) * inv)
        r = a - q * b
        if r < 0:
            q -= 1
            r += b
        elif r >= b:
            q += 1
            r -= b
        return q, r

    @cuda.jit(device=True, inline="always")
    def axis(s, quantize):
        """Base offset and corner weights (w0, w1) of one shift component."""
        if s > limit:
            s = limit
        elif s < -limit:
            s = -limit
        if quantize:
            return i32(math.floor(s + half)), one, zero
        f = math.floor(s)
        r = s - acc(f)
        return i32(f), one - r, r

    @cuda.jit(device=True, inline="always")
    def within(i, n):
        return (i >= 0) & (i < n)

    @cuda.jit(device=True, inline="always")
    def clamp(i, n):
        """i clamped to [0, n - 1], as int32."""
        i = i32(i)
        if i < 0:
            return i32(0)
        if i >= n:
            return i32(n - 1)
        return i

    @cuda.jit(device=True, inline="always")
    def row(p0, p1, hs, Hs, Ws, k00, k01, k10, k11):
        """Interpolated value of source row hs (frames p0, p1; columns 0 and +1 of the
        thread's pointers), 0 outside the plane."""
        v = zero
        if within(hs, Hs):
            r = i32(hs * Ws)
            v = k00 * load(p0, r) + k01 * load(p0, i32(r + 1))
            v += k10 * load(p1, r) + k11 * load(p1, i32(r + 1))
        return v

    @cuda.jit(device=True, inline="always")
    def source(i, m, o, e, d, n):
        """(index, valid) of the source position ``(i * m + o + e) / d`` along one axis:
        valid when divisible by d and inside [0, n)."""
        num = i32(i32(i) * m + o + e)
        if d == 1:
            return num, within(num, n)
        if d == 2:
            q = i32(num >> 1)
            return q, ((num & 1) == 0) & within(q, n)
        q = i32(num // d)
        return q, (q * d == num) & within(q, n)

    @kernel_decorator(GATHER_REGISTERS)
    def gather(
        src,
        shift,
        dst,
        tasks,
        C,
        Ts,
        Hs,
        Ws,
        Td,
        Hd,
        Wd,
        st,
        sh,
        sw,
        pt,
        ph,
        pw,
        adjoint,
        quantize,
        rows,
        inv_plane,
        inv_w,
        inv_c,
        inv_t,
    ):
        """dst[n, td, c, h, w] = trilinear read of src around (td*st, h*sh, w*sw) + offset.

        Forward: src = x, dst = y, offset = floor(shift) - padding. Adjoint: src =
        grad_y, dst = grad_x, offset = padding - floor(shift) - 1, corner weights swapped,
        and each source index divided by the stride (only divisible ones are read).
        ``rows`` destination rows per task; ``inv_*`` the float64 reciprocals of the tasks
        per plane, Wd, C and Td (index splitting without integer division)."""
        g = i64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        if g >= tasks:
            return
        chunks = (Hd + rows - 1) // rows
        per_plane = chunks * Wd
        plane, k = divmod_(g, per_plane, inv_plane)
        chunk, w = divmod_(k, Wd, inv_w)
        slab, c = divmod_(plane, C, inv_c)
        n, td = divmod_(slab, Td, inv_t)
        h0 = i32(chunk * rows)
        h1 = i32(min(h0 + rows, Hd))
        Hs32 = i32(Hs)
        Ws32 = i32(Ws)
        Wd32 = i32(Wd)
        dbase = plane * Hd * Wd + w
        s_t = acc(sload(shift, c))
        s_h = acc(sload(shift, C + c))
        s_w = acc(sload(shift, 2 * C + c))
        if s_t != s_t or s_h != s_h or s_w != s_w:
            for h in range(h0, h1):
                store(dst, dbase + h * Wd32, nan)
            return
        ft, wt0, wt1 = axis(s_t, quantize)
        fh, wh0, wh1 = axis(s_h, quantize)
        fw, ww0, ww1 = axis(s_w, quantize)
        if adjoint:
            ot = i32(pt - ft - 1)
            oh = i32(ph - fh - 1)
            ow = i32(pw - fw - 1)
            wt0, wt1 = wt1, wt0
            wh0, wh1 = wh1, wh0
            ww0, ww1 = ww1, ww0
        else:
            ot = i32(ft - pt)
            oh = i32(fh - ph)
            ow = i32(fw - pw)
        # source index of corner e along each axis: forward i*stride + offset + e;
        # adjoint (i + offset + e) / stride where divisible (the outputs that read i)
        mt_, dt_ = (i32(1), i32(st)) if adjoint else (i32(st), i32(1))
        mh_, dh_ = (i32(1), i32(sh)) if adjoint else (i32(sh), i32(1))
        mw_, dw_ = (i32(1), i32(sw)) if adjoint else (i32(sw), i32(1))
        Ts32 = i32(Ts)
        ts0, okt0 = source(td, mt_, ot, 0, dt_, Ts32)
        ts1, okt1 = source(td, mt_, ot, 1, dt_, Ts32)
        ws0, okw0 = source(w, mw_, ow, 0, dw_, Ws32)
        ws1, okw1 = source(w, mw_, ow, 1, dw_, Ws32)
        mt0 = okt0 & (wt0 != zero)
        mt1 = okt1 & (wt1 != zero)
        mw0 = okw0 & (ww0 != zero)
        mw1 = okw1 & (ww1 != zero)
        m00 = mt0 & mw0
        m01 = mt0 & mw1
        m10 = mt1 & mw0
        m11 = mt1 & mw1
        k00 = wt0 * ww0
        k01 = wt0 * ww1
        k10 = wt1 * ww0
        k11 = wt1 * ww1
        plane_s = Hs * Ws
        # per-thread pointers to the (t, column) corners 00 and 10 of the source, and to
        # the destination column: the row loops index them with 32-bit offsets
        c0 = clamp(ws0, Ws32)
        p0 = offset(src, ((n * Ts + clamp(ts0, Ts32)) * C + c) * plane_s + c0)
        p1 = offset(src, ((n * Ts + clamp(ts1, Ts32)) * C + c) * plane_s + c0)
        dcol = offset(dst, plane * Hd * Wd + w)
        dc = i32(clamp(ws1, Ws32) - c0)  # column of corner 1 relative to corner 0
        full = m00 & m01 & m10 & m11
        two_rows = wh1 != zero
        if (mh_ == 1) & (dh_ == 1) & two_rows & full:
            # fast path: row reuse, all corners in range; output row h reads source rows
            # h + oh and h + oh + 1. Four rows' loads are issued before their stores (the
            # compiler may not move loads above stores: src and dst could alias), so each
            # thread keeps 16 loads in flight instead of 4.
            hs = i32(h0 + oh)
            prev = row(p0, p1, hs, Hs32, Ws32, k00, k01, k10, k11)
            h = h0
            while h + 4 <= h1:
                v1 = row(p0, p1, i32(hs + 1), Hs32, Ws32, k00, k01, k10, k11)
                v2 = row(p0, p1, i32(hs + 2), Hs32, Ws32, k00, k01, k10, k11)
                v3 = row(p0, p1, i32(hs + 3), Hs32, Ws32, k00, k01, k10, k11)
                v4 = row(p0, p1, i32(hs + 4), Hs32, Ws32, k00, k01, k10, k11)
                r = i32(h * Wd32)
                store(dcol, r, wh0 * prev + wh1 * v1)
                store(dcol, i32(r + Wd32), wh0 * v1 + wh1 * v2)
                store(dcol, i32(r + 2 * Wd32), wh0 * v2 + wh1 * v3)
                store(dcol, i32(r + 3 * Wd32), wh0 * v3 + wh1 * v4)
                prev = v4
                hs = i32(hs + 4)
                h = i32(h + 4)
            while h < h1:
                hs = i32(hs + 1)
                cur = row(p0, p1, hs, Hs32, Ws32, k00, k01, k10, k11)
                store(dcol, i32(h * Wd32), wh0 * prev + wh1 * cur)
                prev = cur
                h = i32(h + 1)
        else:
            h = h0
            while h < h1:
                total = zero
                for e_h in range(2):
                    hh, ok = source(h, mh_, oh, e_h, dh_, Hs32)
                    weight = wh0 if e_h == 0 else wh1
                    if ok & (weight != zero):
                        r = i32(hh * Ws32)
                        a = load(p0, r)
                        b = load(p0, i32(r + dc))
                        d = load(p1, r)
                        e = load(p1, i32(r + dc))
                        v = (k00 * a if m00 else zero) + (k01 * b if m01 else zero)
                        v += (k10 * d if m10 else zero) + (k11 * e if m11 else zero)
                        total += weight * v
                store(dcol, i32(h * Wd32), total)
                h = i32(h + 1)

    return gather
