"""The pixel walk: the stride-1 gather on small planes, a thread per few destination pixels.

A task is (sample, channel, frame chunk, row band, column group), column group fastest:
``rows`` x ``cols`` (each 1 or 2) adjacent destination pixels through ``frames``
destination frames (compile-time counts, ``_cuda_tuning.pixel_walk``: 2 x 1 x 4 for
float32 and float64 storage, 2 x 2 x 4 for 16-bit storage). The lanes of a warp hold
consecutive column groups of one plane (or of adjacent planes), so every load and store
of the warp reads or writes nearby addresses. A task decodes its channel's shift once,
finds its taps (``rows + 1`` source rows x ``cols + 1`` columns, each inside the source
or selected away) and issues the loads of all ``frames + 1`` source frames its
destination frames read before it uses any, so a thread has its whole chunk's loads in
flight at once; each source frame is interpolated along W and H once and blended into
the two destination frames it feeds. Neighbouring lanes' taps overlap, so most loads are
served by L1.

Against the frame walk (``_cuda_gather``), which keeps one column's band of 8 rows per
task and walks the frames one pass after another, this trades loads per output (3.75 at
2 x 1 x 4, 2.81 at 2 x 2 x 4, against about 2.25) for parallelism: on a 14 x 14 plane
the frame walk has one task per 28 to 64 outputs, whose passes wait on their loads one
after another, the pixel walk one task per 8 or 16 outputs and one round of loads.

Bounds and rounding are the frame walk's: every address is clamped inside the source, a
tap outside it (or of zero weight) is selected away, never multiplied, and the same
fused multiply-adds run in the same order (W, then H, then T), so its values are the
frame walk's bit for bit. A NaN shift makes its channel NaN.
"""

from __future__ import annotations

from numba import cuda
from numba import types as nt

from ._cuda_device import (
    divmod_,
    inlined,
    ldg,
    offset,
    plane_index,
)
from ._cuda_gather import _entry, device_parts, shift_signature
from ._cuda_scalars import GatherPixelsScalars

i32 = nt.int32
i64 = nt.int64


def gather_pixels_signature(storage: str, shift_storage: str, affine: bool = False) -> tuple:
    """(src, shift, dst[, scale, bias], *GatherPixelsScalars)."""
    return shift_signature(storage, shift_storage, affine, GatherPixelsScalars)


