"""The slab walk: the stride-1 gather on small planes, one thread block per slab.

A *slab* is one channel of one sample: T frames of H x W values. At stride 1 with no
padding every output of a slab reads only that slab (the shift is the same for the whole
channel, and taps outside the clip read zero), so a block can take a whole slab in two
phases:

1. Copy the slab into shared memory, in the accumulation type, each value read once (the
   affine kernels apply the prologue relu(x * scale + bias) there, once per value).
   Consecutive threads take consecutive values of a frame, so loads are coalesced; each
   thread issues ``LOADS`` loads before it stores any.
2. Each thread takes plane positions (h, w) and walks the frames: a source frame's value
   at the position is its four spatial taps blended along W, then H; consecutive source
   frames are blended along T, each frame's value serving the two outputs that read it.

The arithmetic is the frame walk's (``_cuda_gather``), operation for operation: per
axis ``fma(w1, b, w0 * a)``, a tap outside the source or with a zero weight selected
away, never multiplied (an inf in an unread place cannot become NaN), so both walks give
the same values (up to the sign of a zero).

Why: on planes of 28 x 28 and below a frame-walk task spends most of its time on fixed
work (splitting the task index, decoding the shift, choosing its pass) and on the
latency of its global loads, which short columns do not amortise. Here the shift is
decoded once per thread for a whole slab, every global load is a plain coalesced read,
and the taps come from shared memory.

The plan (``_cuda_plan.slab_walk_applies``) takes it at temporal, row and column stride
1 without padding, where source and destination have the same shape, a slab fits the
shared array (``Tuning.slab_walk_values`` values) and its planes have at most
``Tuning.slab_walk_max_plane`` pixels: the forward, the affine forward and the adjoint
(grad_x), in both layouts. Offsets within a slab are 32-bit, the slab's base 64-bit.
"""

from __future__ import annotations

from numba import cuda
from numba import types as nt

from ._cuda_device import (
    accumulator,
    inlined,
    ldg,
    offset,
    scalar_types,
    storage_pointer,
)
from ._cuda_gather import _entry, device_parts
from ._cuda_scalars import GatherSlabScalars
from ._cuda_tuning import slab_capacity

i32 = nt.int32
i64 = nt.int64
u32 = nt.uint32  # shared-array indices: unsigned, so Numba emits no negative-index wrap

LOADS = 8  # loads each thread issues before it stores any (phase 1)


def slab_signature(storage: str, shift_storage: str, affine: bool = False) -> tuple:
    """The signature of a slab-walk kernel: (src, shift, dst[, scale, bias], *scalars)."""
    acc = accumulator(storage)
    ptr = storage_pointer(storage)
    affine_ptrs = (nt.CPointer(acc),) * 2 if affine else ()
    pointers = (ptr, storage_pointer(shift_storage), ptr, *affine_ptrs)
    return pointers + scalar_types(GatherSlabScalars, acc)


