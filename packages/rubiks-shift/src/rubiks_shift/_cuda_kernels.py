"""Numba-CUDA kernels. Every numba.cuda import of the package lives in this module.

All arrays are flat (1-D, C-contiguous) views; index arithmetic is done on flat
offsets so no kernel pays for 5-D indexing. Kernels are produced per storage dtype by
``build(storage, shift_storage)``: values are loaded into an accumulation type
(float64 for float64 data, float32 otherwise) and stored back in the storage type.
bfloat16 tensors are passed as int16 bit patterns and converted in registers.

Thread mapping shared by the forward and grad_x kernels: a thread owns one (channel,
column) lane of one (n, t) slab and walks down a strip of rows, reusing the row it
computed last (each output row needs input rows h and h + 1). The shift-gradient kernel
gives each block one channel and a chunk of rows, reduces in shared memory in a fixed
tree, and a final one-thread-per-channel kernel sums the chunks in order and applies the
normalisation, so the gradient is bit-for-bit deterministic.
"""

from __future__ import annotations

import math

import numpy as np

if not hasattr(np, "row_stack"):  # numba-cuda <= 0.30 still calls this alias, gone in numpy 2.5
    np.row_stack = np.vstack

from numba import cuda  # noqa: E402
from numba import types as nt  # noqa: E402

