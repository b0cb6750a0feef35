"""The prologue alone: relu(x * scale[c] + bias[c]) in one pass, optionally reading each
value a whole number of frames later per channel (a hard temporal shift).

The fused inference form applies a batch norm + ReLU before a block's first 1x1
convolution with nothing to shift, or (a hardened AQ block) with an integer temporal
shift only; the gathers would do either at 3-6x a copy on small planes, where this
elementwise kernel moves each value once. The tensor is seen as rows of one channel
each, contiguous: (C, N·T·H·W) for a channel-major clip, (N·T·C, H·W) for a contiguous
one; row r holds channel r % C either way. Each block covers a chunk of one row (its
channel's scale, bias and frame shift loaded once); a thread takes
``Tuning.prologue_bytes`` of values one block width apart, so each load instruction of a
warp reads consecutive addresses, all loaded before any is stored. Shifted by d frames a
value reads the one ``d * frame_stride`` further on, and is zero where its frame + d
falls outside [0, T): in a row the frames repeat every ``segment`` values (a clip's
T·H·W channel-major, one frame's H·W contiguous), so those values are one band of
positions in each segment, found once per block.

bfloat16 clips whose planes have an even number of pixels move their values in pairs,
one 32-bit word each (``AffineReluScalars.paired``): every row, frame, segment and band
edge then starts on a word, and the plan gives the kernel's extents in words.
"""

from __future__ import annotations

from numba import cuda
from numba import types as nt

from ._cuda_device import (
    acc_constants,
    bf16_high,
    bf16_low,
    bf16x2_bits,
    bf16x2_load,
    bf16x2_store,
    divmod_,
    inlined,
    kernel,
    ldg,
    load_store,
    offset,
    relu_fma,
    scalar_types,
    storage_pointer,
)
from ._cuda_scalars import AffineReluScalars


def affine_relu_signature(storage: str) -> tuple:
    """affine_relu's signature: (src, dst, scale, bias, shift, *AffineReluScalars), shift
    the (C,) int32 frame shift (any pointer where ``shifted`` is 0: it is not read)."""
    acc, *_ = acc_constants(storage)
    ptr = storage_pointer(storage)
    frames = nt.CPointer(nt.int32)
    acc_ptr = nt.CPointer(acc)
    return (ptr, ptr, acc_ptr, acc_ptr, frames, *scalar_types(AffineReluScalars, acc))


def _walk(load, store, activate, zero, unit, per_thread: int, units: int):
    """One block's chunk of a row, ``per_thread`` units per thread (a unit: one value, or
    a pair of bfloat16 values as one word, ``units`` storage elements): ``load(p, i)``
    reads unit i after pointer p into a ``unit`` (a Numba type), ``activate(v, s, b)``
    turns it into the unit to store, ``store(p, i, v)`` writes it, ``zero`` is the unit
    of zeros. Extents are in units."""

    @inlined
    def walk(src, dst, s, b, d, slab, first, base, width, inner, plane, segment, inv_segment,
             segment_step, frame_stride, frames, inv_frames):  # fmt: skip
        values = cuda.local.array(per_thread, unit)
        full = first + (per_thread - 1) * width < inner
        w = nt.int32(width)  # a full run indexes from per-thread pointers, in 32 bits
        to = offset(dst, base * units)
        at = offset(src, base * units)
        if d == 0:
            if full:  # every value: loads, then stores
                for k in range(per_thread):
                    values[k] = load(at, k * w)
                for k in range(per_thread):
                    store(to, k * w, activate(values[k], s, b))
            else:  # the row's tail
                for k in range(per_thread):
                    if first + k * width < inner:
                        store(to, k * w, activate(load(at, k * w), s, b))
            return
        # the row starts in frame t0; a value at position p of its segment is in frame
        # t0 + p // plane, so the values whose frame + d lies in the clip are one band of p
        d = min(max(d, -frames), frames)  # beyond +-T every value is outside the clip
        _, t0 = divmod_(slab, frames, inv_frames)
        low = nt.int32(max(nt.int64(0), -(t0 + d)) * plane)
        high = nt.int32(max(nt.int64(0), frames - t0 - d) * plane)
        _, p64 = divmod_(first, segment, inv_segment)  # then stepped on, one wrap at most
        p = nt.int32(p64)
        length, step = nt.int32(segment), nt.int32(segment_step)
        jump = nt.int32(d * frame_stride)
        inside = nt.int32(0)  # bit k: value k's frame + d is in the clip
        for k in range(per_thread):  # outside the band a value reads its own place
            if low <= p and p < high:
                inside |= nt.int32(1) << k
            p += step
            p = p - length if p >= length else p
        if full:  # every value: loads, then stores
            for k in range(per_thread):
                values[k] = load(at, k * w + (jump if inside & (1 << k) else nt.int32(0)))
            for k in range(per_thread):
                store(to, k * w, activate(values[k], s, b) if inside & (1 << k) else zero)
        else:  # the row's tail
            for k in range(per_thread):
                if first + k * width < inner:
                    v = load(at, k * w + (jump if inside & (1 << k) else nt.int32(0)))
                    store(to, k * w, activate(v, s, b) if inside & (1 << k) else zero)

    return walk


