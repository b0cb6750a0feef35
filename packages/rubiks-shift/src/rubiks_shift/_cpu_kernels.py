"""Numba CPU kernels (parallel over planes / channels, cached on disk).

Layout is (N, T, C, H, W), C-contiguous. Every kernel works row by row: for one
(n, t_out, c, h_out) the contributing input rows are fixed, so the innermost loop is a
strided walk over W with its valid range computed once (no per-element bounds test).
Shift parameters arrive as a float64 (3, C) array that is already clamped to
+-SHIFT_LIMIT and finite.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange


@njit(inline="always", cache=True)
def _valid_range(out_len, length, stride, offset):
    """Range [lo, hi) of output indices o with 0 <= o*stride + offset < length."""
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    hi = out_len
    last = length - 1 - offset
    if last < 0:
        return 0, 0
    cap = last // stride + 1
    if cap < hi:
        hi = cap
    if lo > hi:
        lo = hi
    return lo, hi


@njit(inline="always", cache=True)
def _axis(s):
    """Integer base offset f and interpolation weights (w0, w1) for corners f and f+1."""
    f = math.floor(s)
    r = s - f
    return np.int64(f), 1.0 - r, r


@njit(inline="always", cache=True)
def _diff(s):
    """Gradient stencil along one axis: (lo, hi, coef) relative offsets and scale."""
    f = math.floor(s)
    r = s - f
    if r == 0.0:
        return np.int64(f) - 1, np.int64(f) + 1, 0.5
    return np.int64(f), np.int64(f) + 1, 1.0


@njit(inline="always", cache=True)
def _edge_value(r0, r1, r2, r3, c00, c01, c10, c11, c20, c21, c30, c31, s, use1):
    """One output of the up-to-four weighted source rows at columns s and s + 1, for a
    column where a corner may fall outside the row (and is then not read)."""
    n = r0.shape[0]
    v = c00 * 0
    if 0 <= s < n:
        v += c00 * r0[s] + c10 * r1[s] + c20 * r2[s] + c30 * r3[s]
    if use1 and 0 <= s + 1 < n:
        v += c01 * r0[s + 1] + c11 * r1[s + 1] + c21 * r2[s + 1] + c31 * r3[s + 1]
    return v


@njit(parallel=True, cache=True)
def forward(x, offsets, weights, y, stride, padding):
    """``offsets[d, c]`` is corner 0's integer offset along d, ``weights[d, c, e]`` the
    weight of corner e, in the data's dtype (so the inner loops are single-precision SIMD
    for float32 data).

    One pass per output row: the (t, h) corners that are inside the clip and have a
    non-zero weight give up to four source rows (a shared zero row stands in for the
    others), and every output element is their weighted sum at columns s and s + 1;
    the columns where a corner falls outside are done separately with checks."""
    n_batch, t_in, channels, h_in, w_in = x.shape
    _, t_out, _, h_out, w_out = y.shape
    st, sh, sw = stride[0], stride[1], stride[2]
    pt, ph, pw = padding[0], padding[1], padding[2]
    zero_row = np.zeros(w_in, dtype=x.dtype)
    zero = weights[0, 0, 0] * 0  # the weights' dtype: keeps float32 data in float32
    for plane in prange(n_batch * t_out * channels):
        c = plane % channels
        nt = plane // channels
        to = nt % t_out
        n = nt // t_out
        ft, wt0, wt1 = offsets[0, c], weights[0, c, 0], weights[0, c, 1]
        fh, wh0, wh1 = offsets[1, c], weights[1, c, 0], weights[1, c, 1]
        fw, ww0, ww1 = offsets[2, c], weights[2, c, 0], weights[2, c, 1]
        out = y[n, to, c]
        ow = fw - pw
        use1 = ww1 != 0.0
        # interior columns: every corner that is read lies inside the row
        lo, hi = _valid_range(w_out, w_in, sw, ow)
        if use1:
            lo1, hi1 = _valid_range(w_out, w_in, sw, ow + 1)
            lo = max(lo, lo1)
            hi = min(hi, hi1)
        if hi < lo:
            hi = lo
        for ho in range(h_out):
            r0 = zero_row
            r1 = zero_row
            r2 = zero_row
            r3 = zero_row
            k0 = zero
            k1 = zero
            k2 = zero
            k3 = zero
            slot = 0
            for et in range(2):
                wt = wt0 if et == 0 else wt1
                t = to * st - pt + ft + et
                if wt == 0.0 or t < 0 or t >= t_in:
                    continue
                for eh in range(2):
                    wth = wt * (wh0 if eh == 0 else wh1)
                    h = ho * sh - ph + fh + eh
                    if wth == 0.0 or h < 0 or h >= h_in:
                        continue
                    row = x[n, t, c, h]
                    if slot == 0:
                        r0, k0 = row, wth
                    elif slot == 1:
                        r1, k1 = row, wth
                    elif slot == 2:
                        r2, k2 = row, wth
                    else:
                        r3, k3 = row, wth
                    slot += 1
            orow = out[ho]
            if slot == 0:
                orow[:] = 0
                continue
            c00, c01 = k0 * ww0, k0 * ww1
            c10, c11 = k1 * ww0, k1 * ww1
            c20, c21 = k2 * ww0, k2 * ww1
            c30, c31 = k3 * ww0, k3 * ww1
            if slot == 1 and not use1:  # quantized or integer shifts: one plain gather
                for wo in range(lo, hi):
                    orow[wo] = c00 * r0[wo * sw + ow]
            elif slot == 1:
                for wo in range(lo, hi):
                    j = wo * sw + ow
                    orow[wo] = c00 * r0[j] + c01 * r0[j + 1]
            elif use1:
                for wo in range(lo, hi):
                    j = wo * sw + ow
                    orow[wo] = (
                        c00 * r0[j]
                        + c01 * r0[j + 1]
                        + c10 * r1[j]
                        + c11 * r1[j + 1]
                        + c20 * r2[j]
                        + c21 * r2[j + 1]
                        + c30 * r3[j]
                        + c31 * r3[j + 1]
                    )
            else:
                for wo in range(lo, hi):
                    j = wo * sw + ow
                    orow[wo] = c00 * r0[j] + c10 * r1[j] + c20 * r2[j] + c30 * r3[j]
            for wo in range(lo):
                orow[wo] = _edge_value(
                    r0, r1, r2, r3, c00, c01, c10, c11, c20, c21, c30, c31, wo * sw + ow, use1
                )
            for wo in range(hi, w_out):
                orow[wo] = _edge_value(
                    r0, r1, r2, r3, c00, c01, c10, c11, c20, c21, c30, c31, wo * sw + ow, use1
                )


@njit(inline="always", cache=True)
def _dot(gy_row, x_row, lo, hi, sw, ow):
    acc = 0.0
    for wo in range(lo, hi):
        acc += gy_row[wo] * x_row[wo * sw + ow]
    return acc


@njit(parallel=True, cache=True)
def backward(
    grad_y, x, shift, offsets, weights, grad_x, partial, stride, padding, need_x, need_shift
):
    """grad_x (scatter, race-free: one (n, c) column per task) and per-(n, c) shift-grad
    partial sums ``partial[n, d, c]``, accumulated in float64 in a fixed order."""
    n_batch, t_in, channels, h_in, w_in = x.shape
    _, t_out, _, h_out, w_out = grad_y.shape
    st, sh, sw = stride[0], stride[1], stride[2]
    pt, ph, pw = padding[0], padding[1], padding[2]
    for task in prange(n_batch * channels):
        c = task % channels
        n = task // channels
        if need_x:
            for t in range(t_in):
                grad_x[n, t, c, :, :] = 0
            ft, wt0, wt1 = offsets[0, c], weights[0, c, 0], weights[0, c, 1]
            fh, wh0, wh1 = offsets[1, c], weights[1, c, 0], weights[1, c, 1]
            fw, ww0, ww1 = offsets[2, c], weights[2, c, 0], weights[2, c, 1]
            for to in range(t_out):
                for et in range(2):
                    wt = wt0 if et == 0 else wt1
                    t = to * st - pt + ft + et
                    if wt == 0.0 or t < 0 or t >= t_in:
                        continue
                    dst = grad_x[n, t, c]
                    src = grad_y[n, to, c]
                    for eh in range(2):
                        wth = wt * (wh0 if eh == 0 else wh1)
                        if wth == 0.0:
                            continue
                        oh = -ph + fh + eh
                        hlo, hhi = _valid_range(h_out, h_in, sh, oh)
                        for ew in range(2):
                            wgt = wth * (ww0 if ew == 0 else ww1)
                            if wgt == 0.0:
                                continue
                            ow = -pw + fw + ew
                            wlo, whi = _valid_range(w_out, w_in, sw, ow)
                            for ho in range(hlo, hhi):
                                drow = dst[ho * sh + oh]
                                grow = src[ho]
                                for wo in range(wlo, whi):
                                    drow[wo * sw + ow] += wgt * grow[wo]
        if need_shift:
            # Continuous weights (straight-through under quantize) and gradient stencils.
            ft, wt0, wt1 = _axis(shift[0, c])
            fh, wh0, wh1 = _axis(shift[1, c])
            fw, ww0, ww1 = _axis(shift[2, c])
            tlo, thi, ct = _diff(shift[0, c])
            hlo_, hhi_, ch = _diff(shift[1, c])
            wlo_, whi_, cw = _diff(shift[2, c])
            # S[a, b, k] = sum over outputs of gy * x at offsets (f-1+a, f-1+b, f-1+k).
            s = np.zeros((3, 3, 3))
            int_t, int_h, int_w = tlo != ft, hlo_ != fh, wlo_ != fw
            for to in range(t_out):
                grow_plane = grad_y[n, to, c]
                for a in range(3):
                    t = to * st - pt + ft - 1 + a
                    if t < 0 or t >= t_in or (a == 0 and not int_t):
                        continue
                    src = x[n, t, c]
                    for b in range(3):
                        if b == 0 and (a == 0 or not int_h):
                            continue
                        oh = -ph + fh - 1 + b
                        hlo, hhi = _valid_range(h_out, h_in, sh, oh)
                        for k in range(3):
                            if k == 0 and (a == 0 or b == 0 or not int_w):
                                continue
                            ow = -pw + fw - 1 + k
                            wlo, whi = _valid_range(w_out, w_in, sw, ow)
                            acc = 0.0
                            for ho in range(hlo, hhi):
                                acc += _dot(grow_plane[ho], src[ho * sh + oh], wlo, whi, sw, ow)
                            s[a, b, k] += acc
            # Offsets relative to f-1: corner e -> index 1+e; stencil lo/hi -> lo-f+1, hi-f+1.
            wt_ = (wt0, wt1)
            wh_ = (wh0, wh1)
            ww_ = (ww0, ww1)
            it0, it1 = tlo - ft + 1, thi - ft + 1
            ih0, ih1 = hlo_ - fh + 1, hhi_ - fh + 1
            iw0, iw1 = wlo_ - fw + 1, whi_ - fw + 1
            gt = 0.0
            gh = 0.0
            gw = 0.0
            for e1 in range(2):
                for e2 in range(2):
                    gt += wh_[e1] * ww_[e2] * (s[it1, 1 + e1, 1 + e2] - s[it0, 1 + e1, 1 + e2])
                    gh += wt_[e1] * ww_[e2] * (s[1 + e1, ih1, 1 + e2] - s[1 + e1, ih0, 1 + e2])
                    gw += wt_[e1] * wh_[e2] * (s[1 + e1, 1 + e2, iw1] - s[1 + e1, 1 + e2, iw0])
            partial[n, 0, c] = ct * gt
            partial[n, 1, c] = ch * gh
            partial[n, 2, c] = cw * gw


def set_threads(count: int) -> None:
    numba.set_num_threads(max(1, min(count, numba.config.NUMBA_NUM_THREADS)))
