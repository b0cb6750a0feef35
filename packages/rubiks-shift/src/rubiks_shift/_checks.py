"""Argument normalisation and metadata checks shared by every backend.

All checks here read only tensor metadata (shape, dtype, device), so they cost no
device synchronisation and run on every call.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Shifts are clamped to +-SHIFT_LIMIT before they are turned into integer offsets.
# Beyond this every read falls outside any tensor we accept, so the result does not
# change, and index arithmetic stays far from integer overflow.
SHIFT_LIMIT = float(2**24)
MAX_EXTENT = 2**24


def triple(value: int | Sequence[int], name: str, ndims: int = 3) -> tuple[int, ...]:
    """Turn an int or a sequence of ``ndims`` ints into a tuple, refusing anything else."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a sequence of {ndims} ints, got a bool")
    if isinstance(value, numbers.Integral):  # int, numpy integers
        return (int(value),) * ndims
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an int or a sequence of {ndims} ints, got {type(value).__name__}"
        ) from None
    if len(items) != ndims or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in items
    ):
        raise TypeError(f"{name} must be an int or a sequence of {ndims} ints, got {value!r}")
    return tuple(int(v) for v in items)


def remember(memo: dict, key: tuple, value):
    """Store ``value`` under ``key`` in a per-signature memo (emptying one of 1024 entries
    first, so a process calling with ever new shapes does not grow it without bound);
    ``value``."""
    if len(memo) >= 1024:
        memo.clear()
    memo[key] = value
    return value


def tensor_meta(t: torch.Tensor) -> tuple:
    """(dtype, shape, strides, device index) of ``t``: its part of a call's signature."""
    return (t.dtype, t.shape, t.stride(), t.get_device())


def output_length(length: int, stride: int, padding: int) -> int:
    """Output size of a size-1 convolution: ``floor((L + 2p - 1) / stride) + 1``."""
    return (length + 2 * padding - 1) // stride + 1


CHANNEL_MAJOR = (2, 0, 1, 3, 4)  # the dimensions of a channel-major clip, outermost first


