"""The prologue alone: relu(x * scale[c] + bias[c]) in one pass (no shift).

The fused inference form applies a batch norm + ReLU before a block's first 1x1
convolution with nothing to shift; the gathers would do it as a zero shift, at 3-6x a
copy on small planes, where this elementwise kernel moves each value once. The tensor is
seen as rows of one channel each, contiguous: (C, N·T·H·W) for a channel-major clip,
(N·T·C, H·W) for a contiguous one; row r holds channel r % C either way. Each block
covers a chunk of one row (its channel's scale and bias loaded once), each thread
``Tuning.prologue_per_thread`` consecutive values, all loaded before any is stored.
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
    """affine_relu's signature: (src, dst, scale, bias, *AffineReluScalars)."""
    acc, *_ = acc_constants(storage)
    ptr = storage_pointer(storage)
    return (ptr, ptr, nt.CPointer(acc), nt.CPointer(acc), *scalar_types(AffineReluScalars, acc))


def build_affine_relu(storage: str, per_thread: int):
    """The affine_relu kernel for ``storage`` tensors, ``per_thread`` values per thread
    (scale and bias in the accumulation dtype; the result rounded to the storage dtype
    once, NaN kept as in torch.relu)."""
    acc, zero, *_ = acc_constants(storage)
    load, store = load_store(storage)

    @inlined
    def activate(v, s, b):
        u = cuda.fma(v, s, b)
        return zero if u <= zero else u

    def affine_relu(src, dst, scale, bias, inner, C, chunks):
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
        if first + per_thread <= inner:  # a full run: every load before any store
            values = cuda.local.array(per_thread, acc)
            for k in range(per_thread):
                values[k] = load(src, base + k)
            for k in range(per_thread):
                store(dst, base + k, activate(values[k], s, b))
        else:  # the row's tail
            for k in range(inner - first):
                store(dst, base + k, activate(load(src, base + k), s, b))

    return kernel(affine_relu, ("src", "dst", "scale", "bias"), AffineReluScalars, None)
