"""The tile walk: the gather for small planes, one thread block per channel band.

A block takes one task, (sample, channel, band of destination rows), and works in two
phases. It first copies the *window* its outputs read (every source frame, row and
column that a trilinear tap of the band can touch, zeros where the window leaves the
source, the affine kernels' prologue relu(x * scale + bias) applied once per element)
from global into shared memory, each element read once, with consecutive threads on
consecutive columns and each thread's loads issued in groups before their stores, so a
group is in flight together (one load, then its store, would wait a memory latency per
element). Then each thread takes one (row, column) position of the band and
walks its frames: every output is the window's eight taps blended along W, then H, then
T, in the frame walk's order and with its rule that a zero-weight corner is selected
away, never multiplied, so both walks give the same bits. At temporal stride 1 a frame's
plane value serves the two outputs that read it.

Why: on planes of 28 x 28 and below the frame and row walks spend most of their time on
each task's fixed work (decoding the shift, splitting the task index, choosing a pass),
which eight rows of one column do not amortise; here that work is done once per block,
for a channel's whole band.

The forward at any stride, and the adjoint (grad_x) at stride 1, which is a forward read
with the adjoint's offsets and swapped weights (``decode``). The window is
``FT x FH x FW`` values of the accumulation type in dynamic shared memory, sized by the
plan (``_cuda_plan.tile_walk_layout``). Offsets inside one sample are 32-bit (the plan
checks), the sample's base 64-bit.
"""

from __future__ import annotations

from numba import cuda
from numba import types as nt

from ._cuda_device import divmod_, inlined, ldg, offset
from ._cuda_gather import _entry, device_parts
from ._cuda_scalars import GatherTileScalars

i32 = nt.int32
i64 = nt.int64


