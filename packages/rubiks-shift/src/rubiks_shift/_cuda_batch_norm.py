"""Training-mode batch norm + ReLU: per-channel statistics and gradients in fixed-order
reductions, the elementwise passes one read or write of each tensor.

The tensor is seen as rows of one channel each, contiguous: (B·C, P) with P = H·W, row r
holding channel r % C. A channel's B·P values are cut into ``parts`` spans, one block
each (grid (parts, C)); a thread takes ``per_thread`` values one block width apart per
round, all loaded before any is summed, and the block's sums meet in a shared-memory tree
of fixed shape, so every run adds in the same order (deterministic, as the shift
gradient's ``grad_shift`` / ``finalize``). The kernels:

* ``bn_partial``: per block, the sums (Σ v, Σ v²) of v = x - x[channel's first value]
  (statistics: the pivot keeps E[v²] - E[v]² away from cancellation), or, for the
  gradient, (Σ g, Σ g·(x - mean)) with g = dy where the forward's ReLU passed it, else 0.
* ``bn_stats``: one thread per channel: the partial sums in float64 in part order; mean,
  1 / sqrt(var + eps), the affine (scale, shift) the forward applies, and the running
  statistics' update (momentum, unbiased variance).
* ``bn_grad_coefficients``: one thread per channel: grad_weight, grad_bias and the three
  coefficients of grad_x = a·g + b·(x - mean) + c.
* ``bn_normalize`` / ``bn_grad_input``: y = relu(x·scale + shift) and grad_x, elementwise
  over the tensor as one flat run.
* ``bn_channel_forward`` / ``bn_channel_backward``: for channels of few values, one block
  per channel (``parts`` = 1) does a direction's three steps in one launch, the
  elementwise pass re-reading the channel from the cache.

Both forms share their device functions (``span_sums``, ``block_sums``,
``channel_stats``, ``grad_coefficients``), so both forms compute the same per-channel
values from their sums.

The ReLU is torch's on NaN: relu(NaN) is NaN, and its backward passes the gradient where
the output is NaN (only values <= 0 are cut).

bfloat16 and float32 tensors whose rows have an even length and that lie on the
boundaries of two values (4 and 8 bytes) move as words of two values (the ``paired``
scalar of each kernel; ``_units``): the extents are then in words, a word's two values
share their channel, the sums add them in turn and the elementwise passes compute each
as a single value would be.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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
    f32_high,
    f32_low,
    f32x2_bits,
    f32x2_load,
    f32x2_store,
    inlined,
    kernel,
    ldg,
    load_store,
    offset,
    scalar_types,
    storage_pointer,
)
from ._cuda_scalars import (
    BatchNormChannelScalars,
    BatchNormElementwiseScalars,
    BatchNormPartialScalars,
    BatchNormStatsScalars,
)


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


def bn_elementwise_signature(storage: str) -> tuple:
    """(x, dy, out, stats, coefficients, *BatchNormElementwiseScalars) of ``bn_normalize``
    (dy and coefficients not read) and ``bn_grad_input``."""
    ptr, acc_ptr = storage_pointer(storage), _acc_pointer(storage)
    acc, *_ = acc_constants(storage)
    return (ptr, ptr, ptr, acc_ptr, acc_ptr, *scalar_types(BatchNormElementwiseScalars, acc))


def bn_channel_signature(storage: str) -> tuple:
    """(x, dy, out, weight, bias, running_mean, running_var, stats, grads,
    *BatchNormChannelScalars) of ``bn_channel_forward`` (dy and grads not read) and
    ``bn_channel_backward`` (bias and the running statistics not read)."""
    ptr, acc_ptr = storage_pointer(storage), _acc_pointer(storage)
    acc, *_ = acc_constants(storage)
    pointers = (ptr, ptr, ptr) + (acc_ptr,) * 6
    return (*pointers, *scalar_types(BatchNormChannelScalars, acc))


@inlined
def channel_walk(j, c, C, P, inv_P, step_rows, step_pos):
    """Where value j of channel c lies (rows of P values, row b of the channel at
    (b·C + c)·P) and how a thread steps from a value to the one a block width on:
    (element, place in its row, P, the step's places, its elements, the elements from a
    row's end to the channel's next row), stepped on by ``walk_on``, no multiplies per
    value."""
    b, place = divmod_(j, P, inv_P)
    move = step_rows * C * P + step_pos
    return (
        (b * C + c) * P + place,
        nt.int32(place),
        nt.int32(P),
        nt.int32(step_pos),
        move,
        (C - 1) * P,
    )


@inlined
def walk_on(at, pos, plane, move_pos, move, skip):
    """``channel_walk``'s (element, place) of the value one block width on."""
    pos += move_pos
    at += move
    if pos >= plane:
        pos -= plane
        at += skip
    return at, pos


