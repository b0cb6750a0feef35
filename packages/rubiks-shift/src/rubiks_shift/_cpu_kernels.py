"""Numba CPU kernels of the RubiksShift op (SPEC §1), parallel over (n, c) columns.

Layout (N, T, C, H, W), C-contiguous, used as flat arrays. Per channel the shift is a
tensor product of three 1-D two-tap resamplings, so every kernel is a short chain of
1-D passes over one (n, c) column (its T planes stay in L2 between passes):

* a W pass resamples rows: output column i reads columns ``i*stride + off`` and
  ``+ gap``; the columns whose taps are both inside the row run in one loop (rows back
  to back when the pitches allow, which makes 7-wide planes one loop), the few edge
  columns with checks;
* an H pass blends whole rows and a T pass whole planes with the same tap rule;
* the adjoint of a pass is a gather with mirrored taps at stride 1, else a spread.

Indices are cast to unsigned before indexing: numba then emits no negative-index
wrap-around, so the loops vectorise with contiguous SIMD loads instead of gathers.
Per-channel taps come from :func:`tables`. Shifts arrive finite and clamped to
+-SHIFT_LIMIT, so every index fits easily in int64.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

U = np.uint64  # index type without wrap-around handling
LANES = 32  # float64 partial sums per dot product (fixed order: deterministic)

# Column layout of the tables built by ``tables`` (per dimension d and channel c).
# ints: forward offset, interpolation offset, derivative offset, derivative tap gap
# weights: forward (w0, w1), interpolation (w0, w1), derivative (w0, w1), 1 (typed one)


@njit(cache=True)
def tables(shift, quantize, ints, weights):
    """Per (d, c): forward taps (quantized under ``quantize``), the continuous
    interpolation taps and the derivative stencil of SPEC §1.4 (central difference
    ``(x[f+1] - x[f-1]) / 2`` at an exactly integer component). Weights are written in
    the data's dtype; padding is not included in the offsets."""
    for d in range(shift.shape[0]):
        for c in range(shift.shape[1]):
            s = shift[d, c]
            f = math.floor(s)
            r = s - f
            if quantize:
                ints[d, c, 0] = np.int64(math.floor(s + 0.5))
                weights[d, c, 0] = 1.0
                weights[d, c, 1] = 0.0
            else:
                ints[d, c, 0] = np.int64(f)
                weights[d, c, 0] = 1.0 - r
                weights[d, c, 1] = r
            ints[d, c, 1] = np.int64(f)
            weights[d, c, 2] = 1.0 - r
            weights[d, c, 3] = r
            if r == 0.0:
                ints[d, c, 2] = np.int64(f) - 1
                ints[d, c, 3] = 2
                weights[d, c, 4] = -0.5
                weights[d, c, 5] = 0.5
            else:
                ints[d, c, 2] = np.int64(f)
                ints[d, c, 3] = 1
                weights[d, c, 4] = -1.0
                weights[d, c, 5] = 1.0
            weights[d, c, 6] = 1.0


# ------------------------------------------------------------------------- primitives