def build_tile_gather(storage: str, shift_storage: str, *, loads: int, affine: bool = False):
    """The tile-walk gather for one (storage, shift storage) pair, each thread issuing
    ``loads`` window loads at a time (a compile-time bound); ``affine``: with the input
    prologue (two more pointers, scale and bias, after dst; see ``build_gather``)."""
    p = device_parts(storage, shift_storage)
    acc, load, store, decode = p.acc, p.load, p.store, p.decode
    zero, one, nan = p.zero, p.one, p.nan
    within, plane_index = p.within, p.plane_index

    @inlined
    def channel_affine(scale, bias, c):
        """(scale, bias) of channel c for the prologue (unused without ``affine``)."""
        if affine:
            return acc(ldg(scale, c)), acc(ldg(bias, c))
        return one, zero

    @inlined
    def prologue(v, af):
        """A source value as the walk uses it: relu(v * scale + bias) with ``af`` = (scale,
        bias) in the affine kernels (NaN stays NaN, as in torch.relu), else v."""
        if affine:
            u = cuda.fma(v, af[0], af[1])
            return zero if u <= zero else u
        return v

    @inlined
    def mix(a, b, w0, w1, u0, u1):
        """w0 * a + w1 * b along one axis, a corner whose use flag is off selected away."""
        x = w0 * a if u0 else zero
        return cuda.fma(w1, b, x) if u1 else x

    @inlined
    def plane_value(tile, k, FW, hw):
        """One frame's value at window offset ``k``: its four taps blended along W, then
        H (``hw`` = the row and column weights and use flags)."""
        wh0, wh1, uh0, uh1, ww0, ww1, uw0, uw1 = hw
        above = mix(tile[k], tile[k + 1], ww0, ww1, uw0, uw1)
        below = mix(tile[k + FW], tile[k + FW + 1], ww0, ww1, uw0, uw1)
        return mix(above, below, wh0, wh1, uh0, uh1)

    @inlined
    def tile_body(
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
        FT,
        FH,
        FW,
        inv_bands,
        inv_c,
        inv_plane,
        inv_fw,
        inv_wd,
    ):
        """dst[n, td, c, h, w] = trilinear read of src around (td*st, h*sh, w*sw) +
        offset (the adjoint: stride 1), for tasks (sample, channel, band of ``rows``
        destination rows), one per block (blocks loop over tasks with the grid's
        stride). ``FT x FH x FW``: the window, in shared memory; ``inv_*``: float64
        reciprocals of the bands, C, FH * FW, FW and Wd."""
        tile = cuda.shared.array(0, acc)
        held = cuda.local.array(loads, acc)
        tid = i32(cuda.threadIdx.x)
        threads = i32(cuda.blockDim.x)
        bands = (Hd + rows - 1) // rows
        Ts32, Hs32, Ws32, Wd32 = i32(Ts), i32(Hs), i32(Ws), i32(Wd)
        FT32, FH32, FW32 = i32(FT), i32(FH), i32(FW)
        plane_t = i32(FH32 * FW32)
        size = i32(FT32 * plane_t)
        st32, sh32, sw32 = i32(st), i32(sh), i32(sw)
        # elements from one frame to the next: a plane where channel-major, else C planes
        frame_s = i32(Hs * Ws if channel_major != 0 else C * Hs * Ws)
        frame_d = i32(Hd * Wd if channel_major != 0 else C * Hd * Wd)
        task = i64(cuda.blockIdx.x)
        while task < tasks:
            r, band = divmod_(task, bands, inv_bands)
            n, c = divmod_(r, C, inv_c)
            task += cuda.gridDim.x
            h0 = i32(band * rows)
            nrows = i32(min(rows, Hd - h0))
            positions = i32(nrows * Wd32)
            q = offset(dst, plane_index(n, 0, c, N, Td, C, channel_major) * Hd * Wd + h0 * Wd)
            bad, ot, oh, ow, wt0, wt1, wh0, wh1, ww0, ww1 = decode(
                shift, c, C, adjoint, quantize, pt, ph, pw
            )
            if bad:  # a NaN shift: the channel is NaN
                pos = tid
                while pos < positions:
                    hh, w = divmod_(pos, Wd, inv_wd)
                    d = i32(hh * Wd32 + w)
                    for _ in range(Td):
                        store(q, d, nan)
                        d = i32(d + frame_d)
                    pos += threads
                continue
            # the window: source frames ot.., rows h0 * sh + oh.., columns ow.., zero
            # outside the source (the adjoint's offsets at stride 1 read the same way);
            # each thread issues ``loads`` loads before it stores any (all in flight)
            h_org = i32(h0 * sh32 + oh)
            p = offset(src, plane_index(n, 0, c, N, Ts, C, channel_major) * Hs * Ws)
            af = channel_affine(scale, bias, c)
            first = tid
            while first < size:
                got = i32(0)
                for j in range(loads):
                    i = i32(first + j * threads)
                    v = zero
                    if i < size:
                        f, rem = divmod_(i, plane_t, inv_plane)
                        hr, wc = divmod_(rem, FW, inv_fw)
                        ts = i32(ot + f)
                        hs = i32(h_org + hr)
                        ws = i32(ow + wc)
                        if within(ts, Ts32) & within(hs, Hs32) & within(ws, Ws32):
                            v = load(p, i32(ts * frame_s + hs * Ws32 + ws))
                            got |= i32(1) << j
                    held[j] = v
                for j in range(loads):
                    i = i32(first + j * threads)
                    if i < size:
                        tile[i] = prologue(held[j], af) if got & (i32(1) << j) else zero
                first = i32(first + loads * threads)
            cuda.syncthreads()
            hw = (wh0, wh1, wh0 != zero, wh1 != zero, ww0, ww1, ww0 != zero, ww1 != zero)
            u0 = wt0 != zero  # a zero temporal weight: that frame is not read
            u1 = wt1 != zero
            pos = tid
            while pos < positions:
                hh, w = divmod_(pos, Wd, inv_wd)
                k = i32(hh * sh32 * FW32 + w * sw32)
                d = i32(hh * Wd32 + w)
                # frame 0's plane value, carried from one output to the next at stride 1
                prev = plane_value(tile, k, FW32, hw) if u0 & (st32 == 1) else zero
                for _ in range(Td):
                    if u1:
                        b = plane_value(tile, k + plane_t, FW32, hw)
                        a = zero
                        if u0:
                            a = prev if st32 == 1 else plane_value(tile, k, FW32, hw)
                        out = mix(a, b, wt0, wt1, u0, u1)
                        prev = b
                    else:
                        out = wt0 * plane_value(tile, k, FW32, hw)
                    store(q, d, out)
                    k = i32(k + st32 * plane_t)
                    d = i32(d + frame_d)
                pos += threads
            cuda.syncthreads()  # the window is reused by the block's next task

    return _entry("gather_tile", tile_body, GatherTileScalars, affine, None)