def build_gather_pixels(
    storage: str,
    shift_storage: str,
    *,
    frames: int,
    rows: int = 1,
    cols: int = 1,
    affine: bool = False,
    registers: int | None = None,
):
    """The pixel-walk gather for one (storage, shift storage) pair: ``frames``
    destination frames of ``rows`` x ``cols`` (each 1 or 2) adjacent destination pixels
    per task (compile-time counts), ``affine`` with the input prologue (scale and bias
    pointers after dst, each source value read as relu(value * scale[c] + bias[c])),
    ``registers`` the register cap."""
    if frames < 1 or rows not in (1, 2) or cols not in (1, 2):
        raise ValueError(
            f"the pixel walk takes frames >= 1 and rows and cols 1 or 2, got {frames}, "
            f"{rows}, {cols}"
        )
    p = device_parts(storage, shift_storage)
    acc, load, store = p.acc, p.load, p.store
    zero, one, nan = p.zero, p.one, p.nan
    within, clamp, decode, prologue = p.within, p.clamp, p.decode, p.prologue
    F = frames
    F1 = frames + 1
    R1 = rows + 1  # source rows and columns per task
    C1 = cols + 1
    TAPS = R1 * C1 * F1
    OUT = rows * cols  # destination pixels per task and frame
    ACROSS = R1 * cols  # a source frame interpolated along W, per source row

    @inlined
    def activate(v, s, b, ok):
        """A loaded tap as the walk uses it: relu(v * s + b) in the affine kernel (NaN
        stays NaN), 0 where ``ok`` is False (outside the source)."""
        if affine:
            return prologue(v, s, b, not ok)
        return v if ok else zero

    @inlined
    def blend(first, second, w0, w1, use0, use1):
        """The interpolation of two taps along one axis (a tap of zero weight selected
        away, never multiplied: it may be inf)."""
        x = w0 * first if use0 else zero
        return cuda.fma(w1, second, x) if use1 else x

    def pixels_body(
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
        pt,
        ph,
        pw,
        adjoint,
        quantize,
        channel_major,
        chunks,
        inv_pixels,
        inv_w,
        inv_chunks,
        inv_c,
    ):
        g = i64(cuda.blockIdx.x) * cuda.blockDim.x + cuda.threadIdx.x
        grid_stride = i64(cuda.gridDim.x) * cuda.blockDim.x
        pixels = Hd * Wd
        bands = (Hd + rows - 1) // rows  # tasks down and across a plane
        groups = (Wd + cols - 1) // cols
        Ts32 = i32(Ts)
        Hs32 = i32(Hs)
        Ws32 = i32(Ws)
        Wd32 = i32(Wd)
        Hd32 = i32(Hd)
        frame_s = Hs * Ws if channel_major != 0 else C * Hs * Ws
        frame_d = pixels if channel_major != 0 else C * pixels
        raw = cuda.local.array(TAPS, acc)
        across = cuda.local.array(ACROSS, acc)
        prev = cuda.local.array(OUT, acc)
        cur = cuda.local.array(OUT, acc)
        while g < tasks:
            r, pix = divmod_(g, bands * groups, inv_pixels)
            r, chunk = divmod_(r, chunks, inv_chunks)
            n, c = divmod_(r, C, inv_c)
            g += grid_stride
            band, group = divmod_(pix, groups, inv_w)
            hd = i32(band * rows)
            wd = i32(group * cols)
            t0 = i32(chunk * F)
            count = i32(min(i64(F), Td - t0))  # destination frames of this task
            d0 = plane_index(n, t0, c, N, Td, C, channel_major) * pixels + hd * Wd + wd
            bad, ot, oh, ow, wt0, wt1, wh0, wh1, ww0, ww1 = decode(
                shift, c, C, adjoint, quantize, pt, ph, pw
            )
            if bad:
                for k in range(F):
                    for y in range(rows):
                        for x in range(cols):
                            if k < count and hd + y < Hd32 and wd + x < Wd32:
                                store(offset(dst, d0), i32(k * frame_d + y * Wd32 + x), nan)
                continue
            if affine:
                s_c = acc(ldg(scale, c))
                b_c = acc(ldg(bias, c))
            else:
                s_c = one
                b_c = zero
            hs0 = i32(hd + oh)
            ws0 = i32(wd + ow)
            use_w0 = ww0 != zero  # a zero weight: that corner is selected away
            use_w1 = ww1 != zero
            use_h0 = wh0 != zero
            use_h1 = wh1 != zero
            use_t0 = wt0 != zero
            use_t1 = wt1 != zero
            base = offset(src, plane_index(n, 0, c, N, Ts, C, channel_major) * Hs * Ws)
            s_first = i32(t0 + ot)  # source frame of step j: s_first + j
            # every source frame's taps, loaded before any is used (clamped addresses)
            for j in range(F1):
                f = offset(base, i64(clamp(s_first + j, Ts32)) * frame_s)
                for k in range(R1):
                    row = clamp(hs0 + k, Hs32) * Ws32
                    for m in range(C1):
                        raw[(j * R1 + k) * C1 + m] = load(f, i32(row + clamp(ws0 + m, Ws32)))
            q = offset(dst, d0)
            prev_ok = False
            for j in range(F1):
                cur_ok = within(s_first + j, Ts32)
                for k in range(R1):
                    row_in = within(hs0 + k, Hs32)
                    left = activate(raw[(j * R1 + k) * C1], s_c, b_c, row_in & within(ws0, Ws32))
                    for m in range(cols):
                        inside = row_in & within(ws0 + m + 1, Ws32)
                        right = activate(raw[(j * R1 + k) * C1 + m + 1], s_c, b_c, inside)
                        across[k * cols + m] = blend(left, right, ww0, ww1, use_w0, use_w1)
                        left = right
                for y in range(rows):
                    for x in range(cols):
                        above = across[y * cols + x]
                        below = across[(y + 1) * cols + x]
                        cur[y * cols + x] = blend(above, below, wh0, wh1, use_h0, use_h1)
                if j > 0 and j - 1 < count:
                    a_ok = prev_ok & use_t0
                    b_ok = cur_ok & use_t1
                    for y in range(rows):
                        for x in range(cols):
                            if (y == 0 or hd + y < Hd32) and (x == 0 or wd + x < Wd32):
                                out = blend(prev[y * cols + x], cur[y * cols + x], wt0, wt1,
                                            a_ok, b_ok)  # fmt: skip
                                store(q, i32((j - 1) * frame_d + y * Wd32 + x), out)
                for i in range(OUT):
                    prev[i] = cur[i]
                prev_ok = cur_ok

    return _entry("gather_pixels", inlined(pixels_body), GatherPixelsScalars, affine, registers)