class _Pairs(NamedTuple):
    """The intrinsics of a storage's words of two values (``_cuda_device``): load and
    store a word, the word's Numba type, its first and second value, two values as a
    word."""

    load: object
    store: object
    kind: object
    low: object
    high: object
    bits: object


# the storages whose kernels also walk words of two values: bfloat16 as 32-bit words,
# float32 as 64-bit ones
_PAIRS = {
    "bfloat16": _Pairs(bf16x2_load, bf16x2_store, nt.int32, bf16_low, bf16_high, bf16x2_bits),
    "float32": _Pairs(f32x2_load, f32x2_store, nt.int64, f32_low, f32_high, f32x2_bits),
}


class _Units(NamedTuple):
    """How a kernel walks its tensors: a unit is one value, or (``width`` 2) a word of two
    values (``_PAIRS``), which share a channel because rows have an even length.
    ``load(p, i)`` / ``store(p, i, u)`` read and write unit i after pointer p (a ``kind``,
    a Numba type); ``pad(pivot)`` is a unit of the pivot, summed as nothing;
    ``accumulate(s1, s2, xu, gu, grads, pivot, mean, scale, shift)`` adds a unit's values
    to the two sums of ``span_sums``; ``apply(xu, gu, scale, shift, mean, a, slope,
    constant)`` is the unit to store, y = relu(x·scale + shift) or grad_x =
    a·g + b·(x - mean) + c with g = dy where the forward's ReLU passed it (``backward``)."""

    load: object
    store: object
    kind: object
    width: int
    pad: object
    accumulate: object
    apply: object


def _units(storage: str, backward: bool, paired: bool) -> _Units:
    """The single values of ``storage`` tensors, or (``paired``) their words of two."""
    acc, zero, *_ = acc_constants(storage)
    load, store = load_store(storage)

    @inlined
    def add(s1, s2, v, g, grads, pivot, mean, scale, shift):
        if grads == 0:
            d = v - pivot
            return s1 + d, s2 + d * d
        kept = zero if cuda.fma(v, scale, shift) <= zero else g
        return s1 + kept, s2 + kept * (v - mean)

    @inlined
    def one(v, g, scale, shift, mean, a, slope, constant):
        u = cuda.fma(v, scale, shift)
        if backward:
            kept = zero if u <= zero else g
            return cuda.fma(a, kept, cuda.fma(slope, v - mean, constant))
        return zero if u <= zero else u

    if not paired:

        @inlined
        def pad(pivot):
            return pivot

        return _Units(load, store, acc, 1, pad, add, one)

    words = _PAIRS[storage]
    low, high, bits = words.low, words.high, words.bits

    @inlined
    def pad_pair(pivot):
        return bits(pivot, pivot)  # exact: the pivot is a value of the storage

    @inlined
    def add_pair(s1, s2, xw, gw, grads, pivot, mean, scale, shift):
        s1, s2 = add(s1, s2, low(xw), low(gw), grads, pivot, mean, scale, shift)
        return add(s1, s2, high(xw), high(gw), grads, pivot, mean, scale, shift)

    @inlined
    def pair(xw, gw, scale, shift, mean, a, slope, constant):
        first = one(low(xw), low(gw), scale, shift, mean, a, slope, constant)
        second = one(high(xw), high(gw), scale, shift, mean, a, slope, constant)
        return bits(first, second)

    return _Units(words.load, words.store, words.kind, 2, pad_pair, add_pair, pair)