def channel_major(x: torch.Tensor) -> bool:
    """Whether the (N, T, C, H, W) clip ``x`` is stored channel-major: a (C, N, T, H, W)
    contiguous tensor seen through ``permute(1, 2, 0, 3, 4)`` (and not also contiguous,
    as it can be where dimensions have size 1). Read from the strides, as
    ``is_contiguous`` reads them (a dimension of size 1 may have any stride)."""
    if x.is_contiguous():
        return False
    n, t, c, h, w = x.shape
    sn, st, sc, sh, sw = x.stride()
    expected = 1
    for size, stride in ((w, sw), (h, sh), (t, st), (n, sn), (c, sc)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def empty_channel_major(
    x: torch.Tensor, shape: Sequence[int], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """An uninitialised channel-major (N, T, C, H, W) tensor of ``shape``, x's device and
    ``dtype`` (default x's)."""
    dtype = x.dtype if dtype is None else dtype
    return torch.empty_permuted(tuple(shape), CHANNEL_MAJOR, dtype=dtype, device=x.device)


def in_layout_of(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A fresh result ``y`` (N, T, C, H, W) of an op on the clip ``x``, stored as the
    fake kernels say: channel-major where x is (``channel_major``), else contiguous
    (``y`` itself where it is so already; an elementwise result keeps a strided x's
    strides)."""
    if not channel_major(x):
        return y.contiguous()
    n, t, _, h, w = y.shape
    if y.stride() == (t * h * w, h * w, n * t * h * w, w, 1):  # empty_channel_major's
        return y
    return empty_channel_major(x, y.shape).copy_(y)


def empty_like_layout(
    x: torch.Tensor, shape: Sequence[int], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """An uninitialised (N, T, C, H, W) tensor of ``shape`` like ``x``: channel-major
    where ``x`` is (``channel_major``), else contiguous; ``dtype`` default x's."""
    if channel_major(x):
        return empty_channel_major(x, shape, dtype)
    return x.new_empty(tuple(shape), dtype=dtype)


def output_shape(
    x_shape: Sequence[int], stride: Sequence[int], padding: Sequence[int]
) -> tuple[int, int, int, int, int]:
    n, t, c, h, w = x_shape
    return (
        n,
        output_length(t, stride[0], padding[0]),
        c,
        output_length(h, stride[1], padding[1]),
        output_length(w, stride[2], padding[2]),
    )


def check_shift3d_args(
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    *,
    rows: int = 3,
    op: str = "rubiks_shift3d",
) -> None:
    """Refuse every input docs/spec.md §1.7 lists, naming the problem. Metadata only."""
    if not isinstance(x, torch.Tensor) or not isinstance(shift, torch.Tensor):
        raise TypeError(f"{op}: x and shift must be tensors")
    want_rank = 5 if rows == 3 else 4
    layout = "(N, T, C, H, W)" if rows == 3 else "(N, C, H, W)"
    if x.dim() != want_rank:
        raise ValueError(f"{op}: x must have rank {want_rank} {layout}, got shape {tuple(x.shape)}")
    channels = x.shape[2] if rows == 3 else x.shape[1]
    if shift.dim() != 2 or tuple(shift.shape) != (rows, channels):
        raise ValueError(
            f"{op}: shift must have shape ({rows}, C) = ({rows}, {channels}) for an input "
            f"with C={channels}, got {tuple(shift.shape)}"
        )
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: unsupported dtype {x.dtype} for x; use one of {SUPPORTED_DTYPES}")
    if shift.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{op}: unsupported dtype {shift.dtype} for shift; use one of {SUPPORTED_DTYPES}"
        )
    if x.device != shift.device:
        raise ValueError(
            f"{op}: x and shift must be on the same device, got x on {x.device} and "
            f"shift on {shift.device}"
        )
    for name, values, low in (("stride", stride, 1), ("padding", padding, 0)):
        for dim, v in zip("THW", values, strict=True):
            if v < low:
                raise ValueError(f"{op}: {name} must be >= {low} in every dimension, got {dim}={v}")
    if x.numel() == 0 and any(s == 0 for s in x.shape):
        names = "NTCHW" if rows == 3 else "NCHW"
        empty = [d for d, s in zip(names, x.shape, strict=True) if s == 0]
        raise ValueError(f"{op}: x has an empty dimension ({', '.join(empty)}); nothing to shift")
    spatial = x.shape[1::2] if rows == 3 else x.shape[2:]
    for v in spatial:
        if v > MAX_EXTENT:
            raise ValueError(f"{op}: dimensions larger than {MAX_EXTENT} are not supported")


def check_op_call(
    op: str,
    x: torch.Tensor,
    shift: torch.Tensor | None = None,
    stride: Sequence[int] | None = None,
    padding: Sequence[int] | None = None,
    per_channel: tuple[torch.Tensor, ...] = (),
) -> None:
    """The registered ops' own check (``torch.ops.rubiks_shift.*`` called directly, where
    no public function checked first): what the kernels would otherwise read wrongly or
    out of bounds. x a (N, T, C, H, W) tensor of a supported dtype; shift (3, C) and each
    of ``per_channel`` (C,), on x's device; three strides >= 1 and paddings >= 0. Kept to
    these few comparisons (about 1 µs, rubiks-models ``BENCHMARKS.md``): it runs on every
    registered call of compiled code."""
    if x.dim() != 5 or x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"{op}: x must be a (N, T, C, H, W) tensor of {SUPPORTED_DTYPES}, got "
            f"{tuple(x.shape)} {x.dtype}"
        )
    channels, device = x.shape[2], x.device
    if shift is not None and (
        shift.shape != (3, channels) or shift.device != device or not shift.is_floating_point()
    ):
        raise ValueError(
            f"{op}: shift must be a floating (3, C) = (3, {channels}) tensor on {device}, got "
            f"{tuple(shift.shape)} {shift.dtype} on {shift.device}"
        )
    for t in per_channel:
        if t.shape != (channels,) or t.device != device:
            raise ValueError(
                f"{op}: scale, bias and frame_shift must be (C,) = ({channels},) tensors on "
                f"{device}, got {tuple(t.shape)} on {t.device}"
            )
    if stride is not None and (
        len(stride) != 3 or len(padding) != 3 or min(stride) < 1 or min(padding) < 0
    ):
        raise ValueError(
            f"{op}: stride must be three ints >= 1 and padding three ints >= 0, got "
            f"{list(stride)} and {list(padding)}"
        )


def check_affine(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, op: str = "affine_relu_shift3d"
) -> None:
    """Refuse a scale or bias that is not a floating (C,) tensor on x's device."""
    channels = x.shape[2]
    for name, t in (("scale", scale), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape) != (channels,):
            raise ValueError(
                f"{op}: {name} must have shape (C,) = ({channels},), got {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating point, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} must be on x's device {x.device}, got {t.device}")


def check_stem(frames: torch.Tensor, weight: torch.Tensor, op: str = "stem_conv") -> None:
    """Refuse stem arguments other than (N, 3, H, W) frames, H, W >= 1, of a supported dtype
    and floating (C, 3, 3, 3) filters, C >= 1, on the frames' device (the CUDA kernel
    indexes the filters as (C, 27): another shape would be read wrongly or out of bounds)."""
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"{op}: frames must be (N, 3, H, W), got {tuple(frames.shape)}")
    if frames.shape[2] < 1 or frames.shape[3] < 1:  # as F.conv2d: no 0-sized frames
        raise ValueError(f"{op}: frames must have H, W >= 1, got {tuple(frames.shape)}")
    if frames.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"{op}: unsupported dtype {frames.dtype} for frames; use one of {SUPPORTED_DTYPES}"
        )
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (3, 3, 3) or weight.shape[0] < 1:
        raise ValueError(f"{op}: weight must be (C, 3, 3, 3), got {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"{op}: weight must be floating point, got {weight.dtype}")
    if weight.device != frames.device:
        raise ValueError(f"{op}: weight is on {weight.device}, frames on {frames.device}")


def check_grad_y(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    op: str = "rubiks_shift3d backward",
) -> None:
    """Raise unless ``grad_y`` is a floating tensor of the forward's output shape on x's
    device (the kernels index it by x's shape: another shape would be read out of bounds)."""
    want = output_shape(x.shape, stride, padding)
    if tuple(grad_y.shape) != tuple(want):
        raise ValueError(
            f"{op}: grad_y must have the forward's output shape {tuple(want)} for x of "
            f"shape {tuple(x.shape)}, got {tuple(grad_y.shape)}"
        )
    if not grad_y.is_floating_point() or grad_y.device != x.device:
        raise ValueError(
            f"{op}: grad_y must be a floating tensor on x's device {x.device}, got "
            f"{grad_y.dtype} on {grad_y.device}"
        )


def check_finite_shift(shift: torch.Tensor, op: str = "rubiks_shift3d") -> None:
    """Raise if ``shift`` holds NaN or +-inf. Synchronises a CUDA device: not for hot paths."""
    # one reduction, not two: a finite sum has only finite terms (a sum that is not
    # finite, NaN or inf or an overflow of finite terms, is looked at value by value)
    if math.isfinite(shift.detach().sum()):
        return
    finite = torch.isfinite(shift)
    if not bool(finite.all()):
        bad = (~finite).nonzero().tolist()
        raise ValueError(
            f"{op}: shift has non-finite values at (row, channel) {bad[:8]}"
            + (" ..." if len(bad) > 8 else "")
        )
