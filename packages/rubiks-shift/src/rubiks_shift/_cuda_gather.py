"""The gather kernels: the forward and its adjoint (grad_x).

Two walks. At temporal and row stride 1 (every stride-1 layer, forward and adjoint) the
op launches the *frame walk* (``build_gather(..., frames=True)``, documented on its
kernel): a task is one column of a band of rows through a chunk of frames, and each
source frame it needs is read once. Every other stride takes the *row walk* below.

Row walk. One thread per (destination plane, row chunk, column) *task*, tasks
flattened in that order over a 1-D grid, so consecutive lanes hold consecutive columns of
one row (coalesced loads and stores) and no lane idles on narrow planes.

Taps. Per task, the frames of the two temporal corners that are inside the source and
have a non-zero weight give one or two frame pointers (``kind`` 2 or 4; the same for all
lanes of a plane, so warps do not diverge on it). Columns go through two *slots*, the
lane's column c0 and c0 + 1, both inside the row: each column corner that is inside the
source (and, in the adjoint, divisible by the stride) lands in one slot with its weight,
and a per-lane mask drops the slots no corner landed in. Edge lanes therefore run the
same instructions as interior ones, with the column offset an immediate. Masked slots and
rows outside the source are selected away, never multiplied by a zero weight, so an inf
in an unread position cannot leak in as inf * 0 = NaN; every load address is in range.

Row walks. At row stride 1 (the forward at stride 1 along H, and every adjoint at stride
1) output row h reads source rows h + o and h + o + 1: the walk reuses the previous row's
value, so each output costs one row of taps. Rows go in unrolled groups of ``group`` with
branch-free read-only loads (``ld.global.nc``, which ptxas moves ahead of the group's
stores): a thread keeps ``group`` rows of loads in flight. The adjoint at row stride 2
reads one source row per destination row; other strides take a generic walk.

Per-thread quantities (channel, shift, weights, taps) are computed once per task;
intra-plane offsets are 32-bit (the wrapper guarantees planes < 2^31 elements), plane
bases 64-bit. A NaN shift makes its channel NaN.

Compile time: device functions are ``inlined`` by NVVM, not copied in Numba's IR, so
each walk may be called from several sites at little cost (the row walk inlines each
walk twice, for kind 2 and 4).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

from numba import cuda
from numba import types as nt

from ._cuda_device import (
    acc_constants,
    accumulator,
    check_parameters,
    divmod_,
    fresh,
    inlined,
    kernel_decorator,
    ldg,
    load_store,
    masked_load,
    offset,
    plane_index,
    relu_fma,
    scalar_types,
    storage_pointer,
    warp_all,
)
from ._cuda_scalars import GatherFramesScalars, GatherScalars

i32 = nt.int32
i64 = nt.int64


def shift_signature(storage: str, shift_storage: str, affine: bool, scalars) -> tuple:
    """The signature of a kernel that shifts ``storage`` tensors by ``shift_storage``
    shifts (the gathers, the pixel walk, the quantized pass): (src, shift, dst[, scale,
    bias], *scalars), the scalars the fields of the ``_cuda_scalars`` block ``scalars``;
    ``affine``: with the input prologue's scale and bias."""
    acc = accumulator(storage)
    ptr = storage_pointer(storage)
    affine_ptrs = (nt.CPointer(acc),) * 2 if affine else ()
    pointers = (ptr, storage_pointer(shift_storage), ptr, *affine_ptrs)
    return pointers + scalar_types(scalars, acc)


def gather_signature(
    storage: str, shift_storage: str, affine: bool = False, frames: bool = False
) -> tuple:
    """The signature of a gather kernel (``shift_signature``): its scalars a
    ``GatherScalars`` block (the row walk) or, with ``frames``, a ``GatherFramesScalars``
    one (the frame walk); ``affine``: with the input prologue."""
    scalars = GatherFramesScalars if frames else GatherScalars
    return shift_signature(storage, shift_storage, affine, scalars)


