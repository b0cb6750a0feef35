"""Training-mode batch norm + ReLU: per-channel statistics and gradients in fixed-order
reductions, the elementwise passes one read or write of each tensor.

The tensor is seen as rows of one channel each, contiguous: (B·C, P) with P = H·W, row r
holding channel r % C. A channel's B·P values are cut into ``parts`` spans, one block
each (grid (parts, C)); a thread takes ``per_thread`` values one block width apart per
round, all loaded before any is summed, and the block's sums meet in a shared-memory tree
of fixed shape, so every run adds in the same order (deterministic, as the shift
gradient's ``grad_shift`` / ``finalize``). Four kernels:

* ``bn_partial``: per block, the sums (Σ v, Σ v²) of v = x - x[channel's first value]
  (statistics: the pivot keeps E[v²] - E[v]² away from cancellation), or, for the
  gradient, (Σ g, Σ g·(x - mean)) with g = dy where the forward's ReLU passed it, else 0.
* ``bn_stats``: one thread per channel: the partial sums in float64 in part order; mean,
  1 / sqrt(var + eps), the affine (scale, shift) the forward pass applies with
  ``affine_relu``, and the running statistics' update (momentum, unbiased variance).
* ``bn_grad_coefficients``: one thread per channel: grad_weight, grad_bias and the three
  coefficients of grad_x = a·g + b·(x - mean) + c.
* ``bn_grad_input``: grad_x elementwise, rows as ``affine_relu`` walks them.
"""

from __future__ import annotations

import math

from numba import cuda
from numba import types as nt

from ._cuda_device import (
    acc_constants,
    divmod_,
    kernel,
    ldg,
    load_store,
    offset,
    scalar_types,
    storage_pointer,
)
from ._cuda_scalars import BatchNormGradInputScalars, BatchNormPartialScalars, BatchNormStatsScalars


def _acc_pointer(storage: str):
    return nt.CPointer(acc_constants(storage).acc)


def bn_partial_signature(storage: str) -> tuple:
    """(x, dy, stats, partial, *BatchNormPartialScalars): ``stats`` the (4, C) mean,
    invstd, scale, shift of the forward (read for the gradient only)."""
    acc, *_ = acc_constants(storage)
    ptr, acc_ptr = storage_pointer(storage), _acc_pointer(storage)
    return (ptr, ptr, acc_ptr, acc_ptr, *scalar_types(BatchNormPartialScalars, acc))


def bn_stats_signature(storage: str) -> tuple:
    """(x, partial, weight, bias, running_mean, running_var, stats, *BatchNormStatsScalars)."""
    ptr, acc_ptr = storage_pointer(storage), _acc_pointer(storage)
    acc, *_ = acc_constants(storage)
    return (ptr, acc_ptr, acc_ptr, acc_ptr, acc_ptr, acc_ptr, acc_ptr,
            *scalar_types(BatchNormStatsScalars, acc))  # fmt: skip


def bn_grad_coefficients_signature(storage: str) -> tuple:
    """(partial, weight, stats, coefficients, *BatchNormStatsScalars)."""
    acc_ptr = _acc_pointer(storage)
    acc, *_ = acc_constants(storage)
    return (acc_ptr, acc_ptr, acc_ptr, acc_ptr, *scalar_types(BatchNormStatsScalars, acc))


def bn_grad_input_signature(storage: str) -> tuple:
    """(x, dy, dx, stats, coefficients, *BatchNormGradInputScalars)."""
    ptr, acc_ptr = storage_pointer(storage), _acc_pointer(storage)
    acc, *_ = acc_constants(storage)
    return (ptr, ptr, ptr, acc_ptr, acc_ptr, *scalar_types(BatchNormGradInputScalars, acc))


