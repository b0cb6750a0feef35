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
import os

import numpy as np

if not hasattr(np, "row_stack"):  # numba-cuda <= 0.30 still calls this alias, gone in numpy 2.5
    np.row_stack = np.vstack

from numba import cuda
from numba import types as nt

SHIFT_LIMIT = float(2**24)
# Register cap for the kernels (ptxas maxrregcount); tunable for benchmarking. 64 keeps
# the shift-gradient kernel at 50% occupancy (H100, 2026-11-23: 0.171 ms at 64 registers
# vs 0.267 ms at 96 for (8,8,72,56,56); the gather kernel needs 40 either way).
MAX_REGISTERS = int(os.environ.get("RUBIKS_SHIFT_MAX_REGISTERS", "64")) or None
REDUCE_THREADS = 256  # shared-memory reduction width (>= threads per block)
FINALIZE_THREADS = 128
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


def _make_offset():
    from numba import config

    if config.ENABLE_CUDASIM:  # kernels run as Python on numpy arrays: a view does it

        def offset(a, i):
            return a[i:]

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
        from ._cuda_gather import build_gather, gather_signature

        self.gather = build_gather(storage, shift_storage)
        self.gather_sig = gather_signature(storage, shift_storage)


def _build(storage: str, shift_storage: str):
    acc = accumulator(storage)
    load, _ = _load_store(storage)
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
    def shifts(shift, C, c):
        return acc(sload(shift, c)), acc(sload(shift, C + c)), acc(sload(shift, 2 * C + c))

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

    @cuda.jit(device=True, inline="always")
    def raw_row(p, p1, q, q1, r, ok):
        """x at row offset r, columns 0 and +1 (pointers p, p1 of one frame, q, q1 of the
        next); zeros where the row is outside the plane."""
        a = zero
        b = zero
        d = zero
        e = zero
        if ok:
            a = load(p, r)
            b = load(p1, r)
            d = load(q, r)
            e = load(q1, r)
        return a, b, d, e

    @kernel_decorator()
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
        consecutive columns. Fractional shifts at stride 1 along H, on columns whose two
        source columns are in range, take the fast path: row reuse, four loads of x and
        one of grad_y per output, 32-bit offsets from per-task pointers. Every other
        case (integer shifts: central differences; edges; stride 2) goes through
        ``column_grad``."""
        c = nt.int64(cuda.blockIdx.y)
        tid = nt.int64(cuda.threadIdx.x)
        nthreads = nt.int64(cuda.blockDim.x)
        s_t, s_h, s_w = shifts(shift, C, c)
        ft, it0, it1, dtm, dt0, dt1, int_t = stencil(clamp(s_t))
        fh, ih0, ih1, dhm, dh0, dh1, int_h = stencil(clamp(s_h))
        fw, iw0, iw1, dwm, dw0, dw1, int_w = stencil(clamp(s_w))
        fast = (sh == 1) & (not int_t) & (not int_h) & (not int_w)
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
            if fast & vz & vp & (bw >= 0) & (bw + 1 < W):
                p = offset(x, pz + bw)
                p1 = offset(x, pz + bw + 1)
                q = offset(x, pp + bw)
                q1 = offset(x, pp + bw + 1)
                gcol = offset(gy, g_base + wo)
                # S sums: grad_y times x at the two frames (z, p) x two rows (0, 1) x two
                # columns (0, 1) of the interpolation cell; the weights are per-channel
                # constants, so they are applied once per task (8 FMAs per output)
                hs = nt.int32(r0 + oh)
                a0, b0, d0, e0 = raw_row(p, p1, q, q1, nt.int32(hs * W32), (hs >= 0) & (hs < H32))
                sz00 = zero
                sz01 = zero
                sp00 = zero
                sp01 = zero
                sz10 = zero
                sz11 = zero
                sp10 = zero
                sp11 = zero
                ho = nt.int32(r0)
                ho_end = nt.int32(r1)
                while ho < ho_end:
                    hs = nt.int32(hs + 1)
                    a1, b1, d1, e1 = raw_row(
                        p, p1, q, q1, nt.int32(hs * W32), (hs >= 0) & (hs < H32)
                    )
                    g = load(gcol, nt.int32(ho * Wo32))
                    sz00 += g * a0
                    sz01 += g * b0
                    sp00 += g * d0
                    sp01 += g * e0
                    sz10 += g * a1
                    sz11 += g * b1
                    sp10 += g * d1
                    sp11 += g * e1
                    a0 = a1
                    b0 = b1
                    d0 = d1
                    e0 = e1
                    ho = nt.int32(ho + 1)
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
