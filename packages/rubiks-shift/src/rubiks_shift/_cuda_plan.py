"""Launch plans of the CUDA kernels: which kernel, with which grid, block and scalars.

A plan is a tuple of ``Step`` launches, made once per call signature (the plans are
cached, here and in ``_cuda``) from the shapes and a ``Tuning`` (``_cuda_tuning``): the
gathers' (``gather_plan``: the frame walk at temporal and row stride 1, the pixel walk
for the fused form's shift on small planes, the row walk elsewhere, with the layout
heuristics ``row_walk_layout`` / ``frame_walk_layout``; quantized shifts at stride 1
without padding as the elementwise pass ``integer_shift_plan``) and the shift gradient's
(``shift_grad_plan``), the prologue alone's (``affine_relu_plan``), training batch
norm's and the stem's (``stem_plan``). Imports neither Numba nor torch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from ._cuda_scalars import (
    AffineReluScalars,
    BatchNormChannelScalars,
    BatchNormElementwiseScalars,
    BatchNormPartialScalars,
    BatchNormStatsScalars,
    FinalizeScalars,
    GatherFramesScalars,
    GatherPixelsScalars,
    GatherScalars,
    GradShiftScalars,
    IntegerShiftScalars,
    StemScalars,
)
from ._cuda_tuning import TUNING, Tuning, pixel_walk, prologue_per_thread

MAX_GRID_YZ = 65535  # grid y limit (channels of the shift-gradient kernel)


class Step(NamedTuple):
    """One kernel launch of a plan: kernel name, grid, block and scalar arguments (a
    ``_cuda_scalars`` block)."""

    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    scalars: tuple
    waves: int = 0  # > 0: a grid-stride kernel, its grid capped at this many resident waves


class RowWalkLayout(NamedTuple):
    """How a row-walk gather spreads its tasks."""

    frames_inner: bool  # task order: a channel's frames side by side, else memory order
    waves: int  # grid cap in waves of resident blocks (0: one thread per task)
    rows: int  # destination rows per task


class FrameWalkLayout(NamedTuple):
    """How a frame-walk gather spreads its tasks."""

    frames: int  # destination frames per task
    rows: int  # destination rows per task (at most the kernel's compile-time bound)


class ShiftGradPlan(NamedTuple):
    """The shift gradient's two launches."""

    parts: int  # partial sums per channel (grad_shift's blocks per channel)
    grad_shift: Step
    finalize: Step


def check_channels(channels: int) -> None:
    if channels > MAX_GRID_YZ:
        raise ValueError(
            f"rubiks_shift on CUDA supports at most {MAX_GRID_YZ} channels, got {channels}"
        )


