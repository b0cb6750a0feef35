"""Numba CPU kernels of the RubiksShift op (docs/spec.md §1), parallel over (n, c) columns.

Layout (N, T, C, H, W), C-contiguous (the forward also reads and writes channel-major
clips), used as flat arrays. Per channel the shift is a
tensor product of three 1-D two-tap resamplings, so every kernel is a short chain of
1-D passes over one (n, c) column (its T planes stay in L2 between passes):

* a W pass resamples rows: output column i reads columns ``i*stride + off`` and
  ``+ gap``; the columns whose taps are both inside the row run in one loop (rows back
  to back when the pitches allow, which makes 7-wide planes one loop), the few edge
  columns with checks;
* an H pass blends whole rows and a T pass whole planes with the same tap rule;
* the adjoint of a pass is a gather with mirrored taps at stride 1, else a spread;
* the shift gradient is three dot products of the T-adjoint of grad_y with H/W passes
  of x, summed over blocks of BLOCK products with SIMD partial sums (reassociation only
  inside a block, in an order fixed by the code) and across blocks in float64. A column
  is computed whole by one thread, so the bits do not depend on the thread count.

Indices are cast to unsigned before indexing: numba then emits no negative-index
wrap-around, so the loops vectorise with contiguous SIMD loads instead of gathers.
Per-channel taps come from :func:`tables`. Shifts arrive finite and clamped to
+-SHIFT_LIMIT, so every index fits easily in int64.
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
from numba import njit, prange, types
from numba.core.cpu import CPUTargetOptions
from numba.extending import intrinsic

U = np.uint64  # index type without wrap-around handling

# The helpers a kernel calls per column only index arrays their caller holds: compiled
# without NRT reference counting (numba's ``_nrt`` target option) a call skips the
# atomic increments and decrements of every array it is passed, otherwise most of a
# column's fixed cost on small planes. Plain ``njit`` where numba has no such option.
_NO_REFCOUNTS = {"_nrt": False} if hasattr(CPUTargetOptions, "_nrt") else {}


def _borrowing(**options):
    """``njit(cache=True, **options)`` for a helper that allocates nothing and returns
    no array (so it needs no reference counts)."""
    return njit(cache=True, **_NO_REFCOUNTS, **options)


BLOCK = 256  # shift-gradient products summed in the data dtype, then added in float64

# Column layout of the tables built by ``tables`` (per dimension d and channel c).
# ints: forward offset, interpolation offset, derivative offset, derivative tap gap
# weights: forward (w0, w1), interpolation (w0, w1), derivative (w0, w1), 1 (typed one)


@njit(cache=True)
def tables(shift, quantize, ints, weights):
    """Per (d, c): forward taps (quantized under ``quantize``), the continuous
    interpolation taps and the derivative stencil of docs/spec.md §1.4 (central difference
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


@njit(cache=True)
def prepare(shift, quantize, limit, ints, weights, nan):
    """``tables`` of the (3, C) ``shift``, each value in float64, a NaN read as 0 and
    clamped to +-``limit``; ``nan[c]`` marks the channels holding a NaN. Returns whether
    any does. (One call in place of the half-dozen tensor ops it replaces: the per-call
    host time of a small clip is mostly such calls.)"""
    rows, channels = shift.shape
    clamped = np.empty((rows, channels))
    found = False
    for c in range(channels):
        nan[c] = False
        for d in range(rows):
            v = np.float64(shift[d, c])
            if v != v:
                nan[c] = True
                found = True
                v = 0.0
            clamped[d, c] = min(max(v, -limit), limit)
    tables(clamped, quantize, ints, weights)
    return found


@njit(cache=True)
def finish_shift_grad(partial, nan, normalize, t_factor, out):
    """out[d, c] = the shift gradient from the per-(n, c) sums ``partial[n, d, c]``, added
    over n in order (float64): NaN in the channels ``nan`` marks, else normalised as
    docs/spec.md §1.5 says where ``normalize`` (as the CUDA backend's finalize kernel)."""
    n_batch, _, channels = partial.shape
    for c in range(channels):
        g_t = g_h = g_w = 0.0
        for n in range(n_batch):
            g_t += partial[n, 0, c]
            g_h += partial[n, 1, c]
            g_w += partial[n, 2, c]
        if nan[c]:
            g_t = g_h = g_w = np.nan
        elif normalize:
            if t_factor < 0.0:
                g_t = 1.0 if g_t > 0.0 else (-1.0 if g_t < 0.0 else 0.0)
                g_h = g_w = 0.0
            else:
                g_t *= t_factor
                norm = math.sqrt(g_t * g_t + g_h * g_h + g_w * g_w)
                if norm > 0.0:
                    g_t /= norm
                    g_h /= norm
                    g_w /= norm
        out[0, c] = g_t
        out[1, c] = g_h
        out[2, c] = g_w


# ------------------------------------------------------------------------- primitives


@njit(inline="always", cache=True)
def _int(v):
    """``v`` as a plain int64, not a literal: numba compiles a jitted helper once per
    argument types, and a literal 0 (or True) is a type of its own."""
    return np.int64(v)


@njit(inline="always", cache=True)
def _flag(v):
    """``v`` as a plain bool, not a literal (see ``_int``)."""
    return np.bool_(v)


@njit(inline="always", cache=True)
def _span(n_out, n_in, stride, off):
    """[lo, hi) of the i in [0, n_out) with 0 <= i*stride + off < n_in."""
    last = n_in - 1 - off
    if last < 0:
        return 0, 0
    if stride == 1:  # no integer divisions (they dominate passes over small planes)
        lo = max(0, -off)
        hi = min(n_out, last + 1)
    else:
        lo = 0
        if off < 0:
            lo = (-off + stride - 1) // stride
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
    if stride == 1:
        return 0 <= k < n_src or (two and 0 <= k - gap < n_src)
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
def _wloop(dst, d0, src, s0, n, stride, gap, w0, w1, two):
    """dst[d0 + k] = w0 * src[s0 + k*stride] (+ w1 * src[s0 + k*stride + gap])."""
    if stride == 1:
        _blend(dst, d0, src, s0, w0, s0 + gap, w1, n, two)
    elif stride == 2 and not two:
        # Reading the unused odd neighbour as well makes this a full interleave group (SIMD
        # loads and shuffles instead of gathers); it adds an exact zero, even if not finite.
        zero = w0 - w0
        last = n - 1 if s0 + 2 * n > src.size else n
        for k in range(last):
            b = src[U(s0 + 2 * k + 1)]
            dst[U(d0 + k)] = w0 * src[U(s0 + 2 * k)] + zero * (b if b - b == 0 else zero)
        for k in range(last, n):
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
def _wedge(dst, d0, dp, src, s0, sp, rows, a, b, alo, ahi, n_in, stride, off, gap, w0, w1, two):
    """Columns [a, b) of every row, column by column: which taps are inside is known per
    column, so the loop over rows has no checks (zero outside [alo, ahi))."""
    for i in range(a, b):
        j = i * stride + off
        v0 = alo <= i < ahi and 0 <= j < n_in
        v1 = two and alo <= i < ahi and 0 <= j + gap < n_in
        if v0 and v1:
            for r in range(rows):
                rs = s0 + r * sp + j
                dst[U(d0 + r * dp + i)] = w0 * src[U(rs)] + w1 * src[U(rs + gap)]
        elif v0:
            for r in range(rows):
                dst[U(d0 + r * dp + i)] = w0 * src[U(s0 + r * sp + j)]
        elif v1:
            for r in range(rows):
                dst[U(d0 + r * dp + i)] = w1 * src[U(s0 + r * sp + j + gap)]
        else:
            for r in range(rows):
                dst[U(d0 + r * dp + i)] = 0


@_borrowing()
def _wgather(dst, d0, dp, src, s0, sp, rows, n_out, n_in, stride, off, gap, w0, w1, two):
    """W pass over ``rows`` rows (dst row r at d0 + r*dp, src row r at s0 + r*sp):
    dst[i] = w0 * src[i*stride + off] + w1 * src[i*stride + off + gap], second tap only
    with ``two``, taps outside [0, n_in) read as 0."""
    if rows <= 0 or n_out <= 0:
        return
    lo, hi, alo, ahi = _spans(n_out, n_in, stride, off, gap, two)
    if hi > lo:
        if rows > 1 and sp == stride * n_out and dp == n_out:
            # Rows back to back: one loop over all interior columns; the columns between
            # one row's hi and the next row's lo read in-bounds neighbours, redone below.
            n = (rows - 1) * n_out + hi - lo
            _wloop(dst, d0 + lo, src, s0 + lo * stride + off, n, stride, gap, w0, w1, two)
        else:
            for r in range(rows):
                rs = s0 + r * sp + lo * stride + off
                _wloop(dst, d0 + r * dp + lo, src, rs, hi - lo, stride, gap, w0, w1, two)
    _wedge(dst, d0, dp, src, s0, sp, rows, 0, lo, alo, ahi, n_in, stride, off, gap, w0, w1, two)
    _wedge(dst, d0, dp, src, s0, sp, rows, hi, n_out, alo, ahi, n_in, stride, off, gap, w0, w1, two)


@njit(inline="always", cache=True)
def _wloop_pair(da, db, d0, src, s0, n, stride, a0, a1, b0, b1):
    """da[d0 + k] = a0 * u + a1 * v and db[d0 + k] = b0 * u + b1 * v for the same
    u = src[s0 + k*stride], v = src[s0 + k*stride + 1]."""
    if stride == 1:
        for k in range(n):
            u = src[U(s0 + k)]
            v = src[U(s0 + k + 1)]
            da[U(d0 + k)] = a0 * u + a1 * v
            db[U(d0 + k)] = b0 * u + b1 * v
    elif stride == 2:
        for k in range(n):
            u = src[U(s0 + 2 * k)]
            v = src[U(s0 + 2 * k + 1)]
            da[U(d0 + k)] = a0 * u + a1 * v
            db[U(d0 + k)] = b0 * u + b1 * v
    else:
        for k in range(n):
            u = src[U(s0 + k * stride)]
            v = src[U(s0 + k * stride + 1)]
            da[U(d0 + k)] = a0 * u + a1 * v
            db[U(d0 + k)] = b0 * u + b1 * v


@_borrowing()
def _wgather_pair(da, db, src, s0, sp, rows, n_out, n_in, stride, off, a0, a1, b0, b1):
    """Two W passes with the same taps (off, off + 1), different weights, in one sweep
    over src: dense dst rows of n_out values in ``da`` and ``db``."""
    if rows <= 0 or n_out <= 0:
        return
    lo, hi, alo, ahi = _spans(n_out, n_in, stride, off, 1, True)
    if hi > lo:
        if rows > 1 and sp == stride * n_out:
            n = (rows - 1) * n_out + hi - lo
            _wloop_pair(da, db, lo, src, s0 + lo * stride + off, n, stride, a0, a1, b0, b1)
        else:
            for r in range(rows):
                rs = s0 + r * sp + lo * stride + off
                _wloop_pair(da, db, r * n_out + lo, src, rs, hi - lo, stride, a0, a1, b0, b1)
    for e in range(2):
        d = da if e == 0 else db
        w0 = a0 if e == 0 else b0
        w1 = a1 if e == 0 else b1
        _wedge(d, 0, n_out, src, s0, sp, rows, 0, lo, alo, ahi, n_in, stride, off, 1, w0, w1, True)
        _wedge(
            d, 0, n_out, src, s0, sp, rows, hi, n_out, alo, ahi, n_in, stride, off, 1, w0, w1, True
        )


@_borrowing()
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


@_borrowing()
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


@_borrowing()
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
    I1, YES, NO = _int(1), _flag(True), _flag(False)
    if stride == 1:  # a gather again, taps mirrored
        if two:
            _rgather(
                dst, d0, dp, src, s0, sp, width, n_dst, n_src, I1, -off - gap, gap, w1, w0, YES
            )
        else:
            _rgather(dst, d0, dp, src, s0, sp, width, n_dst, n_src, I1, -off, gap, w0, w1, NO)
    else:
        _rspread(dst, d0, dp, src, s0, sp, width, n_dst, n_src, stride, off, gap, w0, w1, two)


@njit(inline="always", cache=True)
def _wadjoint(dst, d0, dp, src, s0, sp, rows, n_dst, n_src, stride, off, gap, w0, w1, two):
    """Adjoint of ``_wgather`` (dst rows have n_in columns, src rows n_out)."""
    I1, YES, NO = _int(1), _flag(True), _flag(False)
    if stride == 1:
        if two:
            _wgather(dst, d0, dp, src, s0, sp, rows, n_dst, n_src, I1, -off - gap, gap, w1, w0, YES)
        else:
            _wgather(dst, d0, dp, src, s0, sp, rows, n_dst, n_src, I1, -off, gap, w0, w1, NO)
    else:
        _wspread(dst, d0, dp, src, s0, sp, rows, n_dst, n_src, stride, off, gap, w0, w1, two)


@_borrowing(fastmath={"reassoc", "contract"})
def _dot1_block(g, g0, gp, src, a0, b0, sp, rows, n, wa, wb, two):
    """Over ``rows`` rows of n (g rows at g0 + r*gp, src rows at a0/b0 + r*sp): the sum of
    g[k] * (wa * src[a0 + k] + wb * src[b0 + k]) (second term only with ``two``) in the
    data dtype; reassociation lets the loops keep SIMD partial sums."""
    s = wa - wa
    for r in range(rows):
        g1, a1, b1 = g0 + r * gp, a0 + r * sp, b0 + r * sp
        if two:
            for k in range(n):
                s += g[U(g1 + k)] * (wa * src[U(a1 + k)] + wb * src[U(b1 + k)])
        else:
            for k in range(n):
                s += g[U(g1 + k)] * (wa * src[U(a1 + k)])
    return s


@_borrowing()
def _dot_blend(acc, i, g, g0, gp, src, a0, wa, b0, wb, sp, rows, n, two):
    """acc[i] += the sum of ``_dot1_block``, in blocks of about BLOCK products (whole rows,
    or pieces of one long row) summed in the data dtype and added in float64 in a fixed
    order."""
    total = 0.0
    if rows == 1:
        for blk in range(0, n, BLOCK):
            m = min(BLOCK, n - blk)
            v = _dot1_block(g, g0 + blk, gp, src, a0 + blk, b0 + blk, sp, 1, m, wa, wb, two)
            total += np.float64(v)
    else:
        per = max(1, BLOCK // n)
        for r in range(0, rows, per):
            m = min(per, rows - r)
            v = _dot1_block(
                g, g0 + r * gp, gp, src, a0 + r * sp, b0 + r * sp, sp, m, n, wa, wb, two
            )
            total += np.float64(v)
    acc[i] += total


@_borrowing()
def _rdot(acc, idx, g, g0, src, s0, width, n_out, n_in, stride, off, gap, w0, w1, two):
    """acc[idx] += <g rows, row pass of src>: the ``_rgather`` of src (dense rows of
    ``width``) dotted with the n_out dense rows of g at g0, without storing the pass."""
    lo, hi, alo, ahi = _spans(n_out, n_in, stride, off, gap, two)
    for i in range(alo, ahi):  # rows outside [alo, ahi) read nothing
        if lo <= i < hi:
            continue
        j0 = i * stride + off
        j1 = j0 + gap
        v0 = 0 <= j0 < n_in
        v1 = two and 0 <= j1 < n_in
        gr = g0 + i * width
        if v0:
            a0, b0 = s0 + j0 * width, s0 + j1 * width
            _dot_blend(acc, idx, g, gr, width, src, a0, w0, b0, w1, width, 1, width, v1)
        elif v1:
            a0 = s0 + j1 * width
            _dot_blend(acc, idx, g, gr, width, src, a0, w1, a0, w0, width, 1, width, False)
    if hi <= lo:
        return
    if stride == 1:
        j0 = lo + off
        n = (hi - lo) * width
        a0, b0 = s0 + j0 * width, s0 + (j0 + gap) * width
        _dot_blend(acc, idx, g, g0 + lo * width, n, src, a0, w0, b0, w1, n, 1, n, two)
        return
    a0 = s0 + (lo * stride + off) * width
    b0 = a0 + gap * width
    gr = g0 + lo * width
    _dot_blend(acc, idx, g, gr, width, src, a0, w0, b0, w1, stride * width, hi - lo, width, two)


@_borrowing(fastmath={"reassoc", "contract"})
def _dot3_block(gd, gi, g0, gp, a, b, r0, r1, sp, rows, n, i0, i1, d0, d1):
    """Over ``rows`` rows of n (g rows at g0 + r*gp, src rows at r_e + r*sp), with
    a_e = a[r_e + k], b_e = b[r_e + k]: the sums of gd (i0 a_0 + i1 a_1),
    gi (d0 a_0 + d1 a_1) and gi (i0 b_0 + i1 b_1), in the data dtype."""
    st = i0 - i0
    sh = i0 - i0
    sw = i0 - i0
    for r in range(rows):
        g = g0 + r * gp
        p0 = r0 + r * sp
        p1 = r1 + r * sp
        for k in range(n):
            a_0 = a[U(p0 + k)]
            a_1 = a[U(p1 + k)]
            b_0 = b[U(p0 + k)]
            b_1 = b[U(p1 + k)]
            vi = gi[U(g + k)]
            st += gd[U(g + k)] * (i0 * a_0 + i1 * a_1)
            sh += vi * (d0 * a_0 + d1 * a_1)
            sw += vi * (i0 * b_0 + i1 * b_1)
    return st, sh, sw


@_borrowing()
def _dot3(acc, gd, gi, g0, gp, a, b, r0, r1, sp, rows, n, i0, i1, d0, d1):
    """acc[0:3] += the three sums of ``_dot3_block``, in blocks of about BLOCK products
    (whole rows, or pieces of one long row) added in float64 in a fixed order."""
    st = 0.0
    sh = 0.0
    sw = 0.0
    if rows == 1:
        for blk in range(0, n, BLOCK):
            m = min(BLOCK, n - blk)
            bt, bh, bw = _dot3_block(
                gd, gi, g0 + blk, gp, a, b, r0 + blk, r1 + blk, sp, 1, m, i0, i1, d0, d1
            )
            st += np.float64(bt)
            sh += np.float64(bh)
            sw += np.float64(bw)
    else:
        per = max(1, BLOCK // n)
        for r in range(0, rows, per):
            m = min(per, rows - r)
            g, p0, p1 = g0 + r * gp, r0 + r * sp, r1 + r * sp
            bt, bh, bw = _dot3_block(gd, gi, g, gp, a, b, p0, p1, sp, m, n, i0, i1, d0, d1)
            st += np.float64(bt)
            sh += np.float64(bh)
            sw += np.float64(bw)
    acc[0] += st
    acc[1] += sh
    acc[2] += sw


@_borrowing()
def _rdot3(acc, gd, gi, g0, a, b, width, n_out, n_in, stride, off, ws):
    """The three dot products of ``_grad_shift_column`` for one plane in one sweep, when
    the H interpolation and derivative taps coincide (rows off, off + 1, fractional)."""
    i0, i1, d0, d1 = ws
    lo, hi, alo, ahi = _spans(n_out, n_in, stride, off, 1, True)
    for i in range(alo, ahi):  # edge rows: one of the two source rows is outside
        if lo <= i < hi:
            continue
        j = i * stride + off
        wi, wd = (i0, d0) if 0 <= j < n_in else (i1, d1)
        if not 0 <= j < n_in:
            j += 1
        if not 0 <= j < n_in:
            continue
        gr, sr = g0 + i * width, j * width
        _dot_blend(acc, 0, gd, gr, width, a, sr, wi, sr, wi, width, 1, width, False)
        _dot_blend(acc, 1, gi, gr, width, a, sr, wd, sr, wd, width, 1, width, False)
        _dot_blend(acc, 2, gi, gr, width, b, sr, wi, sr, wi, width, 1, width, False)
    if hi <= lo:
        return
    r0 = (lo * stride + off) * width
    if stride == 1:  # interior rows back to back
        n = (hi - lo) * width
        _dot3(acc, gd, gi, g0 + lo * width, n, a, b, r0, r0 + width, n, 1, n, i0, i1, d0, d1)
        return
    g = g0 + lo * width
    _dot3(
        acc, gd, gi, g, width, a, b, r0, r0 + width, stride * width, hi - lo, width, i0, i1, d0, d1
    )


# ----------------------------------------------------------------- plane (H, W) passes


@njit(inline="always", cache=True)
def _plane(dst, d0, src, s0, scratch, h_out, w_out, h_in, w_in, sh, sw, hs, ws, k):
    """dst plane (h_out x w_out) = k * H(W(src plane)), ``hs``/``ws`` the taps
    (off, gap, w0, w1, two) of each pass; ``scratch`` holds h_in * w_out values."""
    I0, YES = _int(0), _flag(True)
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
        dst, d0, w_out, scratch, I0, w_out, w_out, h_out, h_in, sh, oh, gh, k * h0, k * h1, YES
    )


@njit(inline="always", cache=True)
def _plane_adjoint(dst, d0, src, s0, scratch, h_out, w_out, h_in, w_in, sh, sw, hs, ws):
    """Adjoint of ``_plane`` with k = 1: dst plane (h_in x w_in) from src (h_out x w_out);
    ``scratch`` holds h_in * w_out values."""
    I0, YES = _int(0), _flag(True)
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
    _radjoint(scratch, I0, w_out, src, s0, w_out, w_out, h_in, h_out, sh, oh, gh, h0, h1, YES)
    _wadjoint(dst, d0, w_in, scratch, I0, w_out, h_in, w_in, w_out, sw, ow, gw, v0, v1, twow)


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


@_borrowing()
def _forward_column(xf, yf, x0, y0, scratch, z, ints, weights, c, dims, stride, padding):
    """Forward of one (n, c) column: x planes at x0 + t*pitch_in, y planes likewise."""
    I0, YES = _int(0), _flag(True)
    t_in, h_in, w_in, t_out, h_out, w_out, pitch_in, pitch_out = dims
    st, sh, sw = stride[0], stride[1], stride[2]
    p_out = h_out * w_out
    ot, gt, t0, t1, twot = _taps(ints, weights, 0, c, padding[0], 0)
    hs = _taps(ints, weights, 1, c, padding[1], 0)
    ws = _taps(ints, weights, 2, c, padding[2], 0)
    if not twot:  # one source plane per output plane
        for to in range(t_out):
            t = to * st + ot
            d0 = y0 + to * pitch_out
            if 0 <= t < t_in:
                s0 = x0 + t * pitch_in
                _plane(yf, d0, xf, s0, scratch, h_out, w_out, h_in, w_in, sh, sw, hs, ws, t0)
            else:
                _fill0(yf, d0, p_out)
        return
    one = weights[0, c, 6]
    for t in range(t_in):
        if _hit(t, t_out, st, ot, gt, True):
            s0 = x0 + t * pitch_in
            _plane(z, t * p_out, xf, s0, scratch, h_out, w_out, h_in, w_in, sh, sw, hs, ws, one)
    _rgather(yf, y0, pitch_out, z, I0, p_out, p_out, t_out, t_in, st, ot, gt, t0, t1, YES)


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (LLVM's ``llvm.fma``), as ``torch.addcmul`` computes it on
    CPUs with FMA and as the CUDA prologue does."""
    if not (a == b == c and isinstance(a, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return a(a, b, c), codegen


@njit(inline="always", cache=True)
def _affine_relu_run(dst, d0, src, s0, n, scale, bias):
    """dst[d0 + k] = relu(src[s0 + k] * scale + bias) for k < n, the product and sum
    rounded once; NaN stays NaN, as in ``torch.relu``."""
    zero = scale - scale
    for k in range(n):
        v = _fma(src[U(s0 + k)], scale, bias)
        dst[U(d0 + k)] = zero if v < zero else v


@_borrowing()
def _affine_relu_column(dst, xf, x0, pitch, planes, plane, scale, bias):
    """dst[t * plane + k] = relu(x * scale + bias) of the column's ``planes`` planes
    (x planes at x0 + t * pitch)."""
    for t in range(planes):
        _affine_relu_run(dst, t * plane, xf, x0 + t * pitch, plane, scale, bias)


@njit(parallel=True, cache=True)
def affine_relu(x, y, scale, bias, blocks):
    """y = relu(x * scale[c] + bias[c]) (``_affine_relu_run``); x and y (rows, run)
    arrays of the same shape whose row r holds ``run`` values of channel ``r % C`` (a
    C-contiguous clip: rows (n, t, c), runs of a plane; a channel-major one: rows c, runs
    of N*T planes), in ``blocks`` contiguous parallel blocks of rows."""
    rows, run = x.shape
    channels = scale.size
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    chunks = max(1, min(rows, blocks))
    for chunk in prange(chunks):
        for r in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            c = r % channels
            _affine_relu_run(yf, r * run, xf, r * run, run, scale[c], bias[c])


@njit(parallel=True, cache=True)
def affine_relu_frames(x, y, scale, bias, frames, major, blocks):
    """``affine_relu`` with whole-frame temporal shifts: frame t of channel c from frame
    t + frames[c] of x, zeros where that frame is outside the clip. x and y (N, T, C,
    P) arrays, or with ``major`` (C, N, T, P) ones (P: a plane's H*W values); the planes
    in memory order in ``blocks`` contiguous parallel blocks."""
    if major:
        channels, n_batch, t_len, plane = x.shape
        frame_pitch = plane
    else:
        n_batch, t_len, channels, plane = x.shape
        frame_pitch = channels * plane
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    planes = channels * n_batch * t_len
    chunks = max(1, min(planes, blocks))
    for chunk in prange(chunks):
        for task in range(chunk * planes // chunks, (chunk + 1) * planes // chunks):
            if major:
                c, t = task // (n_batch * t_len), task % t_len
            else:
                c, t = task % channels, (task // channels) % t_len
            d0, d = task * plane, frames[c]
            if 0 <= t + d < t_len:
                s0 = d0 + d * frame_pitch
                _affine_relu_run(yf, d0, xf, s0, plane, scale[c], bias[c])
            else:
                _fill0(yf, d0, plane)


@njit(parallel=True, cache=True)
def forward(x, y, ints, weights, stride, padding, blocks, major, scale, bias):
    """y = the (possibly quantized) shift of x, taps from ``tables``; the (n, c) columns
    run in ``blocks`` contiguous parallel blocks (scratch allocated once per block).

    x and y are (N, T, C, H, W) arrays in memory order: C-contiguous, or with ``major``
    (C, N, T, H, W) arrays holding channel-major clips. Where ``scale`` has C values,
    each column is read as relu(x * scale[c] + bias[c]) (into a per-block buffer)."""
    I0 = _int(0)
    if major:
        channels, n_batch, t_in, h_in, w_in = x.shape
        t_out, h_out, w_out = y.shape[2], y.shape[3], y.shape[4]
    else:
        n_batch, t_in, channels, h_in, w_in = x.shape
        t_out, h_out, w_out = y.shape[1], y.shape[3], y.shape[4]
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    p_in, p_out = h_in * w_in, h_out * w_out
    pitch_in = p_in if major else channels * p_in  # from one frame of a column to the next
    pitch_out = p_out if major else channels * p_out
    dims = (t_in, h_in, w_in, t_out, h_out, w_out, pitch_in, pitch_out)
    dims_affine = (t_in, h_in, w_in, t_out, h_out, w_out, p_in, pitch_out)
    affine = scale.size > 0
    tasks = n_batch * channels
    chunks = max(1, min(tasks, blocks))
    for chunk in prange(chunks):
        scratch = np.empty(h_in * w_out, x.dtype)
        z = np.empty(t_in * p_out, x.dtype)
        column = np.empty(t_in * p_in if affine else 0, x.dtype)
        for task in range(chunk * tasks // chunks, (chunk + 1) * tasks // chunks):
            if major:  # tasks in memory order: channel by channel
                c, n = task // n_batch, task % n_batch
                x0 = (c * n_batch + n) * t_in * p_in
                y0 = (c * n_batch + n) * t_out * p_out
            else:
                n, c = task // channels, task % channels
                x0 = (n * t_in * channels + c) * p_in
                y0 = (n * t_out * channels + c) * p_out
            if affine:
                _affine_relu_column(column, xf, x0, pitch_in, t_in, p_in, scale[c], bias[c])
                _forward_column(
                    column, yf, I0, y0, scratch, z, ints, weights, c, dims_affine, stride, padding
                )
            else:
                _forward_column(xf, yf, x0, y0, scratch, z, ints, weights, c, dims, stride, padding)


@_borrowing()
def _grad_x_column(gyf, gxf, g0, x0, g_fwd, scratch, ints, weights, c, dims, stride, padding):
    """grad_x of one (n, c) column; leaves the T adjoint of grad_y in ``g_fwd``."""
    I0 = _int(0)
    t_in, h_in, w_in, t_out, h_out, w_out, pitch_in, pitch_out = dims
    st, sh, sw = stride[0], stride[1], stride[2]
    p_in, p_out = h_in * w_in, h_out * w_out
    ft, fgt, ft0, ft1, ftwo = _taps(ints, weights, 0, c, padding[0], 0)
    hs = _taps(ints, weights, 1, c, padding[1], 0)
    ws = _taps(ints, weights, 2, c, padding[2], 0)
    _radjoint(g_fwd, I0, p_out, gyf, g0, pitch_out, p_out, t_in, t_out, st, ft, fgt, ft0, ft1, ftwo)
    for t in range(t_in):
        d0 = x0 + t * pitch_in
        if _hit(t, t_out, st, ft, fgt, ftwo):
            _plane_adjoint(
                gxf, d0, g_fwd, t * p_out, scratch, h_out, w_out, h_in, w_in, sh, sw, hs, ws
            )
        else:
            _fill0(gxf, d0, p_in)


@_borrowing()
def _grad_shift_column(
    gyf, xf, g0, x0, g_int, have_int, g_der, a, b, acc, ints, weights, c, dims, stride, padding
):
    """Shift-gradient sums of one (n, c) column added to acc[0:3] (T, H, W):
    dT = <D_T^T gy, I_H I_W x>, dH = <I_T^T gy, D_H I_W x>, dW = <I_T^T gy, I_H D_W x>,
    with continuous weights (straight-through under quantize). ``g_int`` already holds
    I_T^T gy when ``have_int``."""
    I0, YES = _int(0), _flag(True)
    t_in, h_in, w_in, t_out, h_out, w_out, pitch_in, pitch_out = dims
    st, sh, sw = stride[0], stride[1], stride[2]
    p_out = h_out * w_out
    pt, ph, pw = padding[0], padding[1], padding[2]
    it, igt, it0, it1, itwo = _taps(ints, weights, 0, c, pt, 1)
    dt, dgt, dt0, dt1, _ = _dtaps(ints, weights, 0, c, pt)
    ih, igh, ih0, ih1, itwoh = _taps(ints, weights, 1, c, ph, 1)
    iw, igw, iw0, iw1, itwow = _taps(ints, weights, 2, c, pw, 1)
    dh, dgh, dh0, dh1, _ = _dtaps(ints, weights, 1, c, ph)
    dw, dgw, dw0, dw1, _ = _dtaps(ints, weights, 2, c, pw)
    if not have_int:
        _radjoint(
            g_int, I0, p_out, gyf, g0, pitch_out, p_out, t_in, t_out, st, it, igt, it0, it1, itwo
        )
    _radjoint(g_der, I0, p_out, gyf, g0, pitch_out, p_out, t_in, t_out, st, dt, dgt, dt0, dt1, YES)
    # fractional components: interpolation and derivative read the same two taps
    pair_w = itwow and dw == iw and dgw == 1
    pair_h = itwoh and dh == ih and dgh == 1
    hws = (ih0, ih1, dh0, dh1)
    for t in range(t_in):
        use_i = _hit(t, t_out, st, it, igt, itwo)
        use_d = _hit(t, t_out, st, dt, dgt, True)
        if not (use_i or use_d):
            continue
        s0 = x0 + t * pitch_in
        gt0 = t * p_out
        if pair_w and use_i:  # fractional W: I_W x and D_W x from the same two columns
            _wgather_pair(a, b, xf, s0, w_in, h_in, w_out, w_in, sw, iw, iw0, iw1, dw0, dw1)
        else:
            _wgather(a, I0, w_out, xf, s0, w_in, h_in, w_out, w_in, sw, iw, igw, iw0, iw1, itwow)
            if use_i:
                _wgather(b, I0, w_out, xf, s0, w_in, h_in, w_out, w_in, sw, dw, dgw, dw0, dw1, YES)
        if pair_h and use_i and use_d:  # fractional H: the three dots in one sweep
            _rdot3(acc, g_der, g_int, gt0, a, b, w_out, h_out, h_in, sh, ih, hws)
            continue
        if use_d:
            _rdot(acc, 0, g_der, gt0, a, 0, w_out, h_out, h_in, sh, ih, igh, ih0, ih1, itwoh)
        if use_i:
            _rdot(acc, 1, g_int, gt0, a, 0, w_out, h_out, h_in, sh, dh, dgh, dh0, dh1, True)
            _rdot(acc, 2, g_int, gt0, b, 0, w_out, h_out, h_in, sh, ih, igh, ih0, ih1, itwoh)


@njit(parallel=True, cache=True)
def backward(
    grad_y, x, grad_x, partial, ints, weights, stride, padding, need_x, need_shift, blocks
):
    """grad_x (adjoint of the forward that was run) and per-(n, c) shift-gradient sums
    ``partial[n, d, c]`` (float64, fixed order); ``blocks`` as in ``forward``."""
    n_batch, t_in, channels, h_in, w_in = x.shape
    _, t_out, _, h_out, w_out = grad_y.shape
    gyf = grad_y.reshape(grad_y.size)
    xf = x.reshape(x.size)
    gxf = grad_x.reshape(grad_x.size)
    p_in, p_out = h_in * w_in, h_out * w_out
    dims = (t_in, h_in, w_in, t_out, h_out, w_out, channels * p_in, channels * p_out)
    tasks = n_batch * channels
    chunks = max(1, min(tasks, blocks))
    for chunk in prange(chunks):
        scratch = np.empty(h_in * w_out, x.dtype)
        b = np.empty(h_in * w_out, x.dtype)
        g_fwd = np.empty(t_in * p_out, x.dtype)
        g_int = np.empty(t_in * p_out, x.dtype)
        g_der = np.empty(t_in * p_out, x.dtype)
        acc = np.empty(3)
        for task in range(chunk * tasks // chunks, (chunk + 1) * tasks // chunks):
            n, c = task // channels, task % channels
            x0 = (n * t_in * channels + c) * p_in
            g0 = (n * t_out * channels + c) * p_out
            # the forward's T taps equal the interpolation taps unless quantized
            same = (
                ints[0, c, 0] == ints[0, c, 1]
                and weights[0, c, 0] == weights[0, c, 2]
                and weights[0, c, 1] == weights[0, c, 3]
            )
            if need_x:
                _grad_x_column(
                    gyf, gxf, g0, x0, g_fwd, scratch, ints, weights, c, dims, stride, padding
                )
            if need_shift:
                acc[:] = 0.0
                have = need_x and same
                _grad_shift_column(
                    gyf, xf, g0, x0, g_fwd if have else g_int, have, g_der, scratch, b, acc,
                    ints, weights, c, dims, stride, padding,
                )  # fmt: skip
                partial[n, 0, c] = acc[0]
                partial[n, 1, c] = acc[1]
                partial[n, 2, c] = acc[2]


_THREADS = threading.local()  # numba's thread count is per calling thread, like torch's


def set_threads(count: int) -> int:
    """Use ``count`` threads (capped at numba's pool); returns the number in use. A count
    this thread set before is not set again, nor read back from numba (a few µs)."""
    if getattr(_THREADS, "asked", None) == count:
        return _THREADS.used
    used = max(1, min(count, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != used:  # reading is a third of the cost of setting
        numba.set_num_threads(used)
    _THREADS.asked, _THREADS.used = count, used
    return used


def blocks(tasks: int, threads: int) -> int:
    """Parallel blocks of (n, c) columns: one per thread (numba splits a prange evenly
    and statically), so each thread allocates its scratch once per call."""
    return max(1, min(tasks, threads))