def _entry(name: str, body, scalars, affine: bool, registers: int | None):
    """Kernel ``name``(src, shift, dst[, scale, bias], *fields) running the inlined device
    function ``body``(src, shift, dst, scale, bias, *fields), ``fields`` those of the
    ``_cuda_scalars`` block ``scalars`` (generated, so each walk's scalar order is written
    there only; ``body``'s parameters are checked against it). Without ``affine`` the
    scale and bias slots get ``src``, which the body then never reads."""
    python_body = getattr(body, "py_func", None) or body.fn  # the simulator's: fn
    check_parameters(python_body, ("src", "shift", "dst", "scale", "bias"), scalars)
    fields = ", ".join(scalars._fields)
    head = "src, shift, dst, scale, bias" if affine else "src, shift, dst"
    slots = "scale, bias" if affine else "src, src"
    source = f"def {name}({head}, {fields}):\n    body(src, shift, dst, {slots}, {fields})\n"
    namespace = {"body": body, "__name__": __name__}
    exec(source, namespace)
    return kernel_decorator(registers)(namespace[name])


def device_parts(storage: str, shift_storage: str, narrow: bool = False) -> SimpleNamespace:
    """The device functions the gather kernels share, for one (storage, shift storage)
    pair (``narrow``: column slots of a one-column source)."""
    acc, zero, one, half, limit, nan = acc_constants(storage)
    load, store = load_store(storage)
    load_if = masked_load(storage)
    sload, _ = load_store(shift_storage)
    prologue = relu_fma(storage)

    @inlined
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

    @inlined
    def within(i, n):
        return (i >= 0) & (i < n)

    @inlined
    def clamp(i, n):
        """i clamped to [0, n - 1], as int32."""
        return i32(min(max(i32(i), i32(0)), i32(n - 1)))

    @inlined
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

    @inlined
    def column_slots(okw0, ws0, ww0, okw1, ws1, ww1, Ws32):
        """(c0, m0, m1, v0, v1): the lane's first column slot c0 (slots c0 and c0 + 1,
        both inside the row; c0 = 0 in the ``narrow`` kernel), the slots' masks and
        column weights. Each active column corner (inside, divisible, non-zero weight)
        lands in one slot."""
        act0 = okw0 & (ww0 != zero)
        act1 = okw1 & (ww1 != zero)
        c0 = i32(0) if narrow else i32(min(max(ws0 if act0 else ws1, i32(0)), i32(Ws32 - 2)))
        s00 = act0 & (ws0 == c0)
        s10 = act1 & (ws1 == c0)
        s01 = act0 & (ws0 == c0 + 1)
        s11 = act1 & (ws1 == c0 + 1)
        m0 = s00 | s10
        m1 = (s01 | s11) & (not narrow)
        v0 = (ww0 if s00 else zero) + (ww1 if s10 else zero)
        v1 = (ww0 if s01 else zero) + (ww1 if s11 else zero)
        return c0, m0, m1, v0, v1

    @inlined
    def fill(dcol, h0, h1, Wd, value):
        for h in range(h0, h1):
            store(dcol, i32(h * Wd), value)

    @inlined
    def channel_shift(shift, c, C):
        """(t, h, w) components of channel c's shift in the accumulation type."""
        return acc(sload(shift, c)), acc(sload(shift, C + c)), acc(sload(shift, 2 * C + c))

    @inlined
    def decode(shift, c, C, adjoint, quantize, pt, ph, pw):
        """(bad, ot, oh, ow, wt0, wt1, wh0, wh1, ww0, ww1) of channel c: ``bad`` for a NaN
        shift; per axis the source offset of corner 0 and the corner weights, for the
        forward (offset floor(shift) - padding) or the adjoint (padding - floor(shift) -
        1, corner weights swapped)."""
        s_t, s_h, s_w = channel_shift(shift, c, C)
        bad = s_t != s_t or s_h != s_h or s_w != s_w
        ft, wt0, wt1 = axis(s_t, quantize)
        fh, wh0, wh1 = axis(s_h, quantize)
        fw, ww0, ww1 = axis(s_w, quantize)
        if adjoint:
            return (
                bad,
                i32(pt - ft - 1),
                i32(ph - fh - 1),
                i32(pw - fw - 1),
                wt1,
                wt0,
                wh1,
                wh0,
                ww1,
                ww0,
            )
        return bad, i32(ft - pt), i32(fh - ph), i32(fw - pw), wt0, wt1, wh0, wh1, ww0, ww1

    parts = dict(locals())
    del parts["storage"], parts["shift_storage"]
    return SimpleNamespace(**parts)