def _can_pair(storage: str, per_thread: int) -> bool:
    """Whether kernels for ``storage`` with ``per_thread`` values per round also walk
    words of two values (else their ``paired`` scalar is not read)."""
    return storage in _PAIRS and per_thread >= 2


def _build_span_sums(units: _Units, per_thread: int, threads: int, zero):
    """The device function ``span_sums``: one thread's two sums over units ``start`` to
    ``end`` of channel c (the thread's own, one block width apart: ``threads``, or the
    block's width read at run time where ``threads`` is 0), ``per_thread`` loads per round
    before any is summed. Statistics (``grads`` 0): Σ v, Σ v² of v = x - pivot;
    gradient sums: Σ g, Σ g·(x - mean), g = dy where x·scale + shift > 0, else 0."""
    load, kind = units.load, units.kind
    pad, accumulate = units.pad, units.accumulate

    @inlined
    def span_sums(x, dy, c, start, end, C, P, inv_P, step_rows, step_pos, grads, pivot,
                  mean, scale, shift):  # fmt: skip
        s1 = zero
        s2 = zero
        xs = cuda.local.array(per_thread, kind)
        gs = cuda.local.array(per_thread, kind)
        nothing = pad(pivot)
        width = nt.int64(cuda.blockDim.x) if threads == 0 else nt.int64(threads)
        j = start + nt.int64(cuda.threadIdx.x)
        at, pos, plane, move_pos, move, skip = channel_walk(j, c, C, P, inv_P, step_rows, step_pos)
        while j < end:
            full = j + (per_thread - 1) * width < end
            for k in range(per_thread):  # the round's loads, then its sums
                if full or j + k * width < end:
                    xs[k] = load(x, at)
                    if grads != 0:
                        gs[k] = load(dy, at)
                else:  # summed as nothing: v = 0 for the statistics, g = 0 for gradients
                    xs[k] = nothing
                    gs[k] = kind(0)
                at, pos = walk_on(at, pos, plane, move_pos, move, skip)
            for k in range(per_thread):
                s1, s2 = accumulate(s1, s2, xs[k], gs[k], grads, pivot, mean, scale, shift)
            j += per_thread * width
        return s1, s2

    return span_sums


def _build_block_sums(storage: str, threads: int, widest: int = 0):
    """The device function ``block_sums``: the sums of every thread of the block in a
    shared-memory tree of fixed shape for the block's width (the same order on every run),
    seen by every thread. ``threads`` is that width, or 0 for blocks of any power of two
    up to ``widest`` threads, the width read at run time."""
    acc, *_ = acc_constants(storage)
    size = threads or widest

    @inlined
    def block_sums(s1, s2):
        tid = cuda.threadIdx.x
        width = nt.int64(cuda.blockDim.x) if threads == 0 else nt.int64(threads)
        red1 = cuda.shared.array(size, acc)
        red2 = cuda.shared.array(size, acc)
        red1[tid] = s1
        red2[tid] = s2
        cuda.syncthreads()
        half = width // 2
        while half > 0:
            if tid < half:
                red1[tid] += red1[tid + half]
                red2[tid] += red2[tid + half]
            cuda.syncthreads()
            half //= 2
        return red1[0], red2[0]

    return block_sums