def task_rows(
    planes: int, rows: int, width: int, row_stride: int, adjoint: bool, tuning: Tuning = TUNING
) -> int:
    """Destination rows per row-walk task (the best of a sweep on an H200, 2026-12-01,
    benchmarks/sweep_kernels.py, with the grid capped at one wave): 16 for the
    row-reusing stride-1 walk, 8 for the generic strided walk, whole columns for the
    adjoint's stride-2 walk; then halved (in multiples of the unrolled row group) while
    that leaves fewer than ``row_walk_min_tasks`` tasks to spread over the GPU."""
    group = tuning.row_walk_group
    if row_stride == 1:
        per_task = 16
    elif adjoint and row_stride == 2:
        per_task = rows
    else:
        per_task = 8
    per_task = min(rows, per_task)
    while per_task > group and planes * -(-rows // per_task) * width < tuning.row_walk_min_tasks:
        per_task = min(rows, -(-(per_task // 2) // group) * group)
    return per_task


def task_rows_per_thread(planes: int, rows: int, width: int, tuning: Tuning = TUNING) -> int:
    """Destination rows per row-walk task with one task per thread: whole columns unless
    that leaves fewer than ``one_task_per_thread_tasks`` tasks; a multiple of the
    unrolled row group where the plane has that many rows."""
    group = tuning.row_walk_group
    chunks = min(rows, max(1, -(-tuning.one_task_per_thread_tasks // (planes * width))))
    per_task = max(min(rows, 4), -(-rows // chunks))
    return min(rows, -(-per_task // group) * group)


def row_walk_layout(
    storage: str,
    quantize: bool,
    adjoint: bool,
    planes: int,
    h_dst: int,
    w_dst: int,
    row_stride: int,
    tuning: Tuning = TUNING,
) -> RowWalkLayout:
    """The layout of a row-walk launch. Tuned on an H200 (2026-12-01, float32 without
    quantize; BENCHMARKS.md): a grid of ``row_walk_waves`` resident waves whose threads
    loop over tasks, rows by row walk (``task_rows``), and frames inner where a row fills
    a warp (narrower rows keep the planes' memory order, which keeps a warp's accesses
    contiguous). Other dtypes and quantize, not swept yet, keep one thread per task and
    planes in order (``task_rows_per_thread``)."""
    tuned = storage == "float32" and not quantize
    if tuned:
        rows = task_rows(planes, h_dst, w_dst, row_stride, adjoint, tuning)
    else:
        rows = task_rows_per_thread(planes, h_dst, w_dst, tuning)
    if tuning.row_walk_order == "auto":
        frames_inner = tuned and w_dst >= tuning.frames_inner_min_width
    else:
        frames_inner = tuning.row_walk_order == "frames"
    return RowWalkLayout(frames_inner, tuning.row_walk_waves if tuned else 0, rows)


def frames_walk_applies(src_shape, stride) -> bool:
    """Whether the frame walk can run this gather: temporal and row stride 1 and a
    source more than one column wide."""
    return stride[0] == 1 and stride[1] == 1 and src_shape[4] > 1


def affine_takes_rows(src_shape, storage: str, quantize: bool, tuning: Tuning = TUNING) -> bool:
    """Whether an affine gather (the shift with its prologue) where the frame walk applies
    takes the row walk instead: quantized ones (those the elementwise pass does not
    take) on planes of at most ``tuning.quantized_affine_rows`` pixels; interpolated ones
    over one-frame clips (``tuning.one_frame_affine_rows``) and on float32 planes in
    ``tuning.float32_affine_rows``."""
    _, frames, _, height, width = src_shape
    if quantize:
        return height * width <= tuning.quantized_affine_rows
    if frames == 1:
        return tuning.one_frame_affine_rows
    smallest, largest = tuning.float32_affine_rows
    return storage == "float32" and smallest <= height * width <= largest


def affine_takes_pixels(
    src_shape, stride, quantize: bool, storage: str, tuning: Tuning = TUNING
) -> bool:
    """Whether an affine gather of ``storage`` tensors takes the pixel walk:
    interpolated, stride 1 on every axis, more than one frame, planes of at most
    ``pixel_walk(storage, tuning).plane`` pixels."""
    _, frames, _, height, width = src_shape
    small = height * width <= pixel_walk(storage, tuning).plane
    return tuple(stride) == (1, 1, 1) and not quantize and frames > 1 and small


def _pixel_walk_plan(
    src_shape, dst_shape, padding, storage: str, tuning: Tuning, channel_major: bool
) -> tuple[Step, ...]:
    """The launch of the pixel walk (see ``gather_plan``): tasks of the rows, columns
    and frames of ``pixel_walk(storage, tuning)``."""
    n_batch, _, channels, _, _ = src_shape
    _, t_dst, _, h_dst, w_dst = dst_shape
    walk = pixel_walk(storage, tuning)
    chunks = -(-t_dst // walk.frames)
    bands = -(-h_dst // walk.rows)
    groups = -(-w_dst // walk.cols)
    tasks = n_batch * channels * chunks * bands * groups
    scalars = GatherPixelsScalars(
        tasks=tasks,
        **_gather_fields(src_shape, dst_shape, padding, False, False, channel_major),
        chunks=chunks,
        inv_pixels=1.0 / (bands * groups),
        inv_w=1.0 / groups,
        inv_chunks=1.0 / chunks,
        inv_c=1.0 / channels,
    )
    threads = tuning.pixel_walk_threads
    return (Step("gather_pixels", (-(-tasks // threads), 1, 1), (threads, 1, 1), scalars),)


def frame_walk_layout(
    batch: int, channels: int, t_dst: int, h_dst: int, w_dst: int, tuning: Tuning = TUNING
) -> FrameWalkLayout:
    """The layout of a frame-walk launch: all frames and ``frame_walk_rows`` rows per
    task, then fewer frames, then fewer rows, while that leaves under
    ``frame_walk_min_tasks`` tasks to spread over the GPU."""
    frames, rows = t_dst, min(h_dst, tuning.frame_walk_rows)

    def tasks(f: int, r: int) -> int:
        return batch * channels * -(-t_dst // f) * -(-h_dst // r) * w_dst

    while frames > 1 and tasks(frames, rows) < tuning.frame_walk_min_tasks:
        frames = -(-frames // 2)
    while rows > 1 and tasks(frames, rows) < tuning.frame_walk_min_tasks:
        rows = -(-rows // 2)
    return FrameWalkLayout(frames, rows)


def _gather_fields(src_shape, dst_shape, padding, quantize, adjoint, channel_major) -> dict:
    """The scalars both gathers take alike, by name: samples, channels, source and
    destination sizes, padding and the flags."""
    n_batch, t_src, channels, h_src, w_src = src_shape
    _, t_dst, _, h_dst, w_dst = dst_shape
    sizes = dict(N=n_batch, C=channels, Ts=t_src, Hs=h_src, Ws=w_src, Td=t_dst, Hd=h_dst, Wd=w_dst)
    pads = dict(pt=padding[0], ph=padding[1], pw=padding[2])
    flags = dict(adjoint=int(adjoint), quantize=int(quantize), channel_major=int(channel_major))
    return dict(**sizes, **pads, **flags)


def _frame_walk_plan(
    src_shape, dst_shape, stride, padding, quantize, adjoint, tuning, rows, frames, channel_major
) -> tuple[Step, ...]:
    """The launch of the frame walk (see ``gather_plan``)."""
    n_batch, _, channels, _, _ = src_shape
    _, t_dst, _, h_dst, w_dst = dst_shape
    auto = frame_walk_layout(n_batch, channels, t_dst, h_dst, w_dst, tuning)
    frames = frames or auto.frames
    rows = rows or auto.rows
    bound = tuning.frame_walk_rows
    if not 1 <= rows <= bound or frames < 1:
        raise ValueError(f"frame-walk tasks of {rows} rows (at most {bound}), {frames} frames")
    bands = -(-h_dst // rows)
    chunks = -(-t_dst // frames)
    tasks = n_batch * channels * chunks * bands * w_dst
    scalars = GatherFramesScalars(
        tasks=tasks,
        **_gather_fields(src_shape, dst_shape, padding, quantize, adjoint, channel_major),
        sw=stride[2],
        rows=rows,
        frames_per_task=frames,
        inv_w=1.0 / w_dst,
        inv_bands=1.0 / bands,
        inv_chunks=1.0 / chunks,
        inv_c=1.0 / channels,
    )
    threads = tuning.frame_walk_threads
    return (Step("gather_frames", (-(-tasks // threads), 1, 1), (threads, 1, 1), scalars),)


@functools.lru_cache(maxsize=512)
def gather_plan(
    src_shape,
    dst_shape,
    stride,
    padding,
    quantize: bool,
    adjoint: bool,
    storage: str = "float32",
    tuning: Tuning = TUNING,
    rows: int | None = None,
    frames: int | None = None,
    channel_major: bool = False,
    affine: bool = False,
) -> tuple[Step, ...]:
    """Launches of the forward (adjoint=False: src = x, dst = y) or of grad_x
    (adjoint=True: src = grad_y, dst = grad_x) for ``storage`` tensors whose planes are in
    (N, T, C) order, or (C, N, T) order where ``channel_major``: the frame walk where it
    applies and ``tuning.stride_one_walk`` is "frames" (for the ``affine`` forward, with
    its prologue, not where ``affine_takes_rows``, and the pixel walk, ``gather_pixels``,
    where ``affine_takes_pixels``), else the row walk.
    ``rows`` and (frame walk) ``frames`` per task override the layout's (benchmark
    sweeps; given, they ask for the frame or row walk, never the pixel walk, whose
    tasks are compile-time ``Tuning`` values); a ``tuning`` other than the default with
    kernel values of its own must be launched with kernels built from it
    (``_cuda_kernels.Kernels``)."""
    n_batch, _, channels, h_src, w_src = src_shape
    _, t_dst, _, h_dst, w_dst = dst_shape
    check_channels(channels)
    for h, w in ((h_src, w_src), (h_dst, w_dst)):
        if h * w >= 2**31:
            raise ValueError(f"rubiks_shift on CUDA: planes of {h}x{w} are too large (>= 2^31)")
    given = rows is not None or frames is not None
    integer = quantize and tuning.integer_shift and not given
    if integer and integer_shift_applies(src_shape, stride, padding, storage, tuning):
        return (integer_shift_plan(src_shape, storage, adjoint, channel_major, tuning),)
    frame_walk = tuning.stride_one_walk == "frames" and frames_walk_applies(src_shape, stride)
    if frame_walk and not (affine and affine_takes_rows(src_shape, storage, quantize, tuning)):
        pixels = affine and not adjoint and not given
        if pixels and affine_takes_pixels(src_shape, stride, quantize, storage, tuning):
            return _pixel_walk_plan(src_shape, dst_shape, padding, storage, tuning, channel_major)
        return _frame_walk_plan(
            src_shape,
            dst_shape,
            stride,
            padding,
            quantize,
            adjoint,
            tuning,
            rows,
            frames,
            channel_major,
        )
    planes = n_batch * t_dst * channels
    layout = row_walk_layout(storage, quantize, adjoint, planes, h_dst, w_dst, stride[1], tuning)
    rows = rows or layout.rows
    chunks = -(-h_dst // rows)  # row chunks per destination column
    tasks = n_batch * t_dst * channels * chunks * w_dst
    scalars = GatherScalars(
        tasks=tasks,
        **_gather_fields(src_shape, dst_shape, padding, quantize, adjoint, channel_major),
        st=stride[0],
        sh=stride[1],
        sw=stride[2],
        rows=rows,
        frames_inner=int(layout.frames_inner),
        inv_plane=1.0 / (chunks * w_dst),
        inv_w=1.0 / w_dst,
        inv_c=1.0 / channels,
        inv_t=1.0 / t_dst,
        inv_chunks=1.0 / chunks,
        inv_n=1.0 / n_batch,
    )
    threads = tuning.row_walk_threads
    grid = (-(-tasks // threads), 1, 1)
    name = "gather_narrow" if w_src == 1 else "gather"  # a one-column source: one slot
    return (Step(name, grid, (threads, 1, 1), scalars, layout.waves),)


def integer_shift_applies(
    src_shape, stride, padding, storage: str, tuning: Tuning = TUNING
) -> bool:
    """Whether a quantized shift is the elementwise pass ``shift_integer``: stride 1 and
    no padding in every dimension (each output value one input value, same shapes), on
    clips whose offsets fit the kernel's int32s (a source up to T frames on, a task's
    values up to ``prologue_per_thread`` slabs on)."""
    if tuple(stride) != (1, 1, 1) or tuple(padding) != (0, 0, 0):
        return False
    n_batch, frames, channels, height, width = src_shape
    values = n_batch * frames * channels * height * width
    return values + prologue_per_thread(storage, tuning) * channels * height * width < 2**31


def integer_shift_plan(
    shape, storage: str, adjoint: bool, channel_major: bool, tuning: Tuning = TUNING
) -> Step:
    """The launch of ``shift_integer`` over an (N, T, C, H, W) clip of ``storage`` values,
    channel-major or contiguous: the forward, or with ``adjoint`` grad_x from grad_y.
    A task takes ``prologue_per_thread`` slabs of one pixel, a thread per task."""
    n_batch, frames, channels, height, width = shape
    check_channels(channels)
    plane, slabs = height * width, n_batch * frames
    groups = -(-slabs // prologue_per_thread(storage, tuning))
    per_channel = groups * plane
    tasks = channels * per_channel
    chan_stride, slab_stride = (
        (slabs * plane, plane) if channel_major else (plane, channels * plane)
    )
    scalars = IntegerShiftScalars(
        tasks=tasks,
        C=channels,
        per_channel=per_channel,
        inv_per_channel=1.0 / per_channel,
        plane=plane,
        inv_plane=1.0 / plane,
        W=width,
        inv_W=1.0 / width,
        H=height,
        T=frames,
        inv_T=1.0 / frames,
        S=slabs,
        chan_stride=chan_stride,
        slab_stride=slab_stride,
        adjoint=int(adjoint),
    )
    threads = tuning.prologue_threads
    return Step("shift_integer", (-(-tasks // threads), 1, 1), (threads, 1, 1), scalars)


@functools.lru_cache(maxsize=512)
def shift_grad_plan(
    x_shape,
    y_shape,
    stride,
    padding,
    normalize: bool,
    t_factor: float,
    tuning: Tuning = TUNING,
    rows: int | None = None,
    blocks: int | None = None,
    channel_major: bool = False,
) -> ShiftGradPlan:
    """The shift gradient's launches (``normalize`` and ``t_factor``: see
    ``normalize_shift_grad``); ``rows`` per task and ``blocks`` per channel override the
    defaults (benchmark sweeps); ``channel_major``: x and grad_y with planes in (C, N, T)
    order."""
    n_batch, t_in, channels, h_in, w_in = x_shape
    _, t_out, _, h_out, w_out = y_shape
    check_channels(channels)
    slabs = n_batch * t_out
    # whole output columns per task, grad_shift_tasks_per_thread tasks per thread (the
    # best of a sweep on an H200, 2026-12-01: benchmarks/sweep_kernels.py)
    rows = rows or h_out
    per_plane = -(-h_out // rows) * w_out
    threads = tuning.grad_shift_threads
    per_block = threads * tuning.grad_shift_tasks_per_thread
    blocks = blocks or max(1, -(-slabs * per_plane // per_block))
    scalars = GradShiftScalars(
        NT=slabs,
        T=t_in,
        C=channels,
        H=h_in,
        W=w_in,
        To=t_out,
        Ho=h_out,
        Wo=w_out,
        st=stride[0],
        sh=stride[1],
        sw=stride[2],
        pt=padding[0],
        ph=padding[1],
        pw=padding[2],
        rows=rows,
        inv_plane=1.0 / per_plane,
        inv_w=1.0 / w_out,
        inv_t=1.0 / t_out,
        channel_major=int(channel_major),
    )
    final = FinalizeScalars(C=channels, parts=blocks, normalize=int(normalize), t_factor=t_factor)
    return ShiftGradPlan(
        blocks,
        Step("grad_shift", (blocks, channels, 1), (threads, 1, 1), scalars),
        Step("finalize", (channels, 1, 1), (tuning.finalize_threads, 1, 1), final),
    )


@functools.lru_cache(maxsize=512)
def affine_relu_plan(
    shape,
    storage: str,
    channel_major: bool,
    shifted: bool = False,
    tuning: Tuning = TUNING,
    word_aligned: bool = False,
) -> Step:
    """The launch of ``affine_relu`` over an (N, T, C, H, W) clip of ``storage`` values
    stored channel-major ((C, N·T·H·W) rows, a frame H·W values on) or contiguous
    ((N·T·C, H·W) rows, a frame C·H·W values on), reading a per-channel frame shift where
    ``shifted``. bfloat16 values move in pairs where H·W is even and both tensors start
    on a 4-byte boundary (``word_aligned``) and ``tuning.prologue_pairs`` allows it."""
    n_batch, frames, channels, height, width = shape
    check_channels(channels)
    plane = height * width
    if channel_major:
        rows, inner = channels, n_batch * frames * plane
        frame_stride, segment = plane, frames * plane
    else:
        rows, inner = n_batch * frames * channels, plane
        frame_stride, segment = channels * plane, plane
    per_thread = prologue_per_thread(storage, tuning)
    threads = tuning.prologue_threads
    chunks = -(-inner // (threads * per_thread))
    if rows * chunks >= 2**31 or 2 * frames * frame_stride >= 2**31:  # the kernel's int32s
        raise ValueError(f"rubiks_shift on CUDA: a clip of {tuple(shape)} is too large")
    paired = (
        storage == "bfloat16"
        and tuning.prologue_pairs
        and word_aligned
        and plane % 2 == 0
        and per_thread >= 2
    )
    if paired:  # every extent below is even: count words of two values
        inner, plane, segment, frame_stride = (
            inner // 2,
            plane // 2,
            segment // 2,
            frame_stride // 2,
        )
        per_thread //= 2
        chunks = -(-inner // (threads * per_thread))
    scalars = AffineReluScalars(
        inner=inner,
        C=channels,
        chunks=chunks,
        inv_chunks=1.0 / chunks,
        inv_C=1.0 / channels,
        plane=plane,
        segment=segment,
        inv_segment=1.0 / segment,
        segment_step=threads % segment,
        frame_stride=frame_stride,
        frames=frames,
        inv_frames=1.0 / frames,
        shifted=int(shifted),
        paired=int(paired),
    )
    return Step("affine_relu", (rows * chunks, 1, 1), (threads, 1, 1), scalars)


class BatchNormPlan(NamedTuple):
    """The launches of training batch norm over a (B, C, P) tensor: the per-channel sums
    (``partial``: statistics; ``grad_partial``: the gradient's), the per-channel kernels
    (``stats``, ``coefficients``) and the elementwise passes (``normalize``: y;
    ``grad_input``: grad_x); or, for channels of at most
    ``Tuning.batch_norm_channel_values`` values, one launch per direction with a block
    per channel (``channel_forward``, ``channel_backward``; ``parts`` 0, the others
    None), of ``batch_norm_threads`` up to ``batch_norm_narrow_values`` values and of
    ``batch_norm_wide_threads`` above."""

    parts: int  # partial sums per channel
    partial: Step | None
    grad_partial: Step | None
    stats: Step | None
    coefficients: Step | None
    normalize: Step | None
    grad_input: Step | None
    channel_forward: Step | None = None
    channel_backward: Step | None = None


# the storages whose training batch-norm kernels move words of two values
BATCH_NORM_PAIRED = ("bfloat16", "float32")


def _batch_norm_pairs(
    storage: str, plane: int, per_thread: int, tuning: Tuning, word_aligned: bool
) -> bool:
    """Whether training batch norm's kernels move words of two values (bfloat16 and
    float32): rows of an even length (every row starts on a word), tensors on a word's
    boundary (4 or 8 bytes), at least two values per thread and round, and
    ``tuning.batch_norm_pairs``."""
    return (
        storage in BATCH_NORM_PAIRED
        and tuning.batch_norm_pairs
        and word_aligned
        and plane % 2 == 0
        and per_thread >= 2
    )


@functools.lru_cache(maxsize=512)
def batch_norm_plan(
    shape: tuple[int, int, int],
    storage: str,
    eps: float,
    momentum: float,
    tuning: Tuning = TUNING,
    word_aligned: bool = False,
) -> BatchNormPlan:
    """Training batch norm's launches over a (B, C, P) tensor of ``storage`` values;
    bfloat16 and float32 move as words of two values where every tensor the kernels read
    is ``word_aligned`` (``_batch_norm_pairs``)."""
    batch, channels, plane = shape
    total = batch * plane
    if total < 2:
        raise ValueError(
            f"batch norm in training needs more than one value per channel, got a {shape} tensor"
        )
    if batch * channels * plane >= 2**62 or channels >= 65536:
        raise ValueError(f"rubiks_shift on CUDA: a batch-norm input of {shape} is too large")
    threads = tuning.batch_norm_threads
    per_thread = prologue_per_thread(storage, tuning)
    if total <= tuning.batch_norm_channel_values:
        if total > tuning.batch_norm_narrow_values:
            threads = tuning.batch_norm_wide_threads
        channel_per_thread = min(per_thread, tuning.batch_norm_channel_per_thread)
        paired = _batch_norm_pairs(storage, plane, channel_per_thread, tuning, word_aligned)
        row = plane // 2 if paired else plane  # units: values or words
        scalars = BatchNormChannelScalars(
            C=channels,
            P=row,
            inv_P=1.0 / row,
            total=batch * row,
            step_rows=threads // row,
            step_pos=threads % row,
            count=float(total),
            eps=float(eps),
            momentum=float(momentum),
            unbias=total / (total - 1),
            paired=int(paired),
        )
        grid, block = (channels, 1, 1), (threads, 1, 1)
        forward = Step("bn_channel_forward", grid, block, scalars)
        backward = Step("bn_channel_backward", grid, block, scalars)
        return BatchNormPlan(0, None, None, None, None, None, None, forward, backward)
    rounds = -(-total // (threads * per_thread))  # a channel's rounds of one block
    parts = max(1, min(rounds, -(-tuning.batch_norm_blocks // channels)))
    paired = _batch_norm_pairs(storage, plane, per_thread, tuning, word_aligned)
    row = plane // 2 if paired else plane  # units: values or words
    units = batch * row
    span = -(-units // parts)
    parts = -(-units // span)  # no empty block
    partial = BatchNormPartialScalars(
        C=channels,
        P=row,
        inv_P=1.0 / row,
        total=units,
        span=span,
        parts=parts,
        step_rows=threads // row,
        step_pos=threads % row,
        grads=0,
        paired=int(paired),
    )
    per_channel = BatchNormStatsScalars(
        C=channels,
        P=plane,
        parts=parts,
        count=float(total),
        eps=float(eps),
        momentum=float(momentum),
        unbias=total / (total - 1),
    )
    one_per_channel = (-(-channels // 128), 1, 1), (128, 1, 1)
    normalize = batch_norm_normalize_step(shape, storage, tuning, word_aligned)
    return BatchNormPlan(
        parts,
        Step("bn_partial", (parts, channels, 1), (threads, 1, 1), partial),
        Step("bn_partial", (parts, channels, 1), (threads, 1, 1), partial._replace(grads=1)),
        Step("bn_stats", *one_per_channel, per_channel),
        Step("bn_grad_coefficients", *one_per_channel, per_channel),
        normalize,
        normalize._replace(name="bn_grad_input"),
    )


@functools.lru_cache(maxsize=512)
def batch_norm_normalize_step(
    shape: tuple[int, int, int],
    storage: str,
    tuning: Tuning = TUNING,
    word_aligned: bool = False,
) -> Step:
    """The elementwise pass y = relu(x·scale + shift) of training batch norm over a
    (B, C, P) tensor of ``storage`` values (``bn_normalize``; ``bn_grad_input`` takes the
    same launch). bfloat16 and float32 values move in pairs where P is even, every
    tensor the pass reads or writes starts on a word's boundary (``word_aligned``: 4 or 8
    bytes) and ``tuning.batch_norm_pairs`` allows it."""
    batch, channels, plane = shape
    per_thread = prologue_per_thread(storage, tuning)
    row_threads = tuning.prologue_threads
    values = batch * channels * plane
    blocks = -(-values // (row_threads * per_thread))
    if blocks >= 2**31 or channels >= 65536:
        raise ValueError(f"rubiks_shift on CUDA: a batch-norm input of {shape} is too large")
    paired = _batch_norm_pairs(storage, plane, per_thread, tuning, word_aligned)
    if paired:  # every row starts on a word: count words of two values
        values, plane, per_thread = values // 2, plane // 2, per_thread // 2
        blocks = -(-values // (row_threads * per_thread))
    elementwise = BatchNormElementwiseScalars(
        total=values,
        C=channels,
        inv_C=1.0 / channels,
        P=plane,
        inv_P=1.0 / plane,
        step_rows=row_threads // plane,
        step_pos=row_threads % plane,
        paired=int(paired),
    )
    return Step("bn_normalize", (blocks, 1, 1), (row_threads, 1, 1), elementwise)


def stem_plan(frames_shape, channels: int, tuning: Tuning = TUNING) -> Step:
    """The launch of ``stem`` over (N, 3, H, W) frames into ``channels`` output channels:
    one thread per run of ``tuning.stem_pixels`` output pixels of a row, the channels in
    the fewest groups of at most ``tuning.stem_group`` (grid y), of equal size."""
    n, c_in, height, width = frames_shape
    if c_in != 3:
        raise ValueError(f"rubiks_shift on CUDA: the stem reads 3-channel frames, got {c_in}")
    check_channels(channels)
    out_h, out_w = (height + 1) // 2, (width + 1) // 2
    runs = -(-out_w // tuning.stem_pixels)
    tasks = n * out_h * runs
    groups = -(-channels // tuning.stem_group)
    if groups > MAX_GRID_YZ or n * 3 * height * width >= 2**62 or tasks >= 2**31:
        raise ValueError(f"rubiks_shift on CUDA: frames of {tuple(frames_shape)} are too large")
    threads = tuning.stem_threads
    scalars = StemScalars(
        tasks=tasks,
        C=channels,
        H=height,
        W=width,
        Ho=out_h,
        Wo=out_w,
        runs=runs,
        inv_runs=1.0 / runs,
        inv_ho=1.0 / out_h,
        group=-(-channels // groups),
    )
    return Step("stem", (-(-tasks // threads), groups, 1), (threads, 1, 1), scalars)