def build_slab_gather(
    storage: str,
    shift_storage: str,
    *,
    values: int,
    affine: bool = False,
    registers: int | None = None,
):
    """``gather_slab`` (or, with ``affine``, ``gather_slab_affine``: two more pointers,
    scale and bias, after dst) for one (storage, shift storage) pair, with a shared array
    of ``slab_capacity(storage, values)`` elements of the accumulation type."""
    capacity = slab_capacity(storage, values)
    p = device_parts(storage, shift_storage)
    acc, load, store, decode = p.acc, p.load, p.store, p.decode
    zero, nan = p.zero, p.nan
    within, clamp = p.within, p.clamp

    @inlined
    def channel_affine(scale, bias, c):
        """(scale, bias) of channel c for the prologue (unused without ``affine``)."""
        if affine:
            return acc(ldg(scale, c)), acc(ldg(bias, c))
        return zero, zero

    @inlined
    def prologue(v, sc, bi):
        """relu(v * scale + bias) in the affine kernels (NaN stays NaN), else v."""
        if affine:
            u = cuda.fma(v, sc, bi)
            return zero if u <= zero else u
        return v

    @inlined
    def mix(a, b, w0, w1, u0, u1):
        """w0 * a + w1 * b along one axis, a tap whose use flag is off selected away."""
        x = w0 * a if u0 else zero
        return cuda.fma(w1, b, x) if u1 else x

    @inlined
    def plane_value(tile, base, k, wh0, wh1, ww0, ww1, u):
        """One source frame's value at a position: the four taps at ``base`` + k[i] (k =
        (k00, k01, k10, k11), row-major corners) blended along W, then H; ``u`` = (uh0,
        uh1, uw0, uw1) the taps' use flags."""
        above = mix(tile[u32(base + k[0])], tile[u32(base + k[1])], ww0, ww1, u[2], u[3])
        below = mix(tile[u32(base + k[2])], tile[u32(base + k[3])], ww0, ww1, u[2], u[3])
        return mix(above, below, wh0, wh1, u[0], u[1])

    @inlined
    def slab_body(
        src,
        shift,
        dst,
        scale,
        bias,
        N,
        C,
        T,
        H,
        W,
        pt,
        ph,
        pw,
        adjoint,
        quantize,
        channel_major,
        step_frames,
        step_pos,
    ):
        """dst[n, t, c] = the trilinear read of src's slab (n, c) at (t, h, w) + offset
        (forward, or the adjoint's offsets and swapped weights), one block per slab:
        blocks in the slabs' memory order, (c, n) where ``channel_major``, else (n, c).
        ``step_frames`` / ``step_pos``: a thread's move through its slab in phase 1, whole
        frames and places (threads per block = step_frames * H * W + step_pos)."""
        tile = cuda.shared.array(capacity, acc)
        tid = i32(cuda.threadIdx.x)
        threads = i32(cuda.blockDim.x)
        g = i64(cuda.blockIdx.x)
        if channel_major != 0:
            c = g // N
            n = g - c * N
        else:
            n = g // C
            c = g - n * C
        T32, H32, W32 = i32(T), i32(H), i32(W)
        HW = i32(H32 * W32)
        frame = HW if channel_major != 0 else i32(C * HW)  # a frame to the next
        base = g * T * HW if channel_major != 0 else (n * T * C + c) * HW
        s_in = offset(src, base)
        s_out = offset(dst, base)
        # phase 1: the slab into shared memory, LOADS values per thread at a time (issued
        # before the shift is decoded, so that their latency and the shift's overlap)
        sc, bi = channel_affine(scale, bias, c)
        total = i32(T32 * HW)
        f = i32(tid // HW)  # the thread's place in the slab: frame f, position pos
        pos = i32(tid - f * HW)
        e = tid
        buffer = cuda.local.array(LOADS, acc)
        while e < total:
            ff, pp = f, pos
            for k in range(LOADS):
                if e + k * threads < total:
                    at = e + k * threads if channel_major != 0 else ff * frame + pp
                    buffer[k] = load(s_in, at)
                pp += i32(step_pos)
                ff += i32(step_frames)
                if pp >= HW:
                    pp -= HW
                    ff += 1
            for k in range(LOADS):
                if e + k * threads < total:
                    tile[u32(e + k * threads)] = prologue(buffer[k], sc, bi)
            f, pos = ff, pp
            e += i32(LOADS) * threads
        bad, ot, oh, ow, wt0, wt1, wh0, wh1, ww0, ww1 = decode(
            shift, c, C, adjoint, quantize, pt, ph, pw
        )
        if bad:  # a NaN shift: the channel is NaN (the whole block takes this branch)
            pos = tid
            while pos < HW:
                for t in range(T32):
                    store(s_out, t * frame + pos, nan)
                pos += threads
            return
        cuda.syncthreads()
        # phase 2: every position's frames
        pos = tid
        while pos < HW:
            h = i32(pos // W32)
            w = i32(pos - h * W32)
            hs = i32(h + oh)
            ws = i32(w + ow)
            u = (
                within(hs, H32) & (wh0 != zero),
                within(hs + 1, H32) & (wh1 != zero),
                within(ws, W32) & (ww0 != zero),
                within(ws + 1, W32) & (ww1 != zero),
            )
            r0 = clamp(hs, H32) * W32
            r1 = clamp(hs + 1, H32) * W32
            c0 = clamp(ws, W32)
            c1 = clamp(ws + 1, W32)
            k = (r0 + c0, r0 + c1, r1 + c0, r1 + c1)
            q = offset(s_out, pos)
            s = i32(ot)  # the source frame of corner 0 of output frame 0
            prev = zero
            if within(s, T32):
                prev = plane_value(tile, s * HW, k, wh0, wh1, ww0, ww1, u)
            for t in range(T32):
                s = i32(t + ot + 1)
                cur = zero
                if within(s, T32):
                    cur = plane_value(tile, s * HW, k, wh0, wh1, ww0, ww1, u)
                use0 = within(s - 1, T32) & (wt0 != zero)
                use1 = within(s, T32) & (wt1 != zero)
                store(q, 0, mix(prev, cur, wt0, wt1, use0, use1))
                q = offset(q, frame)
                prev = cur
            pos += threads

    return _entry(
        "gather_slab_affine" if affine else "gather_slab",
        slab_body,
        GatherSlabScalars,
        affine,
        registers,
    )