def build_bn_partial(storage: str, per_thread: int, threads: int):
    """``bn_partial`` for ``storage`` tensors: blocks of ``threads`` (a power of two, the
    width of the reduction tree), ``per_thread`` values per thread and round."""
    acc, zero, *_ = acc_constants(storage)
    load, _ = load_store(storage)

    def bn_partial(x, dy, stats, partial, C, P, inv_P, total, span, parts, step_rows,
                   step_pos, grads):  # fmt: skip
        tid = nt.int64(cuda.threadIdx.x)
        p = nt.int64(cuda.blockIdx.x)
        c = nt.int64(cuda.blockIdx.y)
        start = p * span
        end = min(start + span, total)
        pivot = load(x, c * P) if grads == 0 else zero
        mean = stats[c] if grads != 0 else zero
        scale = stats[2 * C + c] if grads != 0 else zero
        shift = stats[3 * C + c] if grads != 0 else zero
        s1 = zero
        s2 = zero
        xs = cuda.local.array(per_thread, acc)
        gs = cuda.local.array(per_thread, acc)
        j = start + tid
        b, pos = divmod_(j, P, inv_P)  # the value's row of the channel and its place
        while j < end:
            for k in range(per_thread):  # the round's loads, then its sums
                at = (b * C + c) * P + pos
                inside = j + k * threads < end
                xs[k] = load(x, at) if inside else pivot
                if grads != 0:
                    gs[k] = load(dy, at) if inside else zero
                pos += step_pos
                b += step_rows
                if pos >= P:
                    pos -= P
                    b += 1
            for k in range(per_thread):
                if grads == 0:
                    v = xs[k] - pivot
                    s1 += v
                    s2 += v * v
                else:
                    g = gs[k] if cuda.fma(xs[k], scale, shift) > zero else zero
                    s1 += g
                    s2 += g * (xs[k] - mean)
            j += per_thread * threads
        red1 = cuda.shared.array(threads, acc)
        red2 = cuda.shared.array(threads, acc)
        red1[tid] = s1
        red2[tid] = s2
        cuda.syncthreads()
        half = threads // 2
        while half > 0:  # a fixed tree: the same sums in the same order on every run
            if tid < half:
                red1[tid] += red1[tid + half]
                red2[tid] += red2[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            partial[(c * parts + p) * 2] = red1[0]
            partial[(c * parts + p) * 2 + 1] = red2[0]

    pointers = ("x", "dy", "stats", "partial")
    return kernel(bn_partial, pointers, BatchNormPartialScalars, None)


def build_bn_stats(storage: str):
    """``bn_stats`` for ``storage`` tensors (one thread per channel)."""
    acc, *_ = acc_constants(storage)
    load, _ = load_store(storage)

    def bn_stats(x, partial, weight, bias, running_mean, running_var, stats, C, P, parts,
                 count, eps, momentum, unbias):  # fmt: skip
        c = nt.int64(cuda.grid(1))
        if c >= C:
            return
        s1 = nt.float64(0.0)
        s2 = nt.float64(0.0)
        for p in range(parts):
            s1 += nt.float64(partial[(c * parts + p) * 2])
            s2 += nt.float64(partial[(c * parts + p) * 2 + 1])
        shifted = s1 / count
        var = max(s2 / count - shifted * shifted, 0.0)
        mean = nt.float64(load(x, c * P)) + shifted
        invstd = 1.0 / math.sqrt(var + eps)
        scale = nt.float64(ldg(weight, c)) * invstd
        stats[c] = acc(mean)
        stats[C + c] = acc(invstd)
        stats[2 * C + c] = acc(scale)
        stats[3 * C + c] = acc(nt.float64(ldg(bias, c)) - mean * scale)
        keep = 1.0 - momentum
        running_mean[c] = acc(keep * nt.float64(running_mean[c]) + momentum * mean)
        running_var[c] = acc(keep * nt.float64(running_var[c]) + momentum * var * unbias)

    pointers = ("x", "partial", "weight", "bias", "running_mean", "running_var", "stats")
    return kernel(bn_stats, pointers, BatchNormStatsScalars, None)


def build_bn_grad_coefficients(storage: str):
    """``bn_grad_coefficients`` for ``storage`` tensors (one thread per channel): writes
    (a, b, c, grad_weight, grad_bias) as the rows of a (5, C) buffer."""
    acc, *_ = acc_constants(storage)

    def bn_grad_coefficients(partial, weight, stats, coefficients, C, P, parts, count, eps,
                             momentum, unbias):  # fmt: skip
        c = nt.int64(cuda.grid(1))
        if c >= C:
            return
        s1 = nt.float64(0.0)
        s2 = nt.float64(0.0)
        for p in range(parts):
            s1 += nt.float64(partial[(c * parts + p) * 2])
            s2 += nt.float64(partial[(c * parts + p) * 2 + 1])
        invstd = nt.float64(stats[C + c])
        w = nt.float64(ldg(weight, c))
        coefficients[c] = acc(w * invstd)
        coefficients[C + c] = acc(-w * invstd * invstd * invstd * s2 / count)
        coefficients[2 * C + c] = acc(-w * invstd * s1 / count)
        coefficients[3 * C + c] = acc(s2 * invstd)
        coefficients[4 * C + c] = acc(s1)

    pointers = ("partial", "weight", "stats", "coefficients")
    return kernel(bn_grad_coefficients, pointers, BatchNormStatsScalars, None)


def build_bn_grad_input(storage: str, per_thread: int):
    """``bn_grad_input`` for ``storage`` tensors, ``per_thread`` values per thread one
    block width apart (loads first, then stores)."""
    acc, zero, *_ = acc_constants(storage)
    load, store = load_store(storage)

    def bn_grad_input(x, dy, dx, stats, coefficients, inner, C, chunks, inv_chunks, inv_C):
        width = nt.int64(cuda.blockDim.x)
        row, chunk = divmod_(nt.int64(cuda.blockIdx.x), chunks, inv_chunks)
        first = chunk * (width * per_thread) + nt.int64(cuda.threadIdx.x)
        if first >= inner:
            return
        _, c = divmod_(row, C, inv_C)
        mean = stats[c]
        scale = stats[2 * C + c]
        shift = stats[3 * C + c]
        a = coefficients[c]
        b = coefficients[C + c]
        cc = coefficients[2 * C + c]
        base = row * inner + first
        at_x = offset(x, base)
        at_dy = offset(dy, base)
        to = offset(dx, base)
        xs = cuda.local.array(per_thread, acc)
        gs = cuda.local.array(per_thread, acc)
        w = nt.int32(width)
        for k in range(per_thread):
            if first + k * width < inner:
                xs[k] = load(at_x, k * w)
                gs[k] = load(at_dy, k * w)
        for k in range(per_thread):
            if first + k * width < inner:
                v = xs[k]
                g = gs[k] if cuda.fma(v, scale, shift) > zero else zero
                store(to, k * w, cuda.fma(a, g, cuda.fma(b, v - mean, cc)))

    pointers = ("x", "dy", "dx", "stats", "coefficients")
    return kernel(bn_grad_input, pointers, BatchNormGradInputScalars, None)