def build_bn_partial(storage: str, per_thread: int, threads: int):
    """``bn_partial`` for ``storage`` tensors: blocks of ``threads`` (a power of two, the
    width of the reduction tree), ``per_thread`` values per thread and round (half as
    many words where ``paired``)."""
    _, zero, *_ = acc_constants(storage)
    load, _ = load_store(storage)
    sums_values = _build_span_sums(_units(storage, False, False), per_thread, threads, zero)
    can_pair = _can_pair(storage, per_thread)
    sums_pairs = sums_values
    if can_pair:
        pairs = _units(storage, False, True)
        sums_pairs = _build_span_sums(pairs, per_thread // 2, threads, zero)
    block_sums = _build_block_sums(storage, threads)

    def bn_partial(x, dy, stats, partial, C, P, inv_P, total, span, parts, step_rows,
                   step_pos, grads, paired):  # fmt: skip
        p = nt.int64(cuda.blockIdx.x)
        c = nt.int64(cuda.blockIdx.y)
        start = p * span
        end = min(start + span, total)
        in_pairs = can_pair and paired != 0
        values_per_row = 2 * P if in_pairs else P
        pivot = load(x, c * values_per_row) if grads == 0 else zero
        mean = stats[c] if grads != 0 else zero
        scale = stats[2 * C + c] if grads != 0 else zero
        shift = stats[3 * C + c] if grads != 0 else zero
        args = (x, dy, c, start, end, C, P, inv_P, step_rows, step_pos, grads, pivot, mean,
                scale, shift)  # fmt: skip
        if in_pairs:
            s1, s2 = sums_pairs(*args)
        else:
            s1, s2 = sums_values(*args)
        t1, t2 = block_sums(s1, s2)
        if cuda.threadIdx.x == 0:
            partial[(c * parts + p) * 2] = t1
            partial[(c * parts + p) * 2 + 1] = t2

    pointers = ("x", "dy", "stats", "partial")
    return kernel(bn_partial, pointers, BatchNormPartialScalars, None)


@inlined
def channel_sums(partial, c, parts):
    """Channel c's two sums from its ``parts`` partial pairs, in float64, in part order
    (the same order on every run)."""
    s1 = nt.float64(0.0)
    s2 = nt.float64(0.0)
    for p in range(parts):
        s1 += nt.float64(partial[(c * parts + p) * 2])
        s2 += nt.float64(partial[(c * parts + p) * 2 + 1])
    return s1, s2


def _build_channel_stats(storage: str):
    """The device function ``channel_stats``: channel c's mean, 1 / sqrt(var + eps) and
    the affine (scale, shift) of the forward from its two statistics sums (float64), and,
    where ``write``, those into ``stats`` and the running statistics' update (momentum,
    unbiased variance). Returns (scale, shift) in the accumulation type."""
    acc, *_ = acc_constants(storage)

    @inlined
    def channel_stats(s1, s2, pivot, c, weight, bias, running_mean, running_var, stats, C,
                      count, eps, momentum, unbias, write):  # fmt: skip
        shifted = s1 / count
        spread = s2 / count - shifted * shifted
        var = 0.0 if spread < 0.0 else spread  # rounding below 0 cut; a NaN kept, as torch
        mean = pivot + shifted
        invstd = 1.0 / math.sqrt(var + eps)
        scale = nt.float64(ldg(weight, c)) * invstd
        shift = nt.float64(ldg(bias, c)) - mean * scale
        if write:
            stats[c] = acc(mean)
            stats[C + c] = acc(invstd)
            stats[2 * C + c] = acc(scale)
            stats[3 * C + c] = acc(shift)
            keep = 1.0 - momentum
            running_mean[c] = acc(keep * nt.float64(running_mean[c]) + momentum * mean)
            running_var[c] = acc(keep * nt.float64(running_var[c]) + momentum * var * unbias)
        return acc(scale), acc(shift)

    return channel_stats


def _build_grad_coefficients(storage: str):
    """The device function ``grad_coefficients``: channel c's (a, b, c) of grad_x =
    a·g + b·(x - mean) + c from its two gradient sums (float64), and, where ``write``,
    grad_weight and grad_bias into ``out[grads_at + c]`` and ``out[grads_at + C + c]``.
    Returns (a, b, c) in the accumulation type."""
    acc, *_ = acc_constants(storage)

    @inlined
    def grad_coefficients(s1, s2, c, weight, stats, out, grads_at, C, count, write):
        invstd = nt.float64(stats[C + c])
        w = nt.float64(ldg(weight, c))
        if write:
            out[grads_at + c] = acc(s2 * invstd)
            out[grads_at + C + c] = acc(s1)
        a = acc(w * invstd)
        slope = acc(-w * invstd * invstd * invstd * s2 / count)
        return a, slope, acc(-w * invstd * s1 / count)

    return grad_coefficients


def build_bn_stats(storage: str):
    """``bn_stats`` for ``storage`` tensors (one thread per channel)."""
    load, _ = load_store(storage)
    channel_stats = _build_channel_stats(storage)

    def bn_stats(x, partial, weight, bias, running_mean, running_var, stats, C, P, parts,
                 count, eps, momentum, unbias):  # fmt: skip
        c = nt.int64(cuda.grid(1))
        if c >= C:
            return
        s1, s2 = channel_sums(partial, c, parts)
        channel_stats(
            s1, s2, nt.float64(load(x, c * P)), c, weight, bias, running_mean, running_var,
            stats, C, count, eps, momentum, unbias, True,
        )  # fmt: skip

    pointers = ("x", "partial", "weight", "bias", "running_mean", "running_var", "stats")
    return kernel(bn_stats, pointers, BatchNormStatsScalars, None)


def build_bn_grad_coefficients(storage: str):
    """``bn_grad_coefficients`` for ``storage`` tensors (one thread per channel): writes
    (a, b, c, grad_weight, grad_bias) as the rows of a (5, C) buffer."""
    grad_coefficients = _build_grad_coefficients(storage)

    def bn_grad_coefficients(partial, weight, stats, coefficients, C, P, parts, count, eps,
                             momentum, unbias):  # fmt: skip
        c = nt.int64(cuda.grid(1))
        if c >= C:
            return
        s1, s2 = channel_sums(partial, c, parts)
        a, slope, constant = grad_coefficients(
            s1, s2, c, weight, stats, coefficients, 3 * C, C, count, True
        )
        coefficients[c] = a
        coefficients[C + c] = slope
        coefficients[2 * C + c] = constant

    pointers = ("partial", "weight", "stats", "coefficients")
    return kernel(bn_grad_coefficients, pointers, BatchNormStatsScalars, None)


def _build_channel_pass(units: _Units, per_thread: int, threads: int, backward: bool):
    """The device function ``channel_pass``: a thread's part of a channel's elementwise
    pass in ``bn_channel`` (its units one block width apart, ``threads`` or, where 0, the
    block's width read at run time; ``per_thread`` loads per round, then the round's
    stores)."""
    load, store, kind, apply = units.load, units.store, units.kind, units.apply

    @inlined
    def channel_pass(x, dy, out, c, C, P, inv_P, total, step_rows, step_pos, scale, shift,
                     mean, a, slope, constant):  # fmt: skip
        xs = cuda.local.array(per_thread, kind)
        gs = cuda.local.array(per_thread, kind)
        width = nt.int64(cuda.blockDim.x) if threads == 0 else nt.int64(threads)
        j = nt.int64(cuda.threadIdx.x)
        at, pos, plane, move_pos, move, skip = channel_walk(j, c, C, P, inv_P, step_rows, step_pos)
        while j < total:
            round_at, round_pos = at, pos  # the stores walk the round's places again
            for k in range(per_thread):  # the round's loads, then its stores
                if j + k * width < total:
                    xs[k] = load(x, at)
                    if backward:
                        gs[k] = load(dy, at)
                at, pos = walk_on(at, pos, plane, move_pos, move, skip)
            for k in range(per_thread):
                if j + k * width < total:
                    value = apply(xs[k], gs[k], scale, shift, mean, a, slope, constant)
                    store(out, round_at, value)
                round_at, round_pos = walk_on(round_at, round_pos, plane, move_pos, move, skip)
            j += per_thread * width

    return channel_pass


def build_bn_channel(
    storage: str, per_thread: int, widest: int, backward: bool, registers: int | None
):
    """``bn_channel_forward`` (``backward`` False) or ``bn_channel_backward``: one block
    per channel does a whole pass in one launch, for channels of few values (blocks of
    any power of two up to ``widest`` threads, the width read at run time; ``per_thread``
    values per thread and round, half as many words where ``paired``; ``registers`` the
    register cap). The forward sums the channel's statistics
    (``span_sums`` over all of it), meets the sums in the block's tree, writes the stats
    and the running statistics' update (thread 0) and writes y = relu(x·scale + shift)
    over the channel again (its second read of x comes from the cache); the backward sums
    the gradient's two sums the same way, writes grad_weight and grad_bias as the rows of
    the (2, C) ``grads`` and then grad_x. Sums in the same fixed order on every run."""
    _, zero, *_ = acc_constants(storage)
    load, _ = load_store(storage)
    values = _units(storage, backward, False)
    sums_values = _build_span_sums(values, per_thread, 0, zero)
    pass_values = _build_channel_pass(values, per_thread, 0, backward)
    can_pair = _can_pair(storage, per_thread)
    sums_pairs, pass_pairs = sums_values, pass_values
    if can_pair:
        pairs = _units(storage, backward, True)
        sums_pairs = _build_span_sums(pairs, per_thread // 2, 0, zero)
        pass_pairs = _build_channel_pass(pairs, per_thread // 2, 0, backward)
    block_sums = _build_block_sums(storage, 0, widest)
    channel_stats = _build_channel_stats(storage)
    grad_coefficients = _build_grad_coefficients(storage)

    def bn_channel(x, dy, out, weight, bias, running_mean, running_var, stats, grads, C, P,
                   inv_P, total, step_rows, step_pos, count, eps, momentum, unbias,
                   paired):  # fmt: skip
        c = nt.int64(cuda.blockIdx.x)
        first = cuda.threadIdx.x == 0
        in_pairs = can_pair and paired != 0
        if backward:  # the gradient's sums: Σ g, Σ g·(x - mean)
            pivot = zero
            mean = stats[c]
            scale = stats[2 * C + c]
            shift = stats[3 * C + c]
        else:  # the statistics' sums: Σ v, Σ v² of v = x - pivot
            pivot = load(x, c * (2 * P if in_pairs else P))
            mean = scale = shift = zero
        args = (x, dy if backward else x, c, 0, total, C, P, inv_P, step_rows, step_pos,
                1 if backward else 0, pivot, mean, scale, shift)  # fmt: skip
        if in_pairs:
            s1, s2 = sums_pairs(*args)
        else:
            s1, s2 = sums_values(*args)
        t1, t2 = block_sums(s1, s2)
        if backward:
            a, slope, constant = grad_coefficients(
                nt.float64(t1), nt.float64(t2), c, weight, stats, grads, 0, C, count, first
            )
        else:
            a = slope = constant = zero  # (not read by the forward)
            scale, shift = channel_stats(
                nt.float64(t1), nt.float64(t2), nt.float64(pivot), c, weight, bias,
                running_mean, running_var, stats, C, count, eps, momentum, unbias, first,
            )  # fmt: skip
        args = (x, dy, out, c, C, P, inv_P, total, step_rows, step_pos, scale, shift, mean, a,
                slope, constant)  # fmt: skip
        if in_pairs:
            pass_pairs(*args)
        else:
            pass_values(*args)

    pointers = (
        "x", "dy", "out", "weight", "bias", "running_mean", "running_var", "stats", "grads"
    )  # fmt: skip
    return kernel(bn_channel, pointers, BatchNormChannelScalars, registers)


def _elementwise_walk(units: _Units, per_thread: int, backward: bool):
    """One thread's ``per_thread`` units of the flat elementwise pass, one block width
    apart (loads first, then stores), each unit's channel stepped on from the first's.
    Extents are in units."""
    load, store, kind, apply, width_of = (
        units.load, units.store, units.kind, units.apply, units.width
    )  # fmt: skip

    @inlined
    def walk(x, dy, out, stats, coefficients, first, width, total, C, inv_C, P, inv_P,
             step_rows, step_pos):  # fmt: skip
        row, pos64 = divmod_(first, P, inv_P)
        _, c64 = divmod_(row, C, inv_C)
        pos, c = nt.int32(pos64), nt.int32(c64)
        plane, channels = nt.int32(P), nt.int32(C)
        move_pos, move_rows = nt.int32(step_pos), nt.int32(step_rows)
        at_x = offset(x, first * width_of)
        at_dy = offset(dy, first * width_of)
        to = offset(out, first * width_of)
        scales, shifts = offset(stats, 2 * C), offset(stats, 3 * C)  # rows of (4, C)
        slopes, constants = offset(coefficients, C), offset(coefficients, 2 * C)  # of (5, C)
        xs = cuda.local.array(per_thread, kind)
        gs = cuda.local.array(per_thread, kind)
        cs = cuda.local.array(per_thread, nt.int32)
        w = nt.int32(width)
        valid = (total - first + width - 1) // width  # units of this thread in the tensor
        for k in range(per_thread):
            if k < valid:
                xs[k] = load(at_x, k * w)
                if backward:
                    gs[k] = load(at_dy, k * w)
            cs[k] = c
            pos += move_pos
            c += move_rows
            if pos >= plane:
                pos -= plane
                c += 1
            while c >= channels:
                c -= channels
        for k in range(per_thread):
            if k < valid:
                ck = cs[k]
                scale, shift = ldg(scales, ck), ldg(shifts, ck)
                if backward:
                    mean, a = ldg(stats, ck), ldg(coefficients, ck)
                    slope, constant = ldg(slopes, ck), ldg(constants, ck)
                    store(to, k * w, apply(xs[k], gs[k], scale, shift, mean, a, slope, constant))
                else:
                    store(to, k * w, apply(xs[k], xs[k], scale, shift, scale, scale, scale, scale))

    return walk


def build_bn_elementwise(storage: str, per_thread: int, backward: bool):
    """``bn_normalize`` (``backward`` False: y = relu(x·scale + shift)) or
    ``bn_grad_input`` (grad_x = a·g + b·(x - mean) + c, g = dy where the forward's ReLU
    passed it) for ``storage`` tensors: the tensor as one flat run, ``per_thread`` values
    per thread one block width apart (loads first, then stores), each value's channel
    stepped on from the first's, so rows shorter than a block cost nothing extra. For
    bfloat16 and float32 the kernel also walks words of two values, ``per_thread // 2``
    per thread, where ``paired`` (the extents then in words)."""
    walk_values = _elementwise_walk(_units(storage, backward, False), per_thread, backward)
    can_pair = _can_pair(storage, per_thread)
    walk_pairs = walk_values
    if can_pair:
        walk_pairs = _elementwise_walk(_units(storage, backward, True), per_thread // 2, backward)

    def elementwise(x, dy, out, stats, coefficients, total, C, inv_C, P, inv_P, step_rows,
                    step_pos, paired):  # fmt: skip
        width = nt.int64(cuda.blockDim.x)
        pairs = can_pair and paired != 0
        units = per_thread // 2 if pairs else per_thread
        # the last block first: the sums' pass (``bn_partial``) has just read the tensor's
        # end, which is then still in L2
        block = nt.int64(cuda.gridDim.x) - 1 - nt.int64(cuda.blockIdx.x)
        first = block * (width * units) + nt.int64(cuda.threadIdx.x)
        if first >= total:
            return
        args = (x, dy, out, stats, coefficients, first, width, total, C, inv_C, P, inv_P,
                step_rows, step_pos)  # fmt: skip
        if pairs:
            walk_pairs(*args)
        else:
            walk_values(*args)

    pointers = ("x", "dy", "out", "stats", "coefficients")
    return kernel(elementwise, pointers, BatchNormElementwiseScalars, None)