def build_gather(
    storage: str,
    shift_storage: str,
    *,
    registers: int | None,
    group: int = 0,
    frame_rows: int = 0,
    narrow: bool = False,
    frames: bool = False,
    affine: bool = False,
):
    """The gather kernel for one (storage, shift storage) pair with register cap
    ``registers``: the row walk, ``group`` rows per unrolled row group (``narrow``: the
    variant for a one-column source, W = 1, which never reads a second column slot), or
    with ``frames`` the frame walk (temporal and row stride 1), ``frame_rows`` its
    compile-time bound on rows per task (``Tuning``'s ``row_walk_*`` / ``frame_walk_*``).
    ``affine``: the forward with an input prologue, two more pointer arguments (scale,
    bias: per-channel, accumulation dtype) after dst, each source value read as
    relu(value * scale[c] + bias[c]) (the batch norm and ReLU before a shift, in the same
    pass)."""
    if (frame_rows if frames else group) < 1:
        raise ValueError("the row walk needs group >= 1, the frame walk frame_rows >= 1")
    p = device_parts(storage, shift_storage, narrow)
    acc, load, store, load_if = p.acc, p.load, p.store, p.load_if
    zero, one, nan = p.zero, p.one, p.nan
    within, clamp, source = p.within, p.clamp, p.source
    column_slots, fill, decode = p.column_slots, p.fill, p.decode
    prologue = p.prologue

    @inlined
    def channel_affine(scale, bias, c):
        """(scale, bias) of channel c for the prologue (unused without ``affine``)."""
        if affine:
            return acc(ldg(scale, c)), acc(ldg(bias, c))
        return one, zero

    @inlined
    def activate(v, af):
        """A loaded source value as the walk uses it: ``relu_fma`` with ``af`` = (scale,
        bias) in the affine kernels, else v."""
        if affine:
            return prologue(v, af[0], af[1], False)
        return v

    @inlined
    def activate_if(v, bits, mask, af):
        """``activate`` of a masked load: 0 where nothing was read (``bits & mask`` == 0)."""
        if affine:
            return prologue(v, af[0], af[1], (bits & mask) == 0)
        return v

    @inlined
    def taps(kind, tp, r):
        """Weighted sum of the taps of the source row at offset r. ``tp`` = (pa, pb, m0,
        m1, k00, k01, k10, k11, af): frame pointers pa, pb at the lane's column slot 0 (slot
        1 is the next column, always inside the row), per-lane slot masks m0, m1, weights
        k[frame][slot], the prologue's (scale, bias). ``kind``: 4 = two frames, 2 = one
        frame (pa)."""
        pa, pb, m0, m1, k00, k01, k10, k11, af = tp
        qa = offset(pa, r)  # row pointers: the column slots are immediate offsets
        if narrow:  # one-column source: slot 0 only
            if kind == 4:
                b0 = activate(load(offset(pb, r), 0), af)
                v0 = cuda.fma(k10, b0, k00 * activate(load(qa, 0), af))
            else:
                v0 = k00 * activate(load(qa, 0), af)
            return v0 if m0 else zero
        if kind == 4:
            qb = offset(pb, r)
            v0 = cuda.fma(k10, activate(load(qb, 0), af), k00 * activate(load(qa, 0), af))
            v1 = cuda.fma(k11, activate(load(qb, 1), af), k01 * activate(load(qa, 1), af))
        else:
            v0 = k00 * activate(load(qa, 0), af)
            v1 = k01 * activate(load(qa, 1), af)
        return (v0 if m0 else zero) + (v1 if m1 else zero)

    @inlined
    def row_value(kind, tp, hs, hs_off, Hs):
        """Taps of source row hs (offset hs_off = hs * Ws), 0 outside [0, Hs); an
        out-of-range row is not read (row 0 is loaded in its place and discarded)."""
        ok = nt.uint32(hs) < nt.uint32(Hs)
        v = taps(kind, tp, hs_off if ok else i32(0))
        return v if ok else zero

    @inlined
    def walk_two(kind, tp, dcol, h0, h1, hs, Hs, Ws, Wd, wr0, wr1):
        """Row stride 1, two source rows per output (hs + h - h0 and the next), with
        row reuse, in unrolled groups of ``group`` rows (row and destination offsets
        advanced by addition, int32 throughout)."""
        use0 = wr0 != zero  # one row weight is 0 for quantized / integer shifts: that row
        use1 = wr1 != zero  # is not added (an inf there must not become inf * 0 = NaN)
        prev = row_value(kind, tp, hs, i32(hs * Ws), Hs)
        h = h0
        row = i32(hs + 1)
        row_off = i32(row * Ws)
        d_off = i32(h0 * Wd)
        while h < h1:
            for _ in range(group):
                cur = row_value(kind, tp, row, row_off, Hs)
                if use0 & use1:
                    out = cuda.fma(wr1, cur, wr0 * prev)
                else:
                    out = wr0 * prev if use0 else wr1 * cur
                if h < h1:
                    store(dcol, d_off, out)
                prev = cur
                h = i32(h + 1)
                row = i32(row + 1)
                row_off = i32(row_off + Ws)
                d_off = i32(d_off + Wd)

    @inlined
    def walk_adjoint2(kind, tp, dcol, h0, h1, o, Hs, Ws, Wd, wr0, wr1):
        """The adjoint at row stride 2: destination row h is read by exactly one source
        row, (h + o + e) / 2 with e = (h + o) & 1 (weight wr_e)."""
        h = h0
        d_off = i32(h0 * Wd)
        while h < h1:
            for _ in range(group):
                num = i32(h + o)
                odd = (num & 1) != 0
                q = i32((num + 1) >> 1) if odd else i32(num >> 1)
                weight = wr1 if odd else wr0
                v = row_value(kind, tp, q, i32(q * Ws), Hs)
                if h < h1:
                    store(dcol, d_off, weight * v if weight != zero else zero)
                h = i32(h + 1)
                d_off = i32(d_off + Wd)

    @inlined
    def walk_generic(kind, tp, dcol, h0, h1, m, o, d, Hs, Ws, Wd, wr0, wr1):
        """Any row stride: output row h reads source rows (h * m + o + e) / d, e = 0, 1,
        where valid and weighted."""
        h = h0
        d_off = i32(h0 * Wd)
        while h < h1:
            if True:  # one row at a time: the rare strides (compile time)
                hh0, ok0 = source(h, m, o, 0, d, Hs)
                hh1, ok1 = source(h, m, o, 1, d, Hs)
                v0 = taps(kind, tp, i32(hh0 * Ws) if ok0 else i32(0))
                v1 = taps(kind, tp, i32(hh1 * Ws) if ok1 else i32(0))
                total = (wr0 * v0 if ok0 & (wr0 != zero) else zero) + (
                    wr1 * v1 if ok1 & (wr1 != zero) else zero
                )
                if h < h1:
                    store(dcol, d_off, total)
                h = i32(h + 1)
                d_off = i32(d_off + Wd)

    @inlined
    def walk(kind, tp, dcol, h0, h1, mh, oh, dh, Hs, Ws, Wd, wh0, wh1):
        """The row walk for this task's row stride and row weights."""
        if (mh == 1) & (dh == 1):
            walk_two(kind, tp, dcol, h0, h1, i32(h0 + oh), Hs, Ws, Wd, wh0, wh1)
        elif (mh == 1) & (dh == 2):
            walk_adjoint2(kind, tp, dcol, h0, h1, oh, Hs, Ws, Wd, wh0, wh1)
        else:
            walk_generic(kind, tp, dcol, h0, h1, mh, oh, dh, Hs, Ws, Wd, wh0, wh1)

    @inlined
    def gather_body(
        src,
        shift,
        dst,
        scale,
        bias,
        tasks,
        N,
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
        channel_major,
        rows,
        frames_inner,
        inv_plane,
        inv_w,
        inv_c,
        inv_t,
        inv_chunks,
        inv_n,
    ):
        """dst[n, td, c, h, w] = trilinear read of src around (td*st, h*sh, w*sw) + offset.

        Forward: src = x, dst = y, offset = floor(shift) - padding. Adjoint: src =
        grad_y, dst = grad_x, offset = padding - floor(shift) - 1, corner weights swapped,
        and each source index divided by the stride (only divisible ones are read).
        ``rows`` destination rows per task; ``frames_inner`` the task order (1: the
        destination frames of one sample, channel and row chunk side by side, so the
        warps of a block that read one source frame run together and hit in L1; 0:
        destination planes in memory order); ``channel_major``: both tensors' planes in
        (C, N, T) order instead of (N, T, C); ``inv_*`` the float64 reciprocals of the
        tasks per plane, Wd, C, Td, the row chunks per plane and N (index splitting
        without integer division). Threads loop over tasks with the grid's stride (the
        launch may size the grid to what is resident at once)."""
        g = i64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        grid_stride = i64(cuda.gridDim.x) * cuda.blockDim.x
        chunks = (Hd + rows - 1) // rows
        per_plane = chunks * Wd
        Hs32 = i32(Hs)
        Ws32 = i32(Ws)
        Wd32 = i32(Wd)
        Ts32 = i32(Ts)
        while g < tasks:
            if frames_inner != 0:  # (n, c, chunk, td, w)
                r, w = divmod_(g, Wd, inv_w)
                r, td = divmod_(r, Td, inv_t)
                r, chunk = divmod_(r, chunks, inv_chunks)
                n, c = divmod_(r, C, inv_c)
                plane = plane_index(n, td, c, N, Td, C, channel_major)
            else:  # destination planes in memory order, (n, td, c) or (c, n, td)
                plane, k = divmod_(g, per_plane, inv_plane)
                chunk, w = divmod_(k, Wd, inv_w)
                if channel_major != 0:
                    r, td = divmod_(plane, Td, inv_t)
                    c, n = divmod_(r, N, inv_n)
                else:
                    slab, c = divmod_(plane, C, inv_c)
                    n, td = divmod_(slab, Td, inv_t)
            g += grid_stride
            h0 = i32(chunk * rows)
            h1 = i32(min(h0 + rows, Hd))
            dcol = offset(dst, plane * Hd * Wd + w)
            bad, ot, oh, ow, wt0, wt1, wh0, wh1, ww0, ww1 = decode(
                shift, c, C, adjoint, quantize, pt, ph, pw
            )
            if bad:
                fill(dcol, h0, h1, Wd32, nan)
                continue
            # source index of corner e along each axis: forward i*stride + offset + e;
            # adjoint (i + offset + e) / stride where divisible (the outputs that read i)
            mt_, dt_ = (i32(1), i32(st)) if adjoint else (i32(st), i32(1))
            mh_, dh_ = (i32(1), i32(sh)) if adjoint else (i32(sh), i32(1))
            mw_, dw_ = (i32(1), i32(sw)) if adjoint else (i32(sw), i32(1))
            ts0, okt0 = source(td, mt_, ot, 0, dt_, Ts32)
            ts1, okt1 = source(td, mt_, ot, 1, dt_, Ts32)
            ws0, okw0 = source(w, mw_, ow, 0, dw_, Ws32)
            ws1, okw1 = source(w, mw_, ow, 1, dw_, Ws32)
            # frames: the active ones (inside the source, non-zero weight), first one
            # first; columns: the corners with a non-zero weight (the same for the whole
            # channel), each with a per-lane mask (inside the source and, in the adjoint,
            # divisible by the stride) so the lanes of a warp take one path
            fa0 = okt0 & (wt0 != zero)
            fa1 = okt1 & (wt1 != zero)
            frames = i32(fa0) + i32(fa1)
            if frames == 0:
                fill(dcol, h0, h1, Wd32, zero)
                continue
            c0, m0, m1, v0, v1 = column_slots(okw0, ws0, ww0, okw1, ws1, ww1, Ws32)
            t_a = ts0 if fa0 else ts1
            wa = wt0 if fa0 else wt1
            plane_s = Hs * Ws
            ta = clamp(t_a, Ts32)
            pa = offset(src, plane_index(n, ta, c, N, Ts, C, channel_major) * plane_s + c0)
            pb = pa
            if frames == 2:
                tb = clamp(ts1, Ts32)
                pb = offset(src, plane_index(n, tb, c, N, Ts, C, channel_major) * plane_s + c0)
            af = channel_affine(scale, bias, c)
            tp = (pa, pb, m0, m1, wa * v0, wa * v1, wt1 * v0, wt1 * v1, af)
            if frames == 2:
                walk(4, tp, dcol, h0, h1, mh_, oh, dh_, Hs32, Ws32, Wd32, wh0, wh1)
            else:
                walk(2, tp, dcol, h0, h1, mh_, oh, dh_, Hs32, Ws32, Wd32, wh0, wh1)

    if not frames:
        return _entry("gather", gather_body, GatherScalars, affine, registers)
    R = frame_rows
    R1 = frame_rows + 1  # rows per pass (a compile-time size)

    @inlined
    def row_bits(hs0, nrows, Hs, m):
        """Bit j (j <= R) set where pass row j (source row hs0 + j) is read through a column
        slot of mask ``m``: inside [0, Hs) and the band (j <= nrows)."""
        lo = i32(min(max(-hs0, i32(0)), i32(R + 1)))
        hi = i32(min(nrows, i32(Hs - 1 - hs0)))
        if not m or hi < lo:
            return i32(0)
        return i32(((i32(1) << (hi + 1)) - 1) & ~((i32(1) << lo) - 1))

    @inlined
    def edge_pass(p, Ws, bits, vw, rw, cur):
        """cur[k] for k < R: one source frame interpolated along W and H at destination
        row h0 + k, from its pass rows k and k + 1, for any band (``p``: the frame at source
        row hs0 and the lane's first column slot, possibly outside the frame; ``bits`` =
        (b0, b1) the rows each slot reads, from ``row_bits``; ``vw`` = (v0, v1, af) the
        slots' column weights and the prologue's (scale, bias), ``rw`` = (wh0, wh1, use0,
        use1) the row weights). Each slot is a
        masked load (0 where it reads nothing, the address then unused) from a pointer
        bumped row by row, all issued before any is used. The prologue's zeroing of a slot
        not read (relu(0 * scale + bias) need not be 0) tests the same row bit through a
        shifted copy of the mask: tested through the load's own mask, ptxas shares the
        load's predicate with it, keeps one predicate per load live until its use, and
        having too few predicate registers issues the affine pass's loads one at a time
        (0-1 in flight instead of 17; sm_90 SASS, ptxas 13.0)."""
        v0, v1, af = vw
        wh0, wh1, use0, use1 = rw
        b0 = fresh(bits[0])  # the per-row masks are derived in the pass, not held
        b1 = fresh(bits[1])
        k0 = fresh(i32(bits[0] << 1))  # the prologue's masks: row j at bit j + 1
        k1 = fresh(i32(bits[1] << 1))
        ra = cuda.local.array(R1, acc)
        rb = cuda.local.array(R1, acc)
        for j in range(R + 1):
            ra[j] = load_if(p, 0, b0, 1 << j)
            rb[j] = load_if(p, 1, b1, 1 << j)
            p = offset(p, Ws)
        above = zero
        for j in range(R + 1):
            a = activate_if(ra[j], k0, 2 << j, af)
            b = activate_if(rb[j], k1, 2 << j, af)
            below = cuda.fma(v1, b, v0 * a)
            if j > 0:
                x = wh0 * above if use0 else zero
                cur[j - 1] = cuda.fma(wh1, below, x) if use1 else x
            above = below

    @inlined
    def slots(p, m0, m1, v0, v1, af):
        """A row's value from its two column slots at ``p`` (both inside the row), a slot
        outside the source selected away (never multiplied: its value may be inf)."""
        a = activate(load(p, 0), af)
        b = activate(load(p, 1), af)
        return cuda.fma(v1, b if m1 else zero, v0 * (a if m0 else zero))

    @inlined
    def inner_pass2(p, Ws, cols, wh0, wh1, cur):
        """``edge_pass`` for a band whose R + 1 rows are all inside the source and two row
        taps of non-zero weight: plain loads, no row masks."""
        m0, m1, v0, v1, af = cols
        above = slots(p, m0, m1, v0, v1, af)
        for j in range(R):
            p = offset(p, Ws)
            below = slots(p, m0, m1, v0, v1, af)
            cur[j] = cuda.fma(wh1, below, wh0 * above)
            above = below

    @inlined
    def inner_pass1(p, Ws, cols, wh, cur):
        """``edge_pass`` for one row tap (weight ``wh``; ``p`` at its first row) whose R rows
        are all inside the source: R plain rows of loads."""
        m0, m1, v0, v1, af = cols
        for j in range(R):
            cur[j] = wh * slots(p, m0, m1, v0, v1, af)
            p = offset(p, Ws)

    @inlined
    def blend(q, Wd, nrows, prev, cur, tw):
        """Destination rows k < nrows at ``q`` from the previous and current passes (``tw``
        = (wt0, wt1, a_ok, b_ok): temporal weights and which pass is used; an unused pass
        is selected away, not multiplied)."""
        wt0, wt1, a_ok, b_ok = tw
        if a_ok & b_ok & (nrows == R):  # the common case: both frames, a full band
            for k in range(R):
                store(q, i32(k * Wd), cuda.fma(wt1, cur[k], wt0 * prev[k]))
        else:
            for k in range(R):
                x = wt0 * prev[k] if a_ok else zero
                out = cuda.fma(wt1, cur[k], x) if b_ok else x
                if k < nrows:
                    store(q, 0, out)
                q = offset(q, Wd)

    @inlined
    def frames_body(
        src,
        shift,
        dst,
        scale,
        bias,
        tasks,
        N,
        C,
        Ts,
        Hs,
        Ws,
        Td,
        Hd,
        Wd,
        sw,
        pt,
        ph,
        pw,
        adjoint,
        quantize,
        channel_major,
        rows,
        frames_per_task,
        inv_w,
        inv_bands,
        inv_chunks,
        inv_c,
    ):
        """The gather at temporal and row stride 1 (any column stride), walking frames.

        Task (n, c, frame chunk, row band, column), column fastest: ``rows`` (<= R)
        destination rows of one column for ``frames_per_task`` consecutive destination
        frames. The task reads each source frame it needs once (one pass: its R + 1 rows
        interpolated along W and H, kept in registers) and blends consecutive passes along
        T, so the frames' two readers share one load, and rows are reused within a pass:
        per output about (1 + 1/rows)(1 + 1/frames) source rows instead of the row walk's
        two. A warp whose tasks' bands are all full and inside the source takes plain
        loads (one row tap: R rows, two: R + 1); a warp with a band at the top or bottom,
        or a partial one, takes the masked ``edge_pass`` (chosen per warp: lanes on
        different passes would run both). Same arguments as ``gather`` otherwise
        (``inv_*``: float64 reciprocals of Wd, the bands, the frame chunks and C)."""
        g = i64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        grid_stride = i64(cuda.gridDim.x) * cuda.blockDim.x
        bands = (Hd + rows - 1) // rows
        chunks = (Td + frames_per_task - 1) // frames_per_task
        Hs32 = i32(Hs)
        Ws32 = i32(Ws)
        Wd32 = i32(Wd)
        Ts32 = i32(Ts)
        # elements from one frame to the next: a plane where channel-major, else C planes
        frame_s = Hs * Ws if channel_major != 0 else C * Hs * Ws
        frame_d = Hd * Wd if channel_major != 0 else C * Hd * Wd
        prev = cuda.local.array(R, acc)
        cur = cuda.local.array(R, acc)
        while g < tasks:
            r, w = divmod_(g, Wd, inv_w)
            r, band = divmod_(r, bands, inv_bands)
            r, chunk = divmod_(r, chunks, inv_chunks)
            n, c = divmod_(r, C, inv_c)
            g += grid_stride
            h0 = i32(band * rows)
            nrows = i32(min(rows, Hd - h0))
            t0 = i32(chunk * frames_per_task)
            t1 = i32(min(t0 + frames_per_task, Td))
            d0 = plane_index(n, t0, c, N, Td, C, channel_major) * Hd * Wd + h0 * Wd + w
            bad, ot, oh, ow, wt0, wt1, wh0, wh1, ww0, ww1 = decode(
                shift, c, C, adjoint, quantize, pt, ph, pw
            )
            if bad:
                for td in range(t0, t1):
                    fill(offset(dst, d0 + (td - t0) * frame_d), 0, nrows, Wd32, nan)
                continue
            mw_, dw_ = (i32(1), i32(sw)) if adjoint else (i32(sw), i32(1))
            ws0, okw0 = source(w, mw_, ow, 0, dw_, Ws32)
            ws1, okw1 = source(w, mw_, ow, 1, dw_, Ws32)
            c0, m0, m1, v0, v1 = column_slots(okw0, ws0, ww0, okw1, ws1, ww1, Ws32)
            use0 = wh0 != zero  # a zero row or temporal weight: that row or frame is not
            use1 = wh1 != zero  # read (an inf there must not become inf * 0 = NaN)
            use_t0 = wt0 != zero
            use_t1 = wt1 != zero
            hs0 = i32(h0 + oh)
            # the pass: 2 = two row taps, 1 = one (its first row at hs1), both with every
            # row inside the source and a full band; 0 = the masked edge pass
            hs1 = i32(hs0 if use0 else hs0 + 1)
            taps = i32(use0) + i32(use1)
            last = i32(hs1 + R - 2 + taps)  # the pass's last source row
            mode = taps if (nrows == R) & (hs1 >= 0) & (last < Hs32) else i32(0)
            # one pass for the whole warp (a warp spanning an edge band takes the edge
            # pass: diverged, it would run both)
            mode = i32(2) if warp_all(mode == 2) else (i32(1) if warp_all(mode == 1) else i32(0))
            bits = (row_bits(hs0, nrows, Hs32, m0), row_bits(hs0, nrows, Hs32, m1))
            af = channel_affine(scale, bias, c)
            cols = (m0, m1, v0, v1, af)
            rw = (wh0, wh1, use0, use1)
            wh = wh0 if use0 else wh1
            plane0 = plane_index(n, 0, c, N, Ts, C, channel_major) * Hs * Ws + c0
            base = plane0 + (hs1 if mode == 1 else hs0) * Ws  # may lie outside src (edge)
            prev_ok = False
            # destination frame td blends source frames td + ot (corner 0) and td + ot + 1
            # (corner 1): pass td reads frame td + ot + 1 and completes td, from the
            # prologue t0 - 1 (bounded by the task's frames whatever the shift). The frame
            # pointers advance by a frame per pass (pa may lie outside src where unused).
            pa = offset(src, base + i64(t0 + ot) * frame_s)
            q = offset(dst, d0 - frame_d)
            td = i32(t0 - 1)
            while td < t1:
                s = i32(td + ot + 1)
                need = (use_t0 & (td + 1 < t1)) | (use_t1 & (td >= t0))
                cur_ok = within(s, Ts32) & need
                if cur_ok:
                    if mode == 2:
                        inner_pass2(pa, Ws32, cols, wh0, wh1, cur)
                    elif mode == 1:
                        inner_pass1(pa, Ws32, cols, wh, cur)
                    else:
                        edge_pass(pa, Ws32, bits, (v0, v1, af), rw, cur)
                if td >= t0:
                    blend(q, Wd32, nrows, prev, cur, (wt0, wt1, prev_ok & use_t0, cur_ok & use_t1))
                for k in range(R):
                    prev[k] = cur[k]
                prev_ok = cur_ok
                pa = offset(pa, frame_s)
                q = offset(q, frame_d)
                td = i32(td + 1)

    return _entry("gather_frames", frames_body, GatherFramesScalars, affine, registers)