def build_affine_relu(storage: str, per_thread: int):
    """The affine_relu kernel for ``storage`` tensors, ``per_thread`` values per thread
    (scale and bias in the accumulation dtype; the result rounded to the storage dtype
    once, NaN kept as in torch.relu; a value read from outside the clip's frames is 0,
    after the prologue, as in the shift of the activated clip). For bfloat16 the kernel
    also walks words of two values, ``per_thread // 2`` per thread, where ``paired``."""
    acc, zero, *_ = acc_constants(storage)
    load, store = load_store(storage)

    relu = relu_fma(storage)

    @inlined
    def activate(v, s, b):
        return relu(v, s, b, False)

    walk_values = _walk(load, store, activate, zero, acc, per_thread, 1)
    can_pair = storage == "bfloat16" and per_thread >= 2  # else ``paired`` is not read
    walk_pairs = walk_values
    if can_pair:

        @inlined
        def activate_pair(word, s, b):
            return bf16x2_bits(activate(bf16_low(word), s, b), activate(bf16_high(word), s, b))

        walk_pairs = _walk(
            bf16x2_load, bf16x2_store, activate_pair, nt.int32(0), nt.int32, per_thread // 2, 2
        )

    def affine_relu(
        src,
        dst,
        scale,
        bias,
        shift,
        inner,
        C,
        chunks,
        inv_chunks,
        inv_C,
        plane,
        segment,
        inv_segment,
        segment_step,
        frame_stride,
        frames,
        inv_frames,
        shifted,
        paired,
    ):
        width = nt.int64(cuda.blockDim.x)
        pairs = can_pair and paired != 0
        units = per_thread // 2 if pairs else per_thread
        row, chunk = divmod_(nt.int64(cuda.blockIdx.x), chunks, inv_chunks)
        first = chunk * (width * units) + nt.int64(cuda.threadIdx.x)
        if first >= inner:
            return
        slab, c = divmod_(row, C, inv_C)
        s = acc(ldg(scale, c))
        b = acc(ldg(bias, c))
        d = nt.int64(ldg(shift, c)) if shifted != 0 else nt.int64(0)
        base = row * inner + first
        args = (src, dst, s, b, d, slab, first, base, width, inner, plane, segment,
                inv_segment, segment_step, frame_stride, frames, inv_frames)  # fmt: skip
        if pairs:
            walk_pairs(*args)
        else:
            walk_values(*args)

    pointers = ("src", "dst", "scale", "bias", "shift")
    return kernel(affine_relu, pointers, AffineReluScalars, None)
