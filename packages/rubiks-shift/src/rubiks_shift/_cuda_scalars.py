"""The scalar arguments of each CUDA kernel, one NamedTuple per kernel (no Numba, no torch).

A block's field order is the kernel's parameter order after its pointer arguments: the
kernel builders generate each kernel's parameter list and Numba signature from the
fields (``_cuda_device.kernel_entry``, ``_cuda_device.scalar_types``), and the launch
plans (``_cuda_plan``) fill the fields by name, so the order is written here only.
Annotations give how each value is passed: ``int`` as int64, ``float`` as float64,
``Acc`` in the kernel's accumulation type (float64 for float64 tensors, else float32).
(No ``from __future__ import annotations`` here: the annotations are read as types.)
"""

from typing import NamedTuple, NewType

Acc = NewType("Acc", float)


class GatherScalars(NamedTuple):
    """``gather`` and ``gather_narrow`` (the row walk), and their ``_affine`` forms."""

    tasks: int  # (destination plane, row chunk, column) tasks
    N: int  # samples
    C: int
    Ts: int  # source frames, rows, columns
    Hs: int
    Ws: int
    Td: int  # destination frames, rows, columns
    Hd: int
    Wd: int
    st: int  # stride
    sh: int
    sw: int
    pt: int  # padding
    ph: int
    pw: int
    adjoint: int  # 1: grad_x (src = grad_y), 0: the forward (src = x)
    quantize: int
    channel_major: int  # 1: both tensors' planes in (C, N, T) order, 0: (N, T, C)
    rows: int  # destination rows per task
    frames_inner: int  # task order: 1 a channel's frames side by side, 0 memory order
    inv_plane: float  # float64 reciprocals: tasks per plane, Wd, C, Td, row chunks, N
    inv_w: float
    inv_c: float
    inv_t: float
    inv_chunks: float
    inv_n: float


class GatherFramesScalars(NamedTuple):
    """``gather_frames`` (the frame walk, temporal and row stride 1) and its ``_affine``
    form."""

    tasks: int  # (sample, channel, frame chunk, row band, column) tasks
    N: int
    C: int
    Ts: int
    Hs: int
    Ws: int
    Td: int
    Hd: int
    Wd: int
    sw: int  # column stride
    pt: int
    ph: int
    pw: int
    adjoint: int
    quantize: int
    channel_major: int
    rows: int  # destination rows per task (at most the kernel's compile-time bound)
    frames_per_task: int
    inv_w: float  # float64 reciprocals: Wd, row bands, frame chunks, C
    inv_bands: float
    inv_chunks: float
    inv_c: float


class GradShiftScalars(NamedTuple):
    """``grad_shift``: per-block partial sums of the shift gradient."""

    NT: int  # output slabs (samples x output frames)
    T: int  # input frames, channels, rows, columns
    C: int
    H: int
    W: int
    To: int  # output frames, rows, columns
    Ho: int
    Wo: int
    st: int
    sh: int
    sw: int
    pt: int
    ph: int
    pw: int
    rows: int  # output rows per task
    inv_plane: float  # float64 reciprocals: tasks per plane, Wo, To
    inv_w: float
    inv_t: float
    channel_major: int  # 1: both tensors' planes in (C, N, T) order, 0: (N, T, C)


class FinalizeScalars(NamedTuple):
    """``finalize``: the partial sums reduced in a fixed order, then normalised."""

    C: int
    parts: int  # partial sums per channel (grad_shift's blocks per channel)
    normalize: int
    t_factor: Acc  # < 0: (sign g_T, 0, 0)


class AffineReluScalars(NamedTuple):
    """``affine_relu``: relu(x * scale[c] + bias[c]) over rows of one channel each, each
    value read ``shift[c]`` frames later where a frame shift is given. Extents count
    units: values, or (``paired``) words of two bfloat16 values."""

    inner: int  # units per row (a row: one channel's values, contiguous)
    C: int  # channels: row r holds channel r % C, starting in frame (r // C) % T
    chunks: int  # blocks per row
    inv_chunks: float  # 1 / chunks (divmod_'s reciprocal)
    inv_C: float  # 1 / C
    plane: int  # H * W: the units of one frame of a channel, contiguous
    segment: int  # a row's units repeat their frames every segment units (T·H·W or H·W)
    inv_segment: float  # 1 / segment
    segment_step: int  # threads per block % segment: a thread's next value's move in its segment
    frame_stride: int  # units from a value to the same one a frame later
    frames: int  # T
    inv_frames: float  # 1 / T
    shifted: int  # 1: read shift[c] (the frame shift), 0: no shift (shift is not read)
    paired: int  # 1: units are 32-bit words of two bfloat16 values (even H * W, aligned)


