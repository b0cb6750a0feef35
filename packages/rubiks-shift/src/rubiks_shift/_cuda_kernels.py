"""Numba-CUDA kernels. Every numba.cuda import of the package lives in this module.

Tensors arrive as raw pointers to C-contiguous data (one kernel parameter each, no
array descriptor, no negative-index wraparound code); index arithmetic is done on flat
offsets. Kernels are produced per storage dtype: values are loaded into an accumulation
type (float64 for float64 data, float32 otherwise) and stored back in the storage type.
bfloat16 tensors are passed as int16 bit patterns and converted in registers.

Thread mapping. A block owns one channel (grid y) of one (n, t) slab (grid z) and a
chunk of rows (grid x); its threads are (column lanes) x (row groups), and each thread
walks a few consecutive rows of one column, reusing the input row it read for the
previous output row (stride 1). Per-channel quantities (shift, weights, plane offsets)
are therefore uniform across the block and computed once per thread. All reads are
predicated on validity, so no out-of-range address is ever formed for a load.

The shift-gradient kernel accumulates per thread, reduces per block in shared memory in
a fixed tree and writes one partial per block; a finalize kernel (one block per channel)
reduces the partials in a fixed order and applies the normalisation. No atomics: the
gradient is bit-for-bit deterministic.
"""

from __future__ import annotations

import math
import os

import numpy as np

if not hasattr(np, "row_stack"):  # numba-cuda <= 0.30 still calls this alias, gone in numpy 2.5
    np.row_stack = np.vstack

from numba import cuda
from numba import types as nt

SHIFT_LIMIT = float(2**24)
# Register cap for the kernels (ptxas maxrregcount); tunable for benchmarking.
MAX_REGISTERS = int(os.environ.get("RUBIKS_SHIFT_MAX_REGISTERS", "96")) or None
REDUCE_THREADS = 256  # shared-memory reduction width (>= threads per block)
FINALIZE_THREADS = 128
TILE = 4  # output columns per thread in the shift-gradient kernel (literal 4 in its code)
STORAGE = ("float16", "bfloat16", "float32", "float64")

_NUMBA_STORAGE = {
    "float16": nt.float16,
    "bfloat16": nt.int16,
    "float32": nt.float32,
    "float64": nt.float64,
}


def accumulator(storage: str):
    return nt.float64 if storage == "float64" else nt.float32


def _load_store(storage: str):
    acc = accumulator(storage)
    if storage == "bfloat16":
        from numba.cuda import libdevice

        @cuda.jit(device=True, inline="always")
        def load(a, i):
            return libdevice.int_as_float((nt.int32(a[i]) & 0xFFFF) << 16)

        @cuda.jit(device=True, inline="always")
        def store(a, i, v):
            bits = nt.int64(libdevice.float_as_int(v)) & 0xFFFFFFFF
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
            a[i] = nt.int16(nt.int64(0x7FC0) if v != v else rounded)

    elif storage == "float16":

        @cuda.jit(device=True, inline="always")
        def load(a, i):
            return nt.float32(a[i])

        @cuda.jit(device=True, inline="always")
        def store(a, i, v):
            a[i] = nt.float16(v)

    else:

        @cuda.jit(device=True, inline="always")
        def load(a, i):
            return acc(a[i])

        @cuda.jit(device=True, inline="always")
        def store(a, i, v):
            a[i] = acc(v)

    return load, store


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
        self.forward_sig = (ptr, sptr, ptr) + (i64,) * 15
        self.grad_x_sig = (ptr, sptr, ptr) + (i64,) * 15
        self.grad_shift_sig = (ptr, ptr, sptr, acc_ptr) + (i64,) * 16
        self.finalize_sig = (acc_ptr, sptr, acc_ptr, i64, i64, i64, self.acc)
        self.tile_sig = (ptr, sptr, ptr) + (i64,) * 13
        self.forward, self.grad_x, self.grad_shift, self.finalize, self.tile = _build(
            storage, shift_storage
        )


