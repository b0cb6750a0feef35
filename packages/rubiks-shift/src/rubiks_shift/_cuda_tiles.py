"""The tile walk: the stride-1 gather with source frames staged in shared memory.

A block's task is one (sample, channel, band of ``rows`` destination rows, chunk of
frames). It walks the frames: each source frame's band (rows + 1 source rows, one
contiguous range of memory) is copied into a shared-memory stage with ``cp.async``
16-byte segments, ``stages - 1`` frames ahead of the one being computed, so the bytes in
flight wait in shared memory rather than registers. Each thread owns up to ``outputs``
outputs of the band (output o = tid + j * threads, row-major within the band), reads
their four taps from the staged frame (interpolated along W and H), and blends
consecutive frames along T from a register holding the previous frame's value. Every
source element is read from global memory once per band (rows + 1 rows per ``rows``
output rows); loads and stores are coalesced and the copies need no alignment of the
shift.

Temporal and row stride 1 only (forward and adjoint; any column stride), sources at
least two columns wide (``frames_walk_applies``), sm_80 or newer for ``cp.async``. The
same rules as the other gathers: zero-weight corners and taps outside the source are
selected away (never multiplied by a zero weight), a NaN shift makes its channel NaN.

Segments are aligned to 16 bytes of the actual address, so a stage holds the band from
up to one segment before it: a frame's tile starts at its *phase* (elements past the
boundary). The first and last segment may therefore read up to 15 bytes outside the
tensor, never outside the 16-byte-aligned block holding its first or last byte.
"""

from __future__ import annotations

import os

from numba import cuda
from numba import types as nt

from ._cuda_async import (
    SEGMENT_BYTES,
    address_of,
    commit,
    make_shared_load,
    make_wait,
    shared_base,
    shared_copy16,
)
from ._cuda_gather import device_parts
from ._cuda_kernels import _NUMBA_STORAGE, kernel_decorator, offset

ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
# outputs per thread (compile time: each keeps its taps and previous value in registers)
TILE_OUTPUTS = int(os.environ.get("RUBIKS_SHIFT_TILE_OUTPUTS", "4"))
# shared-memory stages per block: the frame computed plus stages - 1 copies in flight
TILE_STAGES = int(os.environ.get("RUBIKS_SHIFT_TILE_STAGES", "4"))
# register cap: ptxas fits 4 outputs in 64 registers without spilling (and 2 in 48), where
# it would take 108 uncapped (the one-time setup, not the frame loop, sets the peak)
TILE_REGISTERS = int(os.environ.get("RUBIKS_SHIFT_TILE_REGISTERS", "64")) or None
i32 = nt.int32
i64 = nt.int64
f64 = nt.float64


def tiles_signature(storage: str, shift_storage: str) -> tuple:
    """The signature of the tile walk (``build_tiles``)."""
    ptr = nt.CPointer(_NUMBA_STORAGE[storage])
    sptr = nt.CPointer(_NUMBA_STORAGE[shift_storage])
    return (ptr, sptr, ptr) + (i64,) * 17 + (f64,) * 4