class IntegerShiftScalars(NamedTuple):
    """``shift_integer`` and ``shift_integer_affine``: a quantized shift of stride 1
    without padding, each value read from ``q = floor(shift + 1/2)`` further on per
    channel (``adjoint``: from ``-q``), zero where that leaves the clip. A task is one
    pixel of one channel through a group of consecutive slabs (a slab: one sample's
    frame, N·T of them), the kernel's compile-time count of them or the last group's
    rest; consecutive tasks are consecutive pixels."""

    tasks: int  # C * groups * plane
    C: int
    per_channel: int  # groups * plane: one channel's tasks
    inv_per_channel: float
    plane: int  # H * W
    inv_plane: float
    W: int
    inv_W: float
    H: int
    T: int  # frames: slab s is frame s % T
    inv_T: float
    S: int  # slabs: N * T
    chan_stride: int  # values from channel c to c + 1 (same slab and pixel)
    slab_stride: int  # values from slab s to s + 1 (same channel and pixel)
    adjoint: int  # 1: read from -q (grad_x of the quantized forward)


class BatchNormPartialScalars(NamedTuple):
    """``bn_partial``: per-block sums over spans of each channel's values, a channel's
    values being B rows of P, row b at (b·C + c)·P; extents in units: values, or
    (``paired``) words of two values."""

    C: int
    P: int  # H * W: the units of one row (one image of the batch, one channel)
    inv_P: float  # 1 / P (divmod_'s reciprocal)
    total: int  # B * P: one channel's units
    span: int  # units per block (the last block's span may be shorter)
    parts: int  # blocks per channel
    step_rows: int  # a thread's move to its next unit: whole rows ...
    step_pos: int  # ... and places in a row (threads per block = step_rows·P + step_pos)
    grads: int  # 0: statistics (Σ v, Σ v²); 1: gradient sums (Σ g, Σ g·(x - mean))
    paired: int  # 1: units are words of two values, bfloat16 or float32 (even P, aligned)


class BatchNormStatsScalars(NamedTuple):
    """``bn_stats`` and ``bn_grad_coefficients``: one thread per channel."""

    C: int
    P: int
    parts: int
    count: float  # B * P, the values per channel
    eps: float
    momentum: float
    unbias: float  # count / (count - 1): the running variance is the unbiased one


class BatchNormChannelScalars(NamedTuple):
    """``bn_channel_forward`` and ``bn_channel_backward``: one block per channel, a
    channel's values being B rows of P, row b at (b·C + c)·P; extents in units: values,
    or (``paired``) words of two values."""

    C: int
    P: int  # units per row
    inv_P: float
    total: int  # B * P: one channel's units
    step_rows: int  # a thread's move to its next unit: whole rows ...
    step_pos: int  # ... and places in a row (threads per block = step_rows·P + step_pos)
    count: float  # the channel's values, as a float
    eps: float
    momentum: float
    unbias: float  # count / (count - 1): the running variance is the unbiased one
    paired: int  # 1: units are words of two values, bfloat16 or float32 (even P, aligned)


class BatchNormElementwiseScalars(NamedTuple):
    """``bn_normalize`` and ``bn_grad_input``: the (B, C, P) tensor as one flat run;
    extents in units: values, or (``paired``) words of two values."""

    total: int  # B * C * P units
    C: int
    inv_C: float
    P: int  # units per row
    inv_P: float
    step_rows: int  # a thread's move to its next unit (one block width on): rows ...
    step_pos: int  # ... and places in a row
    paired: int  # 1: units are words of two values, bfloat16 or float32 (even P, aligned)


class StemScalars(NamedTuple):
    """``stem``: the 3x3 stride-2 convolution of (N, 3, H, W) frames into (N, C, Ho, Wo);
    a task is one run of adjacent output pixels of one output row."""

    tasks: int  # N * Ho * runs
    C: int  # output channels
    H: int
    W: int
    Ho: int  # (H + 1) // 2
    Wo: int  # (W + 1) // 2
    runs: int  # runs per output row: ceil(Wo / pixels)
    inv_runs: float  # float64 reciprocals of runs and Ho
    inv_ho: float
    group: int  # output channels per block (blockIdx.y: the group)


class GatherPixelsScalars(NamedTuple):
    """``gather_pixels`` (the pixel walk: stride 1 on every axis) and its ``_affine``
    form."""

    tasks: int  # (sample, channel, frame chunk, row band, column group) tasks
    N: int
    C: int
    Ts: int
    Hs: int
    Ws: int
    Td: int
    Hd: int
    Wd: int
    pt: int
    ph: int
    pw: int
    adjoint: int
    quantize: int
    channel_major: int
    chunks: int  # frame chunks per (sample, channel), of the kernel's compile-time frames
    inv_pixels: float  # float64 reciprocals: tasks per plane (row bands x column groups),
    # column groups per row, frame chunks, C
    inv_w: float
    inv_chunks: float
    inv_c: float
