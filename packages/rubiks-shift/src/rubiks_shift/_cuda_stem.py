"""The stem: a 3x3 convolution of stride 2 and padding 1, without bias, of (N, 3, H, W)
frames into (N, C, ceil(H/2), ceil(W/2)), both contiguous.

Three input channels are a shape convolution libraries are not made for: cuDNN's NCHW
kernel takes 6-9x the time of writing its result (rubiks-models ``BENCHMARKS.md``, *Where
the time goes*), while the work is small (27 multiply-adds per output value). Here a
thread takes ``pixels`` horizontally adjacent output pixels of one output row: it loads
the 3 channels x 3 rows x (2 * pixels + 1) input values they read once into registers
(0 outside the frame), then, for each output channel of its block's group, sums the
27 products of each pixel with that channel's weights, read from shared memory where the
block put its group's weights, and stores the pixels' values. Consecutive threads take
consecutive pixel runs of a row, so a warp's stores of one channel cover consecutive
addresses. Sums are in the accumulation type (float64 for float64 frames, else float32),
over the taps in (channel, row, column) order; each value is rounded to the storage
dtype once.
"""

from __future__ import annotations

from numba import cuda
from numba import types as nt

from ._cuda_device import (
    acc_constants,
    divmod_,
    inlined,
    kernel,
    ldg,
    load_store,
    scalar_types,
    storage_pointer,
)
from ._cuda_scalars import StemScalars

TAPS = 27  # 3 input channels x 3 x 3


def stem_signature(storage: str) -> tuple:
    """stem's signature: (x, weight, y, *StemScalars), weight the (C, 3, 3, 3) filters in
    the accumulation dtype, contiguous."""
    acc, *_ = acc_constants(storage)
    ptr = storage_pointer(storage)
    return (ptr, nt.CPointer(acc), ptr, *scalar_types(StemScalars, acc))


def build_stem(storage: str, pixels: int, max_group: int, registers: int | None):
    """The stem kernel for ``storage`` frames: ``pixels`` output pixels per thread, at
    most ``max_group`` output channels per block (its weights in shared memory)."""
    acc, zero, *_ = acc_constants(storage)
    load, store = load_store(storage)
    span = 2 * pixels + 1  # input columns a thread's pixels read
    loaded = 3 * 3 * span
    shared_values = max_group * TAPS

    @inlined
    def load_inputs(x, values, n, oy, ox0, H, W):
        """values[(ci * 3 + ky) * span + j] = x[n, ci, 2 oy - 1 + ky, 2 ox0 - 1 + j]."""
        for ci in range(3):
            for ky in range(3):
                iy = 2 * oy - 1 + ky
                row_ok = iy >= 0 and iy < H
                row = ((n * 3 + ci) * H + iy) * W
                for j in range(span):
                    ix = 2 * ox0 - 1 + j
                    inside = row_ok and ix >= 0 and ix < W
                    values[(ci * 3 + ky) * span + j] = load(x, row + ix) if inside else zero

    def stem(x, weight, y, tasks, C, H, W, Ho, Wo, runs, inv_runs, inv_ho, group):
        shared = cuda.shared.array(shared_values, acc)
        c0 = nt.int64(cuda.blockIdx.y) * group
        count = min(group, C - c0)
        tid = nt.int64(cuda.threadIdx.x)
        threads = nt.int64(cuda.blockDim.x)
        for i in range(tid, count * TAPS, threads):
            shared[i] = ldg(weight, c0 * TAPS + i)
        cuda.syncthreads()
        task = nt.int64(cuda.blockIdx.x) * threads + tid
        if task >= tasks:
            return
        row, run = divmod_(task, runs, inv_runs)
        n, oy = divmod_(row, Ho, inv_ho)
        ox0 = run * pixels
        values = cuda.local.array(loaded, acc)
        load_inputs(x, values, n, oy, ox0, H, W)
        sums = cuda.local.array(pixels, acc)
        plane = Ho * Wo
        out = (n * C + c0) * plane + oy * Wo + ox0
        full = ox0 + pixels <= Wo
        for c in range(count):
            for p in range(pixels):
                sums[p] = zero
            for ci in range(3):
                for ky in range(3):
                    for kx in range(3):
                        w = shared[c * TAPS + (ci * 3 + ky) * 3 + kx]
                        for p in range(pixels):
                            v = values[(ci * 3 + ky) * span + 2 * p + kx]
                            sums[p] = cuda.fma(w, v, sums[p])
            at = out + c * plane
            if full:
                for p in range(pixels):
                    store(y, at + p, sums[p])
            else:  # the row's last run
                for p in range(pixels):
                    if ox0 + p < Wo:
                        store(y, at + p, sums[p])

    return kernel(stem, ("x", "weight", "y"), StemScalars, registers)
