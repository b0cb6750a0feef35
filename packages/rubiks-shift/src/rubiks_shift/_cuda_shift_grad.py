"""The shift-gradient kernels: ``grad_shift`` (per-block partial sums) and ``finalize``.

The blocks of grid row c own channel c; their threads take (output plane, row chunk,
column) tasks in a block-stride loop, accumulate the three partial derivatives per
thread, reduce per block in shared memory in a fixed tree and write one partial per
block; ``finalize`` (one block per channel) reduces the partials in a fixed order and
applies the normalisation. No atomics: the gradient is bit-for-bit deterministic.
"""

from __future__ import annotations

import math

from numba import cuda
from numba import types as nt

from ._cuda_device import (
    acc_constants,
    accumulator,
    divmod_,
    inlined,
    kernel,
    load_store,
    offset,
    plane_index,
    scalar_types,
    storage_pointer,
)
from ._cuda_scalars import FinalizeScalars, GradShiftScalars


def grad_shift_signature(storage: str, shift_storage: str) -> tuple:
    """grad_shift's signature: (grad_y, x, shift, partial sums, *GradShiftScalars)."""
    acc = accumulator(storage)
    ptr = storage_pointer(storage)
    pointers = (ptr, ptr, storage_pointer(shift_storage), nt.CPointer(acc))
    return pointers + scalar_types(GradShiftScalars, acc)


def finalize_signature(storage: str, shift_storage: str) -> tuple:
    """finalize's signature: (partial sums, shift, out, *FinalizeScalars)."""
    acc = accumulator(storage)
    acc_ptr = nt.CPointer(acc)
    pointers = (acc_ptr, storage_pointer(shift_storage), acc_ptr)
    return pointers + scalar_types(FinalizeScalars, acc)


def build_shift_grad(
    storage: str,
    shift_storage: str,
    *,
    group: int,
    registers: int | None,
    reduce_threads: int,
    finalize_threads: int,
):
    """(grad_shift, finalize) for one (storage, shift storage) pair: ``group`` rows per
    unrolled row group of grad_shift's cell path, ``registers`` its register cap,
    ``reduce_threads`` the width of its shared-memory reduction (its most threads per
    block) and ``finalize_threads`` finalize's threads per block (a power of two each;
    ``Tuning``'s ``grad_shift_*`` and ``finalize_threads``)."""
    acc, zero, one, half, limit, nan = acc_constants(storage)
    load, _ = load_store(storage)
    sload, _ = load_store(shift_storage)

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
    def tree_sum(red_t, red_h, red_w, tid, width):
        """Entries [0, width) of the three shared arrays summed into entry 0 in a fixed
        tree (``width`` a power of two; every thread of the block takes part)."""
        step = width // 2
        while step > 0:
            if tid < step:
                red_t[tid] += red_t[tid + step]
                red_h[tid] += red_h[tid + step]
                red_w[tid] += red_w[tid + step]
            cuda.syncthreads()
            step //= 2

    @inlined
    def corner(s0, s1, e_ok, slot1):
        """A column corner's sum from the two slot sums (0 where the corner is outside)."""
        return (s1 if slot1 else s0) if e_ok else zero

    def grad_shift(
        gy, x, shift, partial,  # pointers, then GradShiftScalars' fields
        NT, T, C, H, W, To, Ho, Wo, st, sh, sw, pt, ph, pw, rows, inv_plane, inv_w, inv_t,
        channel_major,
    ):  # fmt: skip
        """Per-block partial sums of the shift gradient of channel blockIdx.y.

        Tasks (output plane of this channel, row chunk, column) are spread over the
        blocks of the channel (grid x) with a block-stride loop; consecutive lanes hold
        consecutive columns. Fractional shifts (the training case) take the cell path:
        eight sums of grad_y times x over the interpolation cell per task (row reuse at
        stride 1 along H), corners outside the clip masked off, the per-channel weights
        applied once per task. Integer shift components (central differences) go through
        ``column_grad``. Both tensors' planes in (N, T, C) order, or (C, N, T) where
        ``channel_major``."""
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
        N = NT // To
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
            pm = plane_index(n, clampi(bt - 1, T), c, N, T, C, channel_major) * plane
            pz = plane_index(n, clampi(bt, T), c, N, T, C, channel_major) * plane
            pp = plane_index(n, clampi(bt + 1, T), c, N, T, C, channel_major) * plane
            g_base = plane_index(n, to, c, N, To, C, channel_major) * oplane
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
        red_t = cuda.shared.array(reduce_threads, acc)
        red_h = cuda.shared.array(reduce_threads, acc)
        red_w = cuda.shared.array(reduce_threads, acc)
        for i in range(tid, reduce_threads, nthreads):
            red_t[i] = zero
            red_h[i] = zero
            red_w[i] = zero
        cuda.syncthreads()
        red_t[tid] = acc_t
        red_h[tid] = acc_h
        red_w[tid] = acc_w
        cuda.syncthreads()
        tree_sum(red_t, red_h, red_w, tid, reduce_threads)
        if tid == 0:
            block = nt.int64(cuda.blockIdx.x)
            partial[(block * 3) * C + c] = red_t[0]
            partial[(block * 3 + 1) * C + c] = red_h[0]
            partial[(block * 3 + 2) * C + c] = red_w[0]

    # ---------------------------------------------------------------- finalize
    def finalize(partial, shift, out, C, parts, normalize, t_factor):
        """One block per channel: fixed-order reduction of the partials, then normalise."""
        c = nt.int64(cuda.blockIdx.x)
        tid = nt.int64(cuda.threadIdx.x)
        g_t = zero
        g_h = zero
        g_w = zero
        for k in range(tid, parts, finalize_threads):
            g_t += partial[(k * 3) * C + c]
            g_h += partial[(k * 3 + 1) * C + c]
            g_w += partial[(k * 3 + 2) * C + c]
        red_t = cuda.shared.array(finalize_threads, acc)
        red_h = cuda.shared.array(finalize_threads, acc)
        red_w = cuda.shared.array(finalize_threads, acc)
        red_t[tid] = g_t
        red_h[tid] = g_h
        red_w[tid] = g_w
        cuda.syncthreads()
        tree_sum(red_t, red_h, red_w, tid, finalize_threads)
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

    return (
        kernel(grad_shift, ("gy", "x", "shift", "partial"), GradShiftScalars, registers),
        kernel(finalize, ("partial", "shift", "out"), FinalizeScalars, None),
    )
