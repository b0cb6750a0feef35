"""The prologue alone: relu(x * scale[c] + bias[c]) in one pass (no shift).

The fused inference form applies a batch norm + ReLU before a block's first 1x1
convolution with nothing to shift; the gathers would do it as a zero shift, at 3-6x a
copy on small planes, where this elementwise kernel moves each value once. The tensor is
seen as rows of one channel each, contiguous: (C, N·T·H·W) for a channel-major clip,
(N·T·C, H·W) for a contiguous one; row r holds channel r % C either way. Each block
covers a chunk of one row (its channel's scale and bias loaded once), each thread
``Tuning.prologue_per_thread`` consecutive values, all loaded before any is stored. An
integer temporal shift per channel (a hardened AQ block's) can be read on the way: each
output frame then comes from another input frame of its channel, or is 0.
"""

from __future__ import annotations

from numba import cuda
from numba import types as nt

from ._cuda_device import (
    acc_constants,
    inlined,
    kernel,
    ldg,
    load_store,
    scalar_types,
    storage_pointer,
)
from ._cuda_scalars import AffineReluScalars


def affine_relu_signature(storage: str) -> tuple:
    """affine_relu's signature: (src, dst, scale, bias, frame offsets, *AffineReluScalars)."""
    acc, *_ = acc_constants(storage)
    ptr, acc_ptr = storage_pointer(storage), nt.CPointer(acc)
    return (
        ptr,
        ptr,
        acc_ptr,
        acc_ptr,
        nt.CPointer(nt.int32),
        *scalar_types(AffineReluScalars, acc),
    )


def build_affine_relu(storage: str, per_thread: int):
    """The affine_relu kernel for ``storage`` tensors, ``per_thread`` values per thread
    (scale and bias in the accumulation dtype; the result rounded to the storage dtype
    once, NaN kept as in torch.relu). With ``shifted``, output frame t of channel c reads
    input frame t + offsets[c] (an integer temporal shift; 0 where that frame is outside
    the clip, not relu(bias)); else ``offsets`` is not read."""
    acc, zero, *_ = acc_constants(storage)
    load, store = load_store(storage)

    @inlined
    def activate(v, s, b):
        u = cuda.fma(v, s, b)
        return zero if u <= zero else u

    def affine_relu(src, dst, scale, bias, offsets, inner, C, chunks, T, plane, major, shifted):
        block = nt.int64(cuda.blockIdx.x)
        row = block // chunks
        first = (block - row * chunks) * (cuda.blockDim.x * per_thread)
        first += nt.int64(cuda.threadIdx.x) * per_thread
        if first >= inner:
            return
        c = row % C
        s = acc(ldg(scale, c))
        b = acc(ldg(bias, c))
        base = row * inner + first
        count = min(per_thread, inner - first)
        if shifted != 0:
            o = nt.int64(offsets[c])
            if major == 0:  # a row is one (sample, frame, channel) plane: all in or out
                t = (row // C) % T
                inside = (t + o >= 0) & (t + o < T)
                source = base + o * C * inner
                for k in range(count):
                    v = activate(load(src, source + k), s, b) if inside else zero
                    store(dst, base + k, v)
            else:  # a row is one channel's (N, T, H·W): the frame changes along it
                q = first // plane
                p = first - q * plane
                t = q % T
                for k in range(count):
                    inside = (t + o >= 0) & (t + o < T)
                    v = activate(load(src, base + k + o * plane), s, b) if inside else zero
                    store(dst, base + k, v)
                    p += 1
                    if p == plane:
                        p = 0
                        t = t + 1 if t + 1 < T else 0
        elif count == per_thread:  # a full run: every load before any store
            values = cuda.local.array(per_thread, acc)
            for k in range(per_thread):
                values[k] = load(src, base + k)
            for k in range(per_thread):
                store(dst, base + k, activate(values[k], s, b))
        else:  # the row's tail
            for k in range(count):
                store(dst, base + k, activate(load(src, base + k), s, b))

    pointers = ("src", "dst", "scale", "bias", "offsets")
    return kernel(affine_relu, pointers, AffineReluScalars, None)