SHIFT_LIMIT = float(2**24)
REDUCE_THREADS = 256  # threads per block of the shift-gradient kernel (32 x 8)
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
            if v != v:
                out = nt.int64(0x7FC0)
            else:
                out = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            a[i] = nt.int16(out)

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
    """The three compiled-on-demand kernels of one (storage, shift storage) pair."""

    def __init__(self, storage: str, shift_storage: str) -> None:
        self.storage = storage
        self.shift_storage = shift_storage
        self.acc = accumulator(storage)
        arr = _NUMBA_STORAGE[storage][::1]
        sarr = _NUMBA_STORAGE[shift_storage][::1]
        acc_arr = self.acc[::1]
        i64 = nt.int64
        self.forward_sig = (arr, sarr, arr) + (i64,) * 15
        self.grad_x_sig = (arr, sarr, arr) + (i64,) * 15
        self.grad_shift_sig = (arr, arr, sarr, acc_arr) + (i64,) * 16
        self.finalize_sig = (acc_arr, sarr, acc_arr, i64, i64, i64, self.acc)
        self.forward, self.grad_x, self.grad_shift, self.finalize = _build(storage, shift_storage)


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
    def diff(s):
        """Gradient stencil (lo, hi, coef): analytic, or central at an integer shift."""
        f = math.floor(s)
        if s - acc(f) == zero:
            return nt.int64(f) - 1, nt.int64(f) + 1, half
        return nt.int64(f), nt.int64(f) + 1, one

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

    # ------------------------------------------------------------------ forward
    @cuda.jit
    def forward(x, shift, y, T, C, H, W, To, Ho, Wo, st, sh, sw, pt, ph, pw, quantize, rows):
        lane = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if lane >= C * Wo:
            return
        c = lane // Wo
        wo = lane - c * Wo
        slab = nt.int64(cuda.blockIdx.y)  # n * To + to
        n = slab // To
        to = slab - n * To
        ho_lo = nt.int64(cuda.blockIdx.z) * rows
        ho_hi = min(ho_lo + rows, Ho)
        plane = H * W
        out_base = (slab * C + c) * Ho * Wo + wo
        s_t = acc(sload(shift, c))
        s_h = acc(sload(shift, C + c))
        s_w = acc(sload(shift, 2 * C + c))
        if s_t != s_t or s_h != s_h or s_w != s_w:
            for ho in range(ho_lo, ho_hi):
                store(y, out_base + ho * Wo, nan)
            return
        ft, wt0, wt1 = axis(clamp(s_t), quantize)
        fh, wh0, wh1 = axis(clamp(s_h), quantize)
        fw, ww0, ww1 = axis(clamp(s_w), quantize)
        t0 = to * st - pt + ft
        w0 = wo * sw - pw + fw
        if t0 < 0 or t0 >= T:
            wt0 = zero
        if t0 + 1 < 0 or t0 + 1 >= T:
            wt1 = zero
        if w0 < 0 or w0 >= W:
            ww0 = zero
        if w0 + 1 < 0 or w0 + 1 >= W:
            ww1 = zero
        k00 = wt0 * ww0
        k01 = wt0 * ww1
        k10 = wt1 * ww0
        k11 = wt1 * ww1
        base0 = ((n * T + t0) * C + c) * plane + w0
        base1 = base0 + C * plane
        cached_h = nt.int64(-(2**40))
        cached_v = zero
        for ho in range(ho_lo, ho_hi):
            h0 = ho * sh - ph + fh
            total = zero
            for e in range(2):
                h = h0 + e
                wgt = wh0 if e == 0 else wh1
                if wgt == zero or h < 0 or h >= H:
                    continue
                if h == cached_h:
                    v = cached_v
                else:
                    v = zero
                    off = h * W
                    if k00 != zero:
                        v += k00 * load(x, base0 + off)
                    if k01 != zero:
                        v += k01 * load(x, base0 + off + 1)
                    if k10 != zero:
                        v += k10 * load(x, base1 + off)
                    if k11 != zero:
                        v += k11 * load(x, base1 + off + 1)
                    cached_h = h
                    cached_v = v
                total += wgt * v
            store(y, out_base + ho * Wo, total)

    # ------------------------------------------------------------------ grad_x
    @cuda.jit
    def grad_x(gy, shift, gx, T, C, H, W, To, Ho, Wo, st, sh, sw, pt, ph, pw, quantize, rows):
        lane = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        if lane >= C * W:
            return
        c = lane // W
        w = lane - c * W
        slab = nt.int64(cuda.blockIdx.y)  # n * T + t
        n = slab // T
        t = slab - n * T
        h_lo = nt.int64(cuda.blockIdx.z) * rows
        h_hi = min(h_lo + rows, H)
        out_base = (slab * C + c) * H * W + w
        s_t = acc(sload(shift, c))
        s_h = acc(sload(shift, C + c))
        s_w = acc(sload(shift, 2 * C + c))
        if s_t != s_t or s_h != s_h or s_w != s_w:
            for h in range(h_lo, h_hi):
                store(gx, out_base + h * W, nan)
            return
        ft, wt0, wt1 = axis(clamp(s_t), quantize)
        fh, wh0, wh1 = axis(clamp(s_h), quantize)
        fw, ww0, ww1 = axis(clamp(s_w), quantize)
        # Output slabs / columns that read input (t, w) through corner e.
        to0, ok = exact_div(t + pt - ft, st)
        if not ok or to0 >= To:
            wt0 = zero
        to1, ok = exact_div(t + pt - ft - 1, st)
        if not ok or to1 >= To:
            wt1 = zero
        wo0, ok = exact_div(w + pw - fw, sw)
        if not ok or wo0 >= Wo:
            ww0 = zero
        wo1, ok = exact_div(w + pw - fw - 1, sw)
        if not ok or wo1 >= Wo:
            ww1 = zero
        k00 = wt0 * ww0
        k01 = wt0 * ww1
        k10 = wt1 * ww0
        k11 = wt1 * ww1
        oplane = Ho * Wo
        b00 = ((n * To + to0) * C + c) * oplane + wo0
        b01 = ((n * To + to0) * C + c) * oplane + wo1
        b10 = ((n * To + to1) * C + c) * oplane + wo0
        b11 = ((n * To + to1) * C + c) * oplane + wo1
        cached_ho = nt.int64(-1)
        cached_v = zero
        for h in range(h_lo, h_hi):
            total = zero
            for e in range(2):
                wgt = wh0 if e == 0 else wh1
                if wgt == zero:
                    continue
                ho, ok = exact_div(h + ph - fh - e, sh)
                if not ok or ho >= Ho:
                    continue
                if ho == cached_ho:
                    v = cached_v
                else:
                    v = zero
                    off = ho * Wo
                    if k00 != zero:
                        v += k00 * load(gy, b00 + off)
                    if k01 != zero:
                        v += k01 * load(gy, b01 + off)
                    if k10 != zero:
                        v += k10 * load(gy, b10 + off)
                    if k11 != zero:
                        v += k11 * load(gy, b11 + off)
                    cached_ho = ho
                    cached_v = v
                total += wgt * v
            store(gx, out_base + h * W, total)

    # ------------------------------------------------------------- grad_shift
    @cuda.jit(device=True, inline="always")
    def value(x, plane_base, T, H, W, C, plane, t, h, w):
        if t < 0 or t >= T or h < 0 or h >= H or w < 0 or w >= W:
            return zero
        return load(x, plane_base + (t * C) * plane + h * W + w)

    @cuda.jit
    def grad_shift(gy, x, shift, partial, N, T, C, H, W, To, Ho, Wo, st, sh, sw, pt, ph, pw, chunks, chunk_rows):
        c = nt.int64(cuda.blockIdx.x)
        chunk = nt.int64(cuda.blockIdx.y)
        tx = nt.int64(cuda.threadIdx.x)
        ty = nt.int64(cuda.threadIdx.y)
        tid = ty * 32 + tx
        s_t = clamp(acc(sload(shift, c)))
        s_h = clamp(acc(sload(shift, C + c)))
        s_w = clamp(acc(sload(shift, 2 * C + c)))
        ft, wt0, wt1 = axis(s_t, False)
        fh, wh0, wh1 = axis(s_h, False)
        fw, ww0, ww1 = axis(s_w, False)
        tlo, thi, ct = diff(s_t)
        hlo, hhi, ch = diff(s_h)
        wlo, whi, cw = diff(s_w)
        fractional = ct == one and ch == one and cw == one
        plane = H * W
        total_rows = N * To * Ho
        row_lo = chunk * chunk_rows
        row_hi = min(row_lo + chunk_rows, total_rows)
        acc_t = zero
        acc_h = zero
        acc_w = zero
        for r in range(row_lo + ty, row_hi, 8):
            slab = r // Ho
            ho = r - slab * Ho
            n = slab // To
            to = slab - n * To
            gy_base = (slab * C + c) * Ho * Wo + ho * Wo
            x_base = (n * T * C + c) * plane
            bt = to * st - pt
            bh = ho * sh - ph
            for wo in range(tx, Wo, 32):
                g = load(gy, gy_base + wo)
                if g == zero:
                    continue
                bw = wo * sw - pw
                t0 = bt + ft
                h0 = bh + fh
                w0 = bw + fw
                if fractional:
                    v000 = value(x, x_base, T, H, W, C, plane, t0, h0, w0)
                    v001 = value(x, x_base, T, H, W, C, plane, t0, h0, w0 + 1)
                    v010 = value(x, x_base, T, H, W, C, plane, t0, h0 + 1, w0)
                    v011 = value(x, x_base, T, H, W, C, plane, t0, h0 + 1, w0 + 1)
                    v100 = value(x, x_base, T, H, W, C, plane, t0 + 1, h0, w0)
                    v101 = value(x, x_base, T, H, W, C, plane, t0 + 1, h0, w0 + 1)
                    v110 = value(x, x_base, T, H, W, C, plane, t0 + 1, h0 + 1, w0)
                    v111 = value(x, x_base, T, H, W, C, plane, t0 + 1, h0 + 1, w0 + 1)
                    dt = wh0 * (ww0 * (v100 - v000) + ww1 * (v101 - v001)) + wh1 * (
                        ww0 * (v110 - v010) + ww1 * (v111 - v011)
                    )
                    dh = wt0 * (ww0 * (v010 - v000) + ww1 * (v011 - v001)) + wt1 * (
                        ww0 * (v110 - v100) + ww1 * (v111 - v101)
                    )
                    dw = wt0 * (wh0 * (v001 - v000) + wh1 * (v011 - v010)) + wt1 * (
                        wh0 * (v101 - v100) + wh1 * (v111 - v110)
                    )
                else:
                    dt = zero
                    dh = zero
                    dw = zero
                    for e1 in range(2):
                        a1 = wh0 if e1 == 0 else wh1
                        b1 = wt0 if e1 == 0 else wt1
                        for e2 in range(2):
                            a2 = ww0 if e2 == 0 else ww1
                            b2 = wh0 if e2 == 0 else wh1
                            k = a1 * a2
                            if k != zero:
                                dt += k * (
                                    value(x, x_base, T, H, W, C, plane, bt + thi, h0 + e1, w0 + e2)
                                    - value(x, x_base, T, H, W, C, plane, bt + tlo, h0 + e1, w0 + e2)
                                )
                            k = b1 * a2
                            if k != zero:
                                dh += k * (
                                    value(x, x_base, T, H, W, C, plane, t0 + e1, bh + hhi, w0 + e2)
                                    - value(x, x_base, T, H, W, C, plane, t0 + e1, bh + hlo, w0 + e2)
                                )
                            k = b1 * b2
                            if k != zero:
                                dw += k * (
                                    value(x, x_base, T, H, W, C, plane, t0 + e1, h0 + e2, bw + whi)
                                    - value(x, x_base, T, H, W, C, plane, t0 + e1, h0 + e2, bw + wlo)
                                )
                    dt *= ct
                    dh *= ch
                    dw *= cw
                acc_t += g * dt
                acc_h += g * dh
                acc_w += g * dw
        red_t = cuda.shared.array(REDUCE_THREADS, acc)
        red_h = cuda.shared.array(REDUCE_THREADS, acc)
        red_w = cuda.shared.array(REDUCE_THREADS, acc)
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
            partial[(chunk * 3) * C + c] = red_t[0]
            partial[(chunk * 3 + 1) * C + c] = red_h[0]
            partial[(chunk * 3 + 2) * C + c] = red_w[0]

    # ---------------------------------------------------------------- finalize
    @cuda.jit
    def finalize(partial, shift, out, C, chunks, normalize, t_factor):
        c = nt.int64(cuda.grid(1))
        if c >= C:
            return
        g_t = zero
        g_h = zero
        g_w = zero
        for k in range(chunks):
            g_t += partial[(k * 3) * C + c]
            g_h += partial[(k * 3 + 1) * C + c]
            g_w += partial[(k * 3 + 2) * C + c]
        s_t = acc(sload(shift, c))
        s_h = acc(sload(shift, C + c))
        s_w = acc(sload(shift, 2 * C + c))
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

    return forward, grad_x, grad_shift, finalize