@njit(inline="always", cache=True)
def _span(n_out, n_in, stride, off):
    """[lo, hi) of the i in [0, n_out) with 0 <= i*stride + off < n_in."""
    lo = 0
    if off < 0:
        lo = (-off + stride - 1) // stride
    last = n_in - 1 - off
    if last < 0:
        return 0, 0
    hi = min(n_out, last // stride + 1)
    if lo > hi:
        lo = hi
    return lo, hi


@njit(inline="always", cache=True)
def _spans(n_out, n_in, stride, off, gap, two):
    """(lo, hi, alo, ahi): [lo, hi) has every used tap inside, outside [alo, ahi) none is;
    when [lo, hi) is empty it is placed at alo so that [alo, ahi) is all checked."""
    lo, hi = _span(n_out, n_in, stride, off)
    if not two:
        return lo, hi, lo, hi
    lo1, hi1 = _span(n_out, n_in, stride, off + gap)
    alo, ahi = _span(n_out, n_in + gap, stride, off + gap)
    lo, hi = max(lo, lo1), min(hi, hi1)
    if hi <= lo:
        lo, hi = alo, alo
    return lo, hi, alo, ahi


@njit(inline="always", cache=True)
def _hit(j, n_src, stride, off, gap, two):
    """Whether destination index j is read by some i in [0, n_src) (j = i*stride + off
    or, with ``two``, j = i*stride + off + gap)."""
    k = j - off
    if k >= 0 and k % stride == 0 and k // stride < n_src:
        return True
    k -= gap
    return two and k >= 0 and k % stride == 0 and k // stride < n_src


@njit(inline="always", cache=True)
def _fill0(dst, d0, n):
    for k in range(n):
        dst[U(d0 + k)] = 0


@njit(inline="always", cache=True)
def _blend(dst, d0, src, a0, wa, b0, wb, n, two):
    """dst[d0 + k] = wa * src[a0 + k] (+ wb * src[b0 + k]), k in [0, n)."""
    if two:
        for k in range(n):
            dst[U(d0 + k)] = wa * src[U(a0 + k)] + wb * src[U(b0 + k)]
    else:
        for k in range(n):
            dst[U(d0 + k)] = wa * src[U(a0 + k)]


@njit(inline="always", cache=True)
def _decimate(dst, d0, src, s0, n):
    """dst[d0 + k] = src[s0 + 2k] for 4-byte items, moved as the matching halves of 8-byte
    words: contiguous SIMD loads where a stride-2 loop would use gathers."""
    pairs = min(n, (src.size - s0 + s0 % 2) // 2)
    lo = s0 - s0 % 2
    words = src[lo : lo + 2 * pairs].view(np.uint64)
    out = dst[d0 : d0 + pairs].view(np.uint32)
    if s0 % 2 == 0:
        for k in range(pairs):
            out[k] = np.uint32(words[k] & np.uint64(0xFFFFFFFF))
    else:
        for k in range(pairs):
            out[k] = np.uint32(words[k] >> np.uint64(32))
    for k in range(pairs, n):
        dst[U(d0 + k)] = src[U(s0 + 2 * k)]


@njit(inline="always", cache=True)
def _wloop(dst, d0, src, s0, n, stride, gap, w0, w1, two):
    """dst[d0 + k] = w0 * src[s0 + k*stride] (+ w1 * src[s0 + k*stride + gap])."""
    if stride == 1:
        _blend(dst, d0, src, s0, w0, s0 + gap, w1, n, two)
    elif stride == 2 and not two and w0 == 1.0 and src.itemsize == 4:
        _decimate(dst, d0, src, s0, n)
    elif stride == 2 and not two:
        for k in range(n):
            dst[U(d0 + k)] = w0 * src[U(s0 + 2 * k)]
    elif stride == 2 and gap == 1:  # constant gaps: interleaved SIMD loads, not gathers
        for k in range(n):
            dst[U(d0 + k)] = w0 * src[U(s0 + 2 * k)] + w1 * src[U(s0 + 2 * k + 1)]
    elif stride == 2 and gap == 2:
        for k in range(n):
            dst[U(d0 + k)] = w0 * src[U(s0 + 2 * k)] + w1 * src[U(s0 + 2 * k + 2)]
    else:
        for k in range(n):
            v = w0 * src[U(s0 + k * stride)]
            if two:
                v += w1 * src[U(s0 + k * stride + gap)]
            dst[U(d0 + k)] = v


@njit(inline="always", cache=True)
def _wedge(dst, d0, src, s0, a, b, alo, ahi, n_in, stride, off, gap, w0, w1, two):
    """Columns [a, b) of one row with per-tap checks (zero outside [alo, ahi))."""
    for i in range(a, b):
        v = w0 - w0
        if alo <= i < ahi:
            j = i * stride + off
            if 0 <= j < n_in:
                v += w0 * src[U(s0 + j)]
            j += gap
            if two and 0 <= j < n_in:
                v += w1 * src[U(s0 + j)]
        dst[U(d0 + i)] = v


@njit(cache=True)
def _wgather(dst, d0, dp, src, s0, sp, rows, n_out, n_in, stride, off, gap, w0, w1, two):
    """W pass over ``rows`` rows (dst row r at d0 + r*dp, src row r at s0 + r*sp):
    dst[i] = w0 * src[i*stride + off] + w1 * src[i*stride + off + gap], second tap only
    with ``two``, taps outside [0, n_in) read as 0."""
    if rows <= 0 or n_out <= 0:
        return
    lo, hi, alo, ahi = _spans(n_out, n_in, stride, off, gap, two)
    if hi > lo and rows > 1 and sp == stride * n_out and dp == n_out:
        # Rows back to back: one loop over all interior columns; the columns between
        # one row's hi and the next row's lo read in-bounds neighbours and are redone.
        n = (rows - 1) * n_out + hi - lo
        _wloop(dst, d0 + lo, src, s0 + lo * stride + off, n, stride, gap, w0, w1, two)
        for r in range(rows):
            rd, rs = d0 + r * dp, s0 + r * sp
            _wedge(dst, rd, src, rs, 0, lo, alo, ahi, n_in, stride, off, gap, w0, w1, two)
            _wedge(dst, rd, src, rs, hi, n_out, alo, ahi, n_in, stride, off, gap, w0, w1, two)
        return
    for r in range(rows):
        rd, rs = d0 + r * dp, s0 + r * sp
        if hi > lo:
            _wloop(dst, rd + lo, src, rs + lo * stride + off, hi - lo, stride, gap, w0, w1, two)
        _wedge(dst, rd, src, rs, 0, lo, alo, ahi, n_in, stride, off, gap, w0, w1, two)
        _wedge(dst, rd, src, rs, hi, n_out, alo, ahi, n_in, stride, off, gap, w0, w1, two)


@njit(cache=True)
def _wspread(dst, d0, dp, src, s0, sp, rows, n_dst, n_src, stride, off, gap, w0, w1, two):
    """Adjoint of a W pass with stride >= 2: each dst row (n_dst columns) is zeroed, then
    dst[i*stride + off] += w0 * src[i] and dst[i*stride + off + gap] += w1 * src[i]."""
    lo0, hi0 = _span(n_src, n_dst, stride, off)
    lo1, hi1 = _span(n_src, n_dst, stride, off + gap)
    if not two:
        lo1, hi1 = 0, 0
    # columns where both taps land, as one interleaved loop (disjoint when gap < stride)
    blo, bhi = max(lo0, lo1), min(hi0, hi1)
    pair = two and gap < stride and bhi > blo
    if not pair:
        blo, bhi = lo0, lo0
    for r in range(rows):
        rd, rs = d0 + r * dp, s0 + r * sp
        _fill0(dst, rd, n_dst)
        if pair:
            b = rd + off
            if stride == 2:  # then gap == 1
                for i in range(blo, bhi):
                    v = src[U(rs + i)]
                    dst[U(b + 2 * i)] = w0 * v
                    dst[U(b + 2 * i + 1)] = w1 * v
            else:
                for i in range(blo, bhi):
                    v = src[U(rs + i)]
                    dst[U(b + i * stride)] = w0 * v
                    dst[U(b + i * stride + gap)] = w1 * v
        # the rest of each tap's columns, outside [blo, bhi)
        for i in range(lo0, min(hi0, blo)):
            dst[U(rd + i * stride + off)] += w0 * src[U(rs + i)]
        for i in range(max(lo0, bhi), hi0):
            dst[U(rd + i * stride + off)] += w0 * src[U(rs + i)]
        for i in range(lo1, min(hi1, blo)):
            dst[U(rd + i * stride + off + gap)] += w1 * src[U(rs + i)]
        for i in range(max(lo1, bhi), hi1):
            dst[U(rd + i * stride + off + gap)] += w1 * src[U(rs + i)]


@njit(cache=True)
def _rgather(dst, d0, dp, src, s0, sp, width, n_out, n_in, stride, off, gap, w0, w1, two):
    """Row (or plane) pass: dst row i = w0 * src row (i*stride + off) + w1 * src row
    (i*stride + off + gap), rows of ``width`` contiguous elements, rows outside
    [0, n_in) read as 0."""
    lo, hi, alo, ahi = _spans(n_out, n_in, stride, off, gap, two)
    for i in range(n_out):
        if lo <= i < hi:
            continue
        rd = d0 + i * dp
        j0 = i * stride + off
        j1 = j0 + gap
        v0 = alo <= i < ahi and 0 <= j0 < n_in
        v1 = two and alo <= i < ahi and 0 <= j1 < n_in
        if v0 and v1:
            _blend(dst, rd, src, s0 + j0 * sp, w0, s0 + j1 * sp, w1, width, True)
        elif v0:
            _blend(dst, rd, src, s0 + j0 * sp, w0, 0, w1, width, False)
        elif v1:
            _blend(dst, rd, src, s0 + j1 * sp, w1, 0, w0, width, False)
        else:
            _fill0(dst, rd, width)
    if hi <= lo:
        return
    j0 = lo * stride + off
    if stride == 1 and sp == width and dp == width:
        n = (hi - lo) * width
        _blend(dst, d0 + lo * dp, src, s0 + j0 * sp, w0, s0 + (j0 + gap) * sp, w1, n, two)
        return
    for i in range(lo, hi):
        j = i * stride + off
        _blend(dst, d0 + i * dp, src, s0 + j * sp, w0, s0 + (j + gap) * sp, w1, width, two)


@njit(cache=True)
def _rspread(dst, d0, dp, src, s0, sp, width, n_dst, n_src, stride, off, gap, w0, w1, two):
    """Adjoint of a row pass: dst rows zeroed, then dst row (i*stride + off) += w0 * src
    row i and dst row (i*stride + off + gap) += w1 * src row i."""
    for j in range(n_dst):
        _fill0(dst, d0 + j * dp, width)
    for e in range(2 if two else 1):
        w = w0 if e == 0 else w1
        o = off + e * gap
        lo, hi = _span(n_src, n_dst, stride, o)
        for i in range(lo, hi):
            rd = d0 + (i * stride + o) * dp
            rs = s0 + i * sp
            for k in range(width):
                dst[U(rd + k)] += w * src[U(rs + k)]


@njit(inline="always", cache=True)
def _radjoint(dst, d0, dp, src, s0, sp, width, n_dst, n_src, stride, off, gap, w0, w1, two):
    """Adjoint of ``_rgather`` (dst has the gather's n_in rows, src its n_out rows)."""
    if stride == 1:  # a gather again, taps mirrored
        if two:
            _rgather(
                dst, d0, dp, src, s0, sp, width, n_dst, n_src, 1, -off - gap, gap, w1, w0, True
            )
        else:
            _rgather(dst, d0, dp, src, s0, sp, width, n_dst, n_src, 1, -off, gap, w0, w1, False)
    else:
        _rspread(dst, d0, dp, src, s0, sp, width, n_dst, n_src, stride, off, gap, w0, w1, two)


@njit(inline="always", cache=True)
def _wadjoint(dst, d0, dp, src, s0, sp, rows, n_dst, n_src, stride, off, gap, w0, w1, two):
    """Adjoint of ``_wgather`` (dst rows have n_in columns, src rows n_out)."""
    if stride == 1:
        if two:
            _wgather(dst, d0, dp, src, s0, sp, rows, n_dst, n_src, 1, -off - gap, gap, w1, w0, True)
        else:
            _wgather(dst, d0, dp, src, s0, sp, rows, n_dst, n_src, 1, -off, gap, w0, w1, False)
    else:
        _wspread(dst, d0, dp, src, s0, sp, rows, n_dst, n_src, stride, off, gap, w0, w1, two)


@njit(inline="always", cache=True)
def _dot(acc, a, a0, b, b0, n):
    """acc[l] += a[a0 + k] * b[b0 + k] over k = l mod LANES, products and sums in
    float64 in a fixed order."""
    full = n - n % LANES
    for base in range(0, full, LANES):
        for lane in range(LANES):
            acc[lane] += np.float64(a[U(a0 + base + lane)]) * np.float64(b[U(b0 + base + lane)])
    for k in range(full, n):
        acc[k - full] += np.float64(a[U(a0 + k)]) * np.float64(b[U(b0 + k)])


@njit(inline="always", cache=True)
def _sum(acc):
    s = 0.0
    for lane in range(LANES):
        s += acc[lane]
    return s


# ----------------------------------------------------------------- plane (H, W) passes


@njit(cache=True)
def _plane(dst, d0, src, s0, scratch, h_out, w_out, h_in, w_in, sh, sw, hs, ws, k):
    """dst plane (h_out x w_out) = k * H(W(src plane)), ``hs``/``ws`` the taps
    (off, gap, w0, w1, two) of each pass; ``scratch`` holds h_in * w_out values."""
    oh, gh, h0, h1, twoh = hs
    ow, gw, v0, v1, twow = ws
    if not twoh:  # one source row per output row: the W pass reads x rows directly
        lo, hi = _span(h_out, h_in, sh, oh)
        _fill0(dst, d0, lo * w_out)
        _fill0(dst, d0 + hi * w_out, (h_out - hi) * w_out)
        k0 = k * h0
        _wgather(
            dst, d0 + lo * w_out, w_out, src, s0 + (lo * sh + oh) * w_in, sh * w_in,
            hi - lo, w_out, w_in, sw, ow, gw, k0 * v0, k0 * v1, twow,
        )  # fmt: skip
        return
    # rows of src that some output row reads
    r_lo = max(0, oh)
    r_hi = min(h_in, (h_out - 1) * sh + oh + gh + 1)
    if r_hi <= r_lo:
        _fill0(dst, d0, h_out * w_out)
        return
    _wgather(
        scratch, r_lo * w_out, w_out, src, s0 + r_lo * w_in, w_in,
        r_hi - r_lo, w_out, w_in, sw, ow, gw, v0, v1, twow,
    )  # fmt: skip
    _rgather(
        dst, d0, w_out, scratch, 0, w_out, w_out, h_out, h_in, sh, oh, gh, k * h0, k * h1, True
    )


@njit(cache=True)
def _plane_adjoint(dst, d0, src, s0, scratch, h_out, w_out, h_in, w_in, sh, sw, hs, ws):
    """Adjoint of ``_plane`` with k = 1: dst plane (h_in x w_in) from src (h_out x w_out);
    ``scratch`` holds h_in * w_out values."""
    oh, gh, h0, h1, twoh = hs
    ow, gw, v0, v1, twow = ws
    if not twoh:  # src row i goes to dst row i*sh + oh only
        lo, hi = _span(h_out, h_in, sh, oh)
        if hi <= lo:
            _fill0(dst, d0, h_in * w_in)
            return
        first, last = lo * sh + oh, (hi - 1) * sh + oh
        _fill0(dst, d0, first * w_in)
        _fill0(dst, d0 + (last + 1) * w_in, (h_in - last - 1) * w_in)
        if sh > 1:
            for i in range(lo, hi - 1):
                _fill0(dst, d0 + (i * sh + oh + 1) * w_in, (sh - 1) * w_in)
        _wadjoint(
            dst, d0 + first * w_in, sh * w_in, src, s0 + lo * w_out, w_out,
            hi - lo, w_in, w_out, sw, ow, gw, h0 * v0, h0 * v1, twow,
        )  # fmt: skip
        return
    _radjoint(scratch, 0, w_out, src, s0, w_out, w_out, h_in, h_out, sh, oh, gh, h0, h1, True)
    _wadjoint(dst, d0, w_in, scratch, 0, w_out, h_in, w_in, w_out, sw, ow, gw, v0, v1, twow)


@njit(inline="always", cache=True)
def _taps(ints, weights, d, c, pad, col):
    """(off, gap, w0, w1, two) of table column group ``col`` (0 forward, 1 interp)."""
    w1 = weights[d, c, 2 * col + 1]
    return ints[d, c, col] - pad, np.int64(1), weights[d, c, 2 * col], w1, w1 != 0.0


@njit(inline="always", cache=True)
def _dtaps(ints, weights, d, c, pad):
    """(off, gap, w0, w1, two) of the derivative stencil."""
    return ints[d, c, 2] - pad, ints[d, c, 3], weights[d, c, 4], weights[d, c, 5], True


# ------------------------------------------------------------------------------ kernels


@njit(parallel=True, cache=True)
def forward(x, y, ints, weights, stride, padding):
    """y = the (possibly quantized) shift of x, taps from ``tables``."""
    n_batch, t_in, channels, h_in, w_in = x.shape
    _, t_out, _, h_out, w_out = y.shape
    st, sh, sw = stride[0], stride[1], stride[2]
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    p_in, p_out = h_in * w_in, h_out * w_out
    for task in prange(n_batch * channels):
        n, c = task // channels, task % channels
        ot, gt, t0, t1, twot = _taps(ints, weights, 0, c, padding[0], 0)
        hs = _taps(ints, weights, 1, c, padding[1], 0)
        ws = _taps(ints, weights, 2, c, padding[2], 0)
        x0 = (n * t_in * channels + c) * p_in
        y0 = (n * t_out * channels + c) * p_out
        scratch = np.empty(h_in * w_out, x.dtype)
        if not twot:  # one source plane per output plane
            for to in range(t_out):
                t = to * st + ot
                d0 = y0 + to * channels * p_out
                if 0 <= t < t_in:
                    s0 = x0 + t * channels * p_in
                    _plane(yf, d0, xf, s0, scratch, h_out, w_out, h_in, w_in, sh, sw, hs, ws, t0)
                else:
                    _fill0(yf, d0, p_out)
            continue
        z = np.empty(t_in * p_out, x.dtype)
        one = weights[0, c, 6]
        for t in range(t_in):
            if _hit(t, t_out, st, ot, gt, True):
                s0 = x0 + t * channels * p_in
                _plane(z, t * p_out, xf, s0, scratch, h_out, w_out, h_in, w_in, sh, sw, hs, ws, one)
        _rgather(
            yf, y0, channels * p_out, z, 0, p_out, p_out, t_out, t_in, st, ot, gt, t0, t1, True
        )


@njit(parallel=True, cache=True)
def backward(grad_y, x, grad_x, partial, ints, weights, stride, padding, need_x, need_shift):
    """grad_x (adjoint of the forward that was run) and per-(n, c) shift-gradient sums
    ``partial[n, d, c]`` (float64, fixed order)."""
    n_batch, t_in, channels, h_in, w_in = x.shape
    _, t_out, _, h_out, w_out = grad_y.shape
    st, sh, sw = stride[0], stride[1], stride[2]
    pt, ph, pw = padding[0], padding[1], padding[2]
    gyf = grad_y.reshape(grad_y.size)
    xf = x.reshape(x.size)
    gxf = grad_x.reshape(grad_x.size)
    p_in, p_out = h_in * w_in, h_out * w_out
    for task in prange(n_batch * channels):
        n, c = task // channels, task % channels
        x0 = (n * t_in * channels + c) * p_in
        g0 = (n * t_out * channels + c) * p_out
        gpitch, xpitch = channels * p_out, channels * p_in
        scratch = np.empty(h_in * w_out, x.dtype)
        # forward taps (quantized or not) and continuous interpolation taps
        ft, fgt, ft0, ft1, ftwo = _taps(ints, weights, 0, c, pt, 0)
        it, igt, it0, it1, itwo = _taps(ints, weights, 0, c, pt, 1)
        same = ft == it and ft0 == it0 and ft1 == it1
        g_fwd = np.empty(t_in * p_out, x.dtype)
        # g_fwd[t] = (T adjoint of grad_y)[t], the input of the (H, W) adjoint of plane t
        _radjoint(g_fwd, 0, p_out, gyf, g0, gpitch, p_out, t_in, t_out, st, ft, fgt, ft0, ft1, ftwo)
        if need_x:
            hs = _taps(ints, weights, 1, c, ph, 0)
            ws = _taps(ints, weights, 2, c, pw, 0)
            for t in range(t_in):
                d0 = x0 + t * xpitch
                if _hit(t, t_out, st, ft, fgt, ftwo):
                    _plane_adjoint(
                        gxf, d0, g_fwd, t * p_out, scratch, h_out, w_out, h_in, w_in, sh, sw,
                        hs, ws,
                    )  # fmt: skip
                else:
                    _fill0(gxf, d0, p_in)
        if not need_shift:
            continue
        g_int = g_fwd
        if not same:
            g_int = np.empty(t_in * p_out, x.dtype)
            _radjoint(
                g_int, 0, p_out, gyf, g0, gpitch, p_out, t_in, t_out, st, it, igt, it0, it1, itwo
            )
        dt, dgt, dt0, dt1, _ = _dtaps(ints, weights, 0, c, pt)
        g_der = np.empty(t_in * p_out, x.dtype)
        _radjoint(g_der, 0, p_out, gyf, g0, gpitch, p_out, t_in, t_out, st, dt, dgt, dt0, dt1, True)
        ih, igh, ih0, ih1, itwoh = _taps(ints, weights, 1, c, ph, 1)
        iw, igw, iw0, iw1, itwow = _taps(ints, weights, 2, c, pw, 1)
        dh, dgh, dh0, dh1, _ = _dtaps(ints, weights, 1, c, ph)
        dw, dgw, dw0, dw1, _ = _dtaps(ints, weights, 2, c, pw)
        a = np.empty(h_in * w_out, x.dtype)  # I_W x[t]
        b = np.empty(h_in * w_out, x.dtype)  # D_W x[t]
        q = np.empty(p_out, x.dtype)
        acc_t = np.zeros(LANES)
        acc_h = np.zeros(LANES)
        acc_w = np.zeros(LANES)
        for t in range(t_in):
            use_i = _hit(t, t_out, st, it, igt, itwo)
            use_d = _hit(t, t_out, st, dt, dgt, True)
            if not (use_i or use_d):
                continue
            s0 = x0 + t * xpitch
            _wgather(a, 0, w_out, xf, s0, w_in, h_in, w_out, w_in, sw, iw, igw, iw0, iw1, itwow)
            if use_d:  # dT: <D_T^T gy, I_H I_W x>
                _rgather(q, 0, w_out, a, 0, w_out, w_out, h_out, h_in, sh, ih, igh, ih0, ih1, itwoh)
                _dot(acc_t, g_der, t * p_out, q, 0, p_out)
            if use_i:  # dH: <I_T^T gy, D_H I_W x>, dW: <I_T^T gy, I_H D_W x>
                _rgather(q, 0, w_out, a, 0, w_out, w_out, h_out, h_in, sh, dh, dgh, dh0, dh1, True)
                _dot(acc_h, g_int, t * p_out, q, 0, p_out)
                _wgather(b, 0, w_out, xf, s0, w_in, h_in, w_out, w_in, sw, dw, dgw, dw0, dw1, True)
                _rgather(q, 0, w_out, b, 0, w_out, w_out, h_out, h_in, sh, ih, igh, ih0, ih1, itwoh)
                _dot(acc_w, g_int, t * p_out, q, 0, p_out)
        partial[n, 0, c] = _sum(acc_t)
        partial[n, 1, c] = _sum(acc_h)
        partial[n, 2, c] = _sum(acc_w)


def set_threads(count: int) -> None:
    numba.set_num_threads(max(1, min(count, numba.config.NUMBA_NUM_THREADS)))