def stage_elements(storage: str, rows: int, w_src: int) -> int:
    """Elements of one shared-memory stage: a band of rows + 1 source rows from up to one
    segment before it, in whole segments, and one more segment kept zero (masked taps
    read it)."""
    per = SEGMENT_BYTES // ITEMSIZE[storage]
    return -(-(per - 1 + (rows + 1) * w_src) // per) * per + per


def build_tiles(
    storage: str,
    shift_storage: str,
    outputs: int = TILE_OUTPUTS,
    stages: int = TILE_STAGES,
    registers: int | None = TILE_REGISTERS,
):
    """The tile-walk gather for one (storage, shift storage) pair; ``outputs`` per
    thread and ``stages`` of shared memory are compile-time (benchmark sweeps vary
    them)."""
    if outputs < 1 or stages < 2:
        raise ValueError(f"tile walk: {outputs} outputs per thread, {stages} stages")
    p = device_parts(storage, shift_storage)
    acc, store, zero, nan = p.acc, p.store, p.zero, p.nan
    divmod_, within, column_slots, decode = p.divmod_, p.within, p.column_slots, p.decode
    itemsize = ITEMSIZE[storage]
    per = SEGMENT_BYTES // itemsize  # elements per copied segment
    smem_type = _NUMBA_STORAGE[storage]
    K = outputs
    S = stages
    wait = make_wait(S - 2)  # the frame about to be computed has landed

    shared_load = make_shared_load(storage)

    @cuda.jit(device=True, inline="always")
    def phase(base, g):
        """Elements from the 16-byte boundary at or below element g of the source."""
        return i32(((base + g * itemsize) & (SEGMENT_BYTES - 1)) // itemsize)

    @cuda.jit(device=True, inline="always")
    def issue(smem, frame, segments, buf, tid, nthreads):
        """Copy ``segments`` segments from ``frame`` (segment-aligned) into the stage at
        element ``buf``, one segment per thread in turn."""
        m = tid
        while m < segments:
            shared_copy16(smem, buf + m * per, frame, m * per)
            m += nthreads

    @cuda.jit(device=True, inline="always")
    def tap(ok, rel, stage_zero):
        """Byte offset in a stage of a tap at element ``rel``, or of the stage's zero
        segment where the tap is masked (so it reads 0 and is never multiplied in)."""
        return nt.uint32((rel if ok else stage_zero) * itemsize)

    @kernel_decorator(registers)
    def gather_tiles(
        src,
        shift,
        dst,
        tasks,
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
        rows,
        frames_per_task,
        stage,
        inv_w,
        inv_bands,
        inv_chunks,
        inv_c,
    ):
        """The gather at temporal and row stride 1 by shared-memory tiles (module
        docstring). One task (n, c, frame chunk, row band) per block; ``stage`` elements
        per shared stage, its last segment kept zero (the launch gives ``stages`` of
        them as dynamic shared memory); ``inv_*``: float64 reciprocals of Wd, the bands,
        frame chunks and C. The plan guarantees that a source frame is a whole number of
        segments (every frame of a task has the same phase). Any block size: a band with
        more outputs than threads x outputs is walked in several rounds. Values that
        live across the frame loop are 32-bit or running pointers, to keep registers
        (and so resident threads) for the taps."""
        smem = cuda.shared.array(0, smem_type)
        tid = i32(cuda.threadIdx.x)
        nthreads = i32(cuda.blockDim.x)
        stage32 = i32(stage)
        zero_at = i32(stage32 - per)  # the stage's zero segment
        z = tid
        while z < S * per:  # zero segments: never written by a copy
            smem[(z // per) * stage32 + zero_at + z % per] = smem_type(0)
            z += nthreads
        smem0 = shared_base(smem)
        prev = cuda.local.array(K, acc)
        ta0 = cuda.local.array(K, nt.uint32)  # byte offsets of the four taps in a stage
        ta1 = cuda.local.array(K, nt.uint32)
        tb0 = cuda.local.array(K, nt.uint32)
        tb1 = cuda.local.array(K, nt.uint32)
        wv0 = cuda.local.array(K, acc)
        wv1 = cuda.local.array(K, acc)
        task = i64(cuda.blockIdx.x)
        bands = (Hd + rows - 1) // rows
        chunks = (Td + frames_per_task - 1) // frames_per_task
        r, band = divmod_(task, bands, inv_bands)
        r, chunk = divmod_(r, chunks, inv_chunks)
        n, c = divmod_(r, C, inv_c)
        h0 = i32(band * rows)
        nrows = i32(min(rows, Hd - h0))
        t0 = i32(chunk * frames_per_task)
        steps = i32(min(t0 + frames_per_task, Td) - t0)  # step i reads source frame
        nout = i32(nrows * i32(Wd))  # t0 + ot + i and completes destination t0 + i - 1
        out0 = ((n * Td + t0) * C + c) * Hd * Wd + h0 * Wd  # (t0, h0, 0) of the task
        bad, ot, oh, ow, wt0, wt1, wh0, wh1, ww0, ww1 = decode(
            shift, c, C, adjoint, quantize, pt, ph, pw
        )
        Ts32 = i32(Ts)
        Hs32 = i32(Hs)
        Ws32 = i32(Ws)
        hs0 = i32(h0 + oh)  # source row of row corner 0 of the band's first row
        lo = i32(min(max(hs0, i32(0)), Hs32))  # the band's rows inside the source
        hi = i32(max(min(hs0 + nrows + 1, Hs32), lo))
        count = i32((hi - lo) * Ws32)
        use_a = wh0 != zero  # a zero row or frame weight: that tap is not read (an
        use_b = wh1 != zero  # inf there must not become inf * 0 = NaN)
        use_t0 = wt0 != zero
        use_t1 = wt1 != zero
        g_lo = (n * Ts * C + c) * Hs * Ws + lo * Ws  # (frame 0, row lo) of the task
        at = phase(address_of(src), g_lo)  # the same for every frame (whole segments)
        segments = i32((at + count + per - 1) // per) if count > 0 else i32(0)
        s_first = i32(t0 + ot)
        frame_s = C * Hs * Ws
        seg_lo = g_lo - at  # segment-aligned start of frame 0's band
        frame_d = C * Hd * Wd
        for first in range(0, nout, K * nthreads):  # one round unless the band is wide
            for j in range(K):
                o = i32(first + j * nthreads + tid)
                if o < nout:
                    k, w = divmod_(o, Wd, inv_w)
                    ws0 = i32(w + ow)  # column stride 1: source columns w + ow + e
                    ws1 = i32(ws0 + 1)
                    okw0 = within(ws0, Ws32)
                    okw1 = within(ws1, Ws32)
                    c0, m0, m1, v0, v1 = column_slots(okw0, ws0, ww0, okw1, ws1, ww1, Ws32)
                    ra = i32(hs0 + k)
                    row_a = use_a & (ra >= lo) & (ra < hi)
                    row_b = use_b & (ra + 1 >= lo) & (ra + 1 < hi)
                    rel = i32(at + i32(min(max(ra - lo, i32(0)), i32(rows))) * Ws32 + c0)
                    ta0[j] = tap(row_a & m0, rel, zero_at)
                    ta1[j] = tap(row_a & m1, rel + 1, zero_at)
                    rel = i32(at + i32(min(max(ra + 1 - lo, i32(0)), i32(rows))) * Ws32 + c0)
                    tb0[j] = tap(row_b & m0, rel, zero_at)
                    tb1[j] = tap(row_b & m1, rel + 1, zero_at)
                    wv0[j] = v0
                    wv1[j] = v1
                else:  # no output: its taps read the zero segment
                    ta0[j] = ta1[j] = tb0[j] = tb1[j] = tap(False, 0, zero_at)
                    wv0[j] = wv1[j] = zero
            for i in range(S - 1):  # prologue: the first stages - 1 frames in flight
                s = i32(s_first + i)
                fetch = within(s, Ts32) & ((use_t0 & (i < steps)) | (use_t1 & (i >= 1)))
                if (i <= steps) & fetch:
                    frame = offset(src, seg_lo + s * frame_s)
                    issue(smem, frame, segments, i32(i * stage32), tid, nthreads)
                commit()
            prev_ok = False
            cur_stage = i32(0)  # stage of step i, and of step i + S - 1
            ahead_stage = i32((S - 1) * stage32)
            q = offset(dst, out0)  # destination frame of step i (from step 1 on)
            i = i32(0)
            while i <= steps:
                wait()
                cuda.syncthreads()  # frame i has landed for every thread; frame i - 1's
                ahead = i32(i + S - 1)  # stage, read last step by all, is free again
                s = i32(s_first + ahead)
                fetch = within(s, Ts32) & ((use_t0 & (ahead < steps)) | use_t1)
                if (ahead <= steps) & fetch:
                    frame = offset(src, seg_lo + s * frame_s)
                    issue(smem, frame, segments, ahead_stage, tid, nthreads)
                commit()
                s = i32(s_first + i)
                cur_ok = within(s, Ts32) & ((use_t0 & (i < steps)) | (use_t1 & (i >= 1)))
                here = nt.uint32(smem0 + nt.uint32(cur_stage * itemsize))
                a_ok = prev_ok & use_t0
                b_ok = cur_ok & use_t1
                for j in range(K):
                    cur = zero
                    if cur_ok:
                        ra = cuda.fma(
                            wv1[j],
                            shared_load(smem, here + ta1[j]),
                            wv0[j] * shared_load(smem, here + ta0[j]),
                        )
                        rb = cuda.fma(
                            wv1[j],
                            shared_load(smem, here + tb1[j]),
                            wv0[j] * shared_load(smem, here + tb0[j]),
                        )
                        cur = cuda.fma(wh1, rb, wh0 * ra)
                    o = i32(first + j * nthreads + tid)
                    if (i >= 1) & (o < nout):
                        x = wt0 * prev[j] if a_ok else zero
                        out = cuda.fma(wt1, cur, x) if b_ok else x
                        store(q, o, nan if bad else out)
                    prev[j] = cur
                if i >= 1:
                    q = offset(q, frame_d)
                prev_ok = cur_ok
                cur_stage = i32(0) if cur_stage == (S - 1) * stage32 else cur_stage + stage32
                nxt = ahead_stage + stage32
                ahead_stage = i32(0) if ahead_stage == (S - 1) * stage32 else nxt
                i += 1
            cuda.syncthreads()  # every stage free before the next round

    return gather_tiles