def _build(storage: str, shift_storage: str):
    acc = accumulator(storage)
    load, store = _load_store(storage)
    sload, _ = _load_store(shift_storage)
    zero = acc(0.0)
    one = acc(1.0)
    half = acc(0.5)
    limit = acc(SHIFT_LIMIT)
    nan = acc(math.nan)

    @cuda.jit(device=True, inline="always")
    def clamp(s):
        if s > limit:
            return limit
        if s < -limit:
            return -limit
        return s

    @cuda.jit(device=True, inline="always")
    def axis(s, quantize):
        """Base offset f and corner weights (w0, w1) for corners f and f+1."""
        if quantize:
            return nt.int64(math.floor(s + half)), one, zero
        f = math.floor(s)
        r = s - acc(f)
        return nt.int64(f), one - r, r

    @cuda.jit(device=True, inline="always")
    def inside(i, n):
        return (i >= 0) & (i < n)

    @cuda.jit(device=True, inline="always")
    def clampi(i, n):
        if i < 0:
            return nt.int64(0)
        if i >= n:
            return n - 1
        return i

    @cuda.jit(device=True, inline="always")
    def split(slab, length):
        """(slab // length, slab % length) without an integer division."""
        q = nt.int64(nt.float32(slab) * (nt.float32(1.0) / nt.float32(length)))
        r = slab - q * length
        if r < 0:
            q -= 1
            r += length
        elif r >= length:
            q += 1
            r -= length
        return q, r

    @cuda.jit(device=True, inline="always")
    def exact_div(num, stride):
        """(num // stride, divisible and num >= 0) without a division for stride 1 or 2."""
        if num < 0:
            return nt.int64(0), False
        if stride == 1:
            return num, True
        if stride == 2:
            return num >> 1, (num & 1) == 0
        q = num // stride
        return q, q * stride == num

    @cuda.jit(device=True, inline="always")
    def shifts(shift, C, c):
        return acc(sload(shift, c)), acc(sload(shift, C + c)), acc(sload(shift, 2 * C + c))

    @cuda.jit(device=True, inline="always")
    def quad(x, a00, a01, a10, a11, m00, m01, m10, m11, k00, k01, k10, k11, off, valid):
        """Weighted sum of four reads at ``off`` from four (always in-range) bases; masked
        corners and invalid rows contribute exactly 0 (selects, not zero weights, so an
        inf in an unread position cannot leak in as inf * 0)."""
        l00 = load(x, a00 + off)
        l01 = load(x, a01 + off)
        l10 = load(x, a10 + off)
        l11 = load(x, a11 + off)
        v = (k00 * l00 if m00 else zero) + (k01 * l01 if m01 else zero)
        v += (k10 * l10 if m10 else zero) + (k11 * l11 if m11 else zero)
        return v if valid else zero

    @cuda.jit(device=True, inline="always")
    def single(x, a00, m00, off, valid):
        l00 = load(x, a00 + off)
        return l00 if (valid & m00) else zero

    # ------------------------------------------------------------------ forward
    from numba import config

    capped = MAX_REGISTERS and not config.ENABLE_CUDASIM  # the simulator has no such option
    kernel = cuda.jit(max_registers=MAX_REGISTERS) if capped else cuda.jit

    @kernel
    def forward(x, shift, y, T, C, H, W, To, Ho, Wo, st, sh, sw, pt, ph, pw, quantize, rb):
        c = nt.int64(cuda.blockIdx.y)
        slab = nt.int64(cuda.blockIdx.z)
        r0 = (nt.int64(cuda.blockIdx.x) * cuda.blockDim.y + cuda.threadIdx.y) * rb
        if r0 >= Ho:
            return
        r1 = min(r0 + rb, Ho)
        n, to = split(slab, To)
        out = (slab * C + c) * Ho * Wo
        s_t, s_h, s_w = shifts(shift, C, c)
        if s_t != s_t or s_h != s_h or s_w != s_w:
            for wo in range(cuda.threadIdx.x, Wo, cuda.blockDim.x):
                for ho in range(r0, r1):
                    store(y, out + ho * Wo + wo, nan)
            return
        ft, wt0, wt1 = axis(clamp(s_t), quantize)
        fh, wh0, wh1 = axis(clamp(s_h), quantize)
        fw, ww0, ww1 = axis(clamp(s_w), quantize)
        t0 = to * st - pt + ft
        mt0 = inside(t0, T) & (wt0 != zero)
        mt1 = inside(t0 + 1, T) & (wt1 != zero)
        plane = H * W
        base0 = ((n * T + clampi(t0, T)) * C + c) * plane
        base1 = ((n * T + clampi(t0 + 1, T)) * C + c) * plane
        oh = fh - ph
        reuse = (sh == 1) & (wh1 != zero)
        for wo in range(cuda.threadIdx.x, Wo, cuda.blockDim.x):
            w0 = wo * sw - pw + fw
            mw0 = inside(w0, W) & (ww0 != zero)
            mw1 = inside(w0 + 1, W) & (ww1 != zero)
            a00 = base0 + clampi(w0, W)
            a01 = base0 + clampi(w0 + 1, W)
            a10 = base1 + clampi(w0, W)
            a11 = base1 + clampi(w0 + 1, W)
            m00 = mt0 & mw0
            m01 = mt0 & mw1
            m10 = mt1 & mw0
            m11 = mt1 & mw1
            k00 = wt0 * ww0
            k01 = wt0 * ww1
            k10 = wt1 * ww0
            k11 = wt1 * ww1
            dst = out + wo
            if quantize:
                for ho in range(r0, r1):
                    h0 = ho * sh + oh
                    store(y, dst + ho * Wo, single(x, a00, m00, clampi(h0, H) * W, inside(h0, H)))
            elif reuse:
                h0 = r0 + oh
                prev = quad(
                    x,
                    a00,
                    a01,
                    a10,
                    a11,
                    m00,
                    m01,
                    m10,
                    m11,
                    k00,
                    k01,
                    k10,
                    k11,
                    clampi(h0, H) * W,
                    inside(h0, H),
                )
                for ho in range(r0, r1):
                    h1 = ho + oh + 1
                    v1 = quad(
                        x,
                        a00,
                        a01,
                        a10,
                        a11,
                        m00,
                        m01,
                        m10,
                        m11,
                        k00,
                        k01,
                        k10,
                        k11,
                        clampi(h1, H) * W,
                        inside(h1, H),
                    )
                    store(y, dst + ho * Wo, wh0 * prev + wh1 * v1)
                    prev = v1
            else:
                for ho in range(r0, r1):
                    h0 = ho * sh + oh
                    v0 = quad(
                        x,
                        a00,
                        a01,
                        a10,
                        a11,
                        m00,
                        m01,
                        m10,
                        m11,
                        k00,
                        k01,
                        k10,
                        k11,
                        clampi(h0, H) * W,
                        inside(h0, H),
                    )
                    v1 = quad(
                        x,
                        a00,
                        a01,
                        a10,
                        a11,
                        m00,
                        m01,
                        m10,
                        m11,
                        k00,
                        k01,
                        k10,
                        k11,
                        clampi(h0 + 1, H) * W,
                        inside(h0 + 1, H),
                    )
                    total = wh0 * v0
                    if wh1 != zero:
                        total += wh1 * v1
                    store(y, dst + ho * Wo, total)

    # ------------------------------------------------------------------ grad_x
    @kernel
    def grad_x(gy, shift, gx, T, C, H, W, To, Ho, Wo, st, sh, sw, pt, ph, pw, quantize, rb):
        c = nt.int64(cuda.blockIdx.y)
        slab = nt.int64(cuda.blockIdx.z)  # n * T + t
        r0 = (nt.int64(cuda.blockIdx.x) * cuda.blockDim.y + cuda.threadIdx.y) * rb
        if r0 >= H:
            return
        r1 = min(r0 + rb, H)
        n, t = split(slab, T)
        out = (slab * C + c) * H * W
        s_t, s_h, s_w = shifts(shift, C, c)
        if s_t != s_t or s_h != s_h or s_w != s_w:
            for w in range(cuda.threadIdx.x, W, cuda.blockDim.x):
                for h in range(r0, r1):
                    store(gx, out + h * W + w, nan)
            return
        ft, wt0, wt1 = axis(clamp(s_t), quantize)
        fh, wh0, wh1 = axis(clamp(s_h), quantize)
        fw, ww0, ww1 = axis(clamp(s_w), quantize)
        # Output slabs that read input frame t through corner e (forward: t = to*st-pt+ft+e).
        to0, ok0 = exact_div(t + pt - ft, st)
        to1, ok1 = exact_div(t + pt - ft - 1, st)
        mt0 = ok0 & (to0 < To) & (wt0 != zero)
        mt1 = ok1 & (to1 < To) & (wt1 != zero)
        oplane = Ho * Wo
        base0 = ((n * To + clampi(to0, To)) * C + c) * oplane
        base1 = ((n * To + clampi(to1, To)) * C + c) * oplane
        oh = ph - fh
        reuse = (sh == 1) & (wh1 != zero)
        for w in range(cuda.threadIdx.x, W, cuda.blockDim.x):
            wo0, okw0 = exact_div(w + pw - fw, sw)
            wo1, okw1 = exact_div(w + pw - fw - 1, sw)
            mw0 = okw0 & (wo0 < Wo) & (ww0 != zero)
            mw1 = okw1 & (wo1 < Wo) & (ww1 != zero)
            a00 = base0 + clampi(wo0, Wo)
            a01 = base0 + clampi(wo1, Wo)
            a10 = base1 + clampi(wo0, Wo)
            a11 = base1 + clampi(wo1, Wo)
            m00 = mt0 & mw0
            m01 = mt0 & mw1
            m10 = mt1 & mw0
            m11 = mt1 & mw1
            k00 = wt0 * ww0
            k01 = wt0 * ww1
            k10 = wt1 * ww0
            k11 = wt1 * ww1
            dst = out + w
            if quantize:
                for h in range(r0, r1):
                    ho, ok = exact_div(h + oh, sh)
                    store(
                        gx, dst + h * W, single(gy, a00, m00, clampi(ho, Ho) * Wo, ok & (ho < Ho))
                    )
            elif reuse:
                # input row h receives output rows h+oh (corner 0) and h+oh-1 (corner 1)
                ho = r0 + oh - 1
                prev = quad(
                    gy,
                    a00,
                    a01,
                    a10,
                    a11,
                    m00,
                    m01,
                    m10,
                    m11,
                    k00,
                    k01,
                    k10,
                    k11,
                    clampi(ho, Ho) * Wo,
                    inside(ho, Ho),
                )
                for h in range(r0, r1):
                    ho = h + oh
                    v0 = quad(
                        gy,
                        a00,
                        a01,
                        a10,
                        a11,
                        m00,
                        m01,
                        m10,
                        m11,
                        k00,
                        k01,
                        k10,
                        k11,
                        clampi(ho, Ho) * Wo,
                        inside(ho, Ho),
                    )
                    store(gx, dst + h * W, wh0 * v0 + wh1 * prev)
                    prev = v0
            else:
                for h in range(r0, r1):
                    ho0, ok0 = exact_div(h + oh, sh)
                    ho1, ok1 = exact_div(h + oh - 1, sh)
                    v0 = quad(
                        gy,
                        a00,
                        a01,
                        a10,
                        a11,
                        m00,
                        m01,
                        m10,
                        m11,
                        k00,
                        k01,
                        k10,
                        k11,
                        clampi(ho0, Ho) * Wo,
                        ok0 & (ho0 < Ho),
                    )
                    v1 = quad(
                        gy,
                        a00,
                        a01,
                        a10,
                        a11,
                        m00,
                        m01,
                        m10,
                        m11,
                        k00,
                        k01,
                        k10,
                        k11,
                        clampi(ho1, Ho) * Wo,
                        ok1 & (ho1 < Ho),
                    )
                    total = wh0 * v0
                    if wh1 != zero:
                        total += wh1 * v1
                    store(gx, dst + h * W, total)

    # ------------------------------------------------------- stride-1 tile gather
    @cuda.jit(device=True, inline="always")
    def tile_interp(src, pb0, pb1, hs, Hs, Ws, ws0, vals, mt0, mt1, wt0, wt1, mw0, mw1, ww0, ww1):
        """vals[j] = trilinear value at source row hs, columns ws0 + j (+1), j < 4, from two
        planes; interior columns only (all five reads in range)."""
        ok = inside(hs, Hs)
        row = clampi(hs, Hs) * Ws + ws0
        a0 = load(src, pb0 + row)
        a1 = load(src, pb0 + row + 1)
        a2 = load(src, pb0 + row + 2)
        a3 = load(src, pb0 + row + 3)
        a4 = load(src, pb0 + row + 4)
        b0 = load(src, pb1 + row)
        b1 = load(src, pb1 + row + 1)
        b2 = load(src, pb1 + row + 2)
        b3 = load(src, pb1 + row + 3)
        b4 = load(src, pb1 + row + 4)
        l0 = (ww0 * a0 if mw0 else zero) + (ww1 * a1 if mw1 else zero)
        l1 = (ww0 * a1 if mw0 else zero) + (ww1 * a2 if mw1 else zero)
        l2 = (ww0 * a2 if mw0 else zero) + (ww1 * a3 if mw1 else zero)
        l3 = (ww0 * a3 if mw0 else zero) + (ww1 * a4 if mw1 else zero)
        u0 = (ww0 * b0 if mw0 else zero) + (ww1 * b1 if mw1 else zero)
        u1 = (ww0 * b1 if mw0 else zero) + (ww1 * b2 if mw1 else zero)
        u2 = (ww0 * b2 if mw0 else zero) + (ww1 * b3 if mw1 else zero)
        u3 = (ww0 * b3 if mw0 else zero) + (ww1 * b4 if mw1 else zero)
        v0 = (wt0 * l0 if mt0 else zero) + (wt1 * u0 if mt1 else zero)
        v1 = (wt0 * l1 if mt0 else zero) + (wt1 * u1 if mt1 else zero)
        v2 = (wt0 * l2 if mt0 else zero) + (wt1 * u2 if mt1 else zero)
        v3 = (wt0 * l3 if mt0 else zero) + (wt1 * u3 if mt1 else zero)
        vals[0] = v0 if ok else zero
        vals[1] = v1 if ok else zero
        vals[2] = v2 if ok else zero
        vals[3] = v3 if ok else zero

    @kernel
    def tile(src, shift, dst, Ts, Hs, Ws, Td, Hd, Wd, C, pt, ph, pw, adjoint, quantize, rb):
        """Stride-1 gather, four output columns per thread. Forward: dst = y, src = x,
        source offset f - p. Adjoint (grad_x of a stride-1 forward): dst = grad_x,
        src = grad_y, source offset p - f - 1 and the two corner weights swapped."""
        c = nt.int64(cuda.blockIdx.y) * cuda.blockDim.z + cuda.threadIdx.z
        if c >= C:
            return
        slab = nt.int64(cuda.blockIdx.z)
        r0 = (nt.int64(cuda.blockIdx.x) * cuda.blockDim.y + cuda.threadIdx.y) * rb
        if r0 >= Hd:
            return
        r1 = min(r0 + rb, Hd)
        n, t = split(slab, Td)
        out = (slab * C + c) * Hd * Wd
        groups = (Wd + 3) // 4
        s_t, s_h, s_w = shifts(shift, C, c)
        if s_t != s_t or s_h != s_h or s_w != s_w:
            for wd in range(cuda.threadIdx.x, Wd, cuda.blockDim.x):
                for h in range(r0, r1):
                    store(dst, out + h * Wd + wd, nan)
            return
        ft, wt0, wt1 = axis(clamp(s_t), quantize)
        fh, wh0, wh1 = axis(clamp(s_h), quantize)
        fw, ww0, ww1 = axis(clamp(s_w), quantize)
        if adjoint:
            ot = pt - ft - 1
            oh = ph - fh - 1
            ow = pw - fw - 1
            wt0, wt1 = wt1, wt0
            wh0, wh1 = wh1, wh0
            ww0, ww1 = ww1, ww0
        else:
            ot = ft - pt
            oh = fh - ph
            ow = fw - pw
        ts0 = t + ot
        mt0 = inside(ts0, Ts) & (wt0 != zero)
        mt1 = inside(ts0 + 1, Ts) & (wt1 != zero)
        mh0 = wh0 != zero
        mh1 = wh1 != zero
        mw0 = ww0 != zero
        mw1 = ww1 != zero
        plane = Hs * Ws
        pb0 = ((n * Ts + clampi(ts0, Ts)) * C + c) * plane
        pb1 = ((n * Ts + clampi(ts0 + 1, Ts)) * C + c) * plane
        prev = cuda.local.array(4, acc)
        cur = cuda.local.array(4, acc)
        for grp in range(cuda.threadIdx.x, groups, cuda.blockDim.x):
            wd0 = grp * 4
            ws0 = wd0 + ow
            if (ws0 >= 0) & (ws0 + 4 < Ws) & (wd0 + 4 <= Wd):
                if mh1:
                    tile_interp(
                        src,
                        pb0,
                        pb1,
                        r0 + oh,
                        Hs,
                        Ws,
                        ws0,
                        prev,
                        mt0,
                        mt1,
                        wt0,
                        wt1,
                        mw0,
                        mw1,
                        ww0,
                        ww1,
                    )
                    for h in range(r0, r1):
                        tile_interp(
                            src,
                            pb0,
                            pb1,
                            h + oh + 1,
                            Hs,
                            Ws,
                            ws0,
                            cur,
                            mt0,
                            mt1,
                            wt0,
                            wt1,
                            mw0,
                            mw1,
                            ww0,
                            ww1,
                        )
                        o = out + h * Wd + wd0
                        for j in range(4):
                            store(dst, o + j, (wh0 * prev[j] if mh0 else zero) + wh1 * cur[j])
                            prev[j] = cur[j]
                else:
                    for h in range(r0, r1):
                        tile_interp(
                            src,
                            pb0,
                            pb1,
                            h + oh,
                            Hs,
                            Ws,
                            ws0,
                            prev,
                            mt0,
                            mt1,
                            wt0,
                            wt1,
                            mw0,
                            mw1,
                            ww0,
                            ww1,
                        )
                        o = out + h * Wd + wd0
                        for j in range(4):
                            store(dst, o + j, wh0 * prev[j])
            else:
                for wd in range(wd0, min(wd0 + 4, Wd)):
                    ws = wd + ow
                    mc0 = inside(ws, Ws) & mw0
                    mc1 = inside(ws + 1, Ws) & mw1
                    a00 = pb0 + clampi(ws, Ws)
                    a01 = pb0 + clampi(ws + 1, Ws)
                    a10 = pb1 + clampi(ws, Ws)
                    a11 = pb1 + clampi(ws + 1, Ws)
                    k00 = wt0 * ww0
                    k01 = wt0 * ww1
                    k10 = wt1 * ww0
                    k11 = wt1 * ww1
                    for h in range(r0, r1):
                        hs = h + oh
                        v0 = quad(
                            src,
                            a00,
                            a01,
                            a10,
                            a11,
                            mt0 & mc0,
                            mt0 & mc1,
                            mt1 & mc0,
                            mt1 & mc1,
                            k00,
                            k01,
                            k10,
                            k11,
                            clampi(hs, Hs) * Ws,
                            inside(hs, Hs),
                        )
                        v1 = quad(
                            src,
                            a00,
                            a01,
                            a10,
                            a11,
                            mt0 & mc0,
                            mt0 & mc1,
                            mt1 & mc0,
                            mt1 & mc1,
                            k00,
                            k01,
                            k10,
                            k11,
                            clampi(hs + 1, Hs) * Ws,
                            inside(hs + 1, Hs),
                        )
                        store(
                            dst,
                            out + h * Wd + wd,
                            (wh0 * v0 if mh0 else zero) + (wh1 * v1 if mh1 else zero),
                        )

    # ------------------------------------------------------------- grad_shift
    @cuda.jit(device=True, inline="always")
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

    @cuda.jit(device=True, inline="always")
    def stencil(s):
        """Interp weights (i0, i1) at offsets 0, +1 and derivative weights (dm, d0, d1) at
        offsets -1, 0, +1: analytic for a fractional shift, central at an integer one."""
        f = math.floor(s)
        r = s - acc(f)
        if r == zero:
            return nt.int64(f), one, zero, -half, zero, half, True
        return nt.int64(f), one - r, r, zero, -one, one, False

    @cuda.jit(device=True, inline="always")
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

    @cuda.jit(device=True, inline="always")
    def tile_row(x, base, ok, pi, pd, iw0, iw1):
        """Interior fast path: TILE+1 contiguous reads of one row -> TILE interpolated
        (pi) and differentiated (pd) values along W."""
        v0 = load(x, base)
        v1 = load(x, base + 1)
        v2 = load(x, base + 2)
        v3 = load(x, base + 3)
        v4 = load(x, base + 4)
        v0 = v0 if ok else zero
        v1 = v1 if ok else zero
        v2 = v2 if ok else zero
        v3 = v3 if ok else zero
        v4 = v4 if ok else zero
        pi[0] = iw0 * v0 + iw1 * v1
        pi[1] = iw0 * v1 + iw1 * v2
        pi[2] = iw0 * v2 + iw1 * v3
        pi[3] = iw0 * v3 + iw1 * v4
        pd[0] = v1 - v0
        pd[1] = v2 - v1
        pd[2] = v3 - v2
        pd[3] = v4 - v3

    @kernel
    def grad_shift(
        gy, x, shift, partial, NT, T, C, H, W, To, Ho, Wo, st, sh, sw, pt, ph, pw, rb, group
    ):
        c = nt.int64(cuda.blockIdx.y)
        tx = nt.int64(cuda.threadIdx.x)
        ty = nt.int64(cuda.threadIdx.y)
        bx = nt.int64(cuda.blockDim.x)
        tid = ty * bx + tx
        nthreads = bx * cuda.blockDim.y
        r0 = (nt.int64(cuda.blockIdx.x) * cuda.blockDim.y + ty) * rb
        r1 = min(r0 + rb, Ho)
        s_t, s_h, s_w = shifts(shift, C, c)
        ft, it0, it1, dtm, dt0, dt1, int_t = stencil(clamp(s_t))
        fh, ih0, ih1, dhm, dh0, dh1, int_h = stencil(clamp(s_h))
        fw, iw0, iw1, dwm, dw0, dw1, int_w = stencil(clamp(s_w))
        fast = (sh == 1) & (sw == 1) & (not int_t) & (not int_h) & (not int_w)
        plane = H * W
        oplane = Ho * Wo
        oh = fh - ph
        groups = (Wo + TILE - 1) // TILE
        acc_t = zero
        acc_h = zero
        acc_w = zero
        pi_z0 = cuda.local.array(4, acc)
        pd_z0 = cuda.local.array(4, acc)
        pi_p0 = cuda.local.array(4, acc)
        pd_p0 = cuda.local.array(4, acc)
        pi_z1 = cuda.local.array(4, acc)
        pd_z1 = cuda.local.array(4, acc)
        pi_p1 = cuda.local.array(4, acc)
        pd_p1 = cuda.local.array(4, acc)
        slab_lo = nt.int64(cuda.blockIdx.z) * group
        slab_hi = min(slab_lo + group, NT)
        for slab in range(slab_lo, slab_hi):
            if r0 >= Ho:
                break
            n, to = split(slab, To)
            bt = to * st - pt + ft
            vm = int_t & inside(bt - 1, T)
            vz = inside(bt, T)
            vp = inside(bt + 1, T)
            pm = ((n * T + clampi(bt - 1, T)) * C + c) * plane
            pz = ((n * T + clampi(bt, T)) * C + c) * plane
            pp = ((n * T + clampi(bt + 1, T)) * C + c) * plane
            g_base = (slab * C + c) * oplane
            for grp in range(tx, groups, bx):
                wo0 = grp * TILE
                bw = wo0 - pw + fw
                if fast and bw >= 0 and bw + TILE < W and wo0 + TILE <= Wo:
                    bh = r0 + oh
                    ok = inside(bh, H)
                    row = clampi(bh, H) * W + bw
                    tile_row(x, pz + row, ok & vz, pi_z0, pd_z0, iw0, iw1)
                    tile_row(x, pp + row, ok & vp, pi_p0, pd_p0, iw0, iw1)
                    for ho in range(r0, r1):
                        bh = ho + oh + 1
                        ok = inside(bh, H)
                        row = clampi(bh, H) * W + bw
                        tile_row(x, pz + row, ok & vz, pi_z1, pd_z1, iw0, iw1)
                        tile_row(x, pp + row, ok & vp, pi_p1, pd_p1, iw0, iw1)
                        gi = g_base + ho * Wo + wo0
                        for j in range(4):
                            g = load(gy, gi + j)
                            d_t = ih0 * (pi_p0[j] - pi_z0[j]) + ih1 * (pi_p1[j] - pi_z1[j])
                            d_h = it0 * (pi_z1[j] - pi_z0[j]) + it1 * (pi_p1[j] - pi_p0[j])
                            d_w = it0 * (ih0 * pd_z0[j] + ih1 * pd_z1[j]) + it1 * (
                                ih0 * pd_p0[j] + ih1 * pd_p1[j]
                            )
                            acc_t += g * d_t
                            acc_h += g * d_h
                            acc_w += g * d_w
                            pi_z0[j] = pi_z1[j]
                            pd_z0[j] = pd_z1[j]
                            pi_p0[j] = pi_p1[j]
                            pd_p0[j] = pd_p1[j]
                else:
                    for wo in range(wo0, min(wo0 + TILE, Wo)):
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
            block = nt.int64(cuda.blockIdx.z) * cuda.gridDim.x + cuda.blockIdx.x
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

    return forward, grad_x, grad_shift, finalize, tile
