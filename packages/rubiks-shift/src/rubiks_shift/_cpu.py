"""CPU backend: prepares tensors for the Numba CPU kernels and post-processes results."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from ._checks import SHIFT_LIMIT, channel_major, empty_like_layout, in_layout_of, output_shape
from ._compile_notice import compile_notice

try:  # Numba is a hard dependency, but keep the package importable without it.
    from . import _cpu_kernels as _kernels
except ImportError as exc:  # pragma: no cover - exercised only without numba
    _kernels = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

_NATIVE = (torch.float32, torch.float64)
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def available() -> bool:
    return _kernels is not None


_WHEN = "once per machine: then it loads from Numba's disk cache"


@functools.cache  # built once per kernel and dtype, not on every call
def _what(kernel: str, dtype: torch.dtype) -> str:
    return f"the CPU {kernel} kernel for {str(dtype).removeprefix('torch.')}"


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in _NATIVE else torch.float32


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``: ``t`` itself where it is already (a no-op ``to`` still costs
    a microsecond or two of host time)."""
    return t if t.dtype == dtype else t.to(dtype)


def _in_memory_order(
    work: torch.Tensor, y: torch.Tensor, major: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip ``work`` and the fresh result ``y`` as the kernels walk them: with
    ``major`` the (C, N, T, H, W) tensors behind channel-major clips, else contiguous."""
    if major:
        return work.permute(2, 0, 1, 3, 4).contiguous(), y.permute(2, 0, 1, 3, 4)
    return work.contiguous(), y


@functools.cache
def _int64s(values: tuple[int, ...]) -> np.ndarray:
    """``values`` as an int64 array, built once per stride or padding (the kernels only
    read it)."""
    return np.asarray(values, np.int64)


_EMPTY = {dtype: np.empty(0, numpy) for dtype, numpy in _NUMPY.items()}  # no affine map


def _tables(
    shift: torch.Tensor, quantize: bool, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Per dimension and channel: tap offsets (3, C, 4) int64 and weights (3, C, 7) in the
    compute dtype (forward, interpolation and derivative taps; see ``_kernels.tables``)
    of the shift clamped to +-SHIFT_LIMIT, a NaN read as 0; the (C,) mask of the channels
    with a NaN shift, and whether any has one."""
    s = shift.detach()
    if s.dtype not in _NATIVE:
        s = s.to(torch.float32)  # float16 and bfloat16 values are float32 values
    channels = s.shape[1]
    ints = np.empty((3, channels, 4), np.int64)
    weights = np.empty((3, channels, 7), _NUMPY[dtype])
    nan = np.empty(channels, np.bool_)
    found = _kernels.prepare(
        s.contiguous().numpy(), bool(quantize), SHIFT_LIMIT, ints, weights, nan
    )
    return ints, weights, nan, found


def forward(
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The forward of ``_ops.shift3d`` (its arguments less the gradient settings); y in
    x's layout (channel-major where x is, read and written in place, else contiguous).
    With ``scale`` and ``bias`` (C,), the shift of relu(x * scale[c] + bias[c]), the
    affine map applied as each column is read; all of it in scale's dtype then."""
    threads = _kernels.set_threads(torch.get_num_threads())
    dtype = _compute_dtype(x.dtype if scale is None else scale.dtype)
    major = channel_major(x)
    work = _cast(x.detach(), dtype)
    y = empty_like_layout(x, output_shape(x.shape, stride, padding), dtype)
    x_mem, y_mem = _in_memory_order(work, y, major)
    if scale is None or bias is None:
        scale_np = bias_np = _EMPTY[dtype]
    else:
        scale_np = _cast(scale.detach(), dtype).contiguous().numpy()
        bias_np = _cast(bias.detach(), dtype).contiguous().numpy()
    with compile_notice(_what("forward", dtype), ("forward", dtype), _WHEN):
        ints, weights, nan_channels, has_nan = _tables(shift, quantize, dtype)
        _kernels.forward(
            x_mem.numpy(),
            y_mem.numpy(),
            ints,
            weights,
            _int64s(tuple(stride)),
            _int64s(tuple(padding)),
            _kernels.blocks(x.shape[0] * x.shape[2], threads),
            major,
            scale_np,
            bias_np,
        )
    if has_nan:
        y[:, :, torch.from_numpy(nan_channels)] = float("nan")
    return in_layout_of(_cast(y, x.dtype), x)


def computes_affine_in(scale: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether ``affine_relu`` takes this (scale, bias): both float32 or both float64."""
    return scale.dtype in _NATIVE and bias.dtype == scale.dtype


def affine_relu(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    frame_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """relu(x * scale[c] + bias[c]) of a (N, T, C, H, W) clip in one pass, computed in
    scale's dtype (float32 or float64) with the shift kernel's prologue arithmetic (one
    fma, rounded once), then rounded to x's dtype; with ``frame_shift`` (C,) integers,
    frame t of channel c from frame t + frame_shift[c] (zeros outside the clip). The
    result is channel-major where x is, else contiguous."""
    if not computes_affine_in(scale, bias):
        raise TypeError(
            f"affine_relu computes in float32 or float64: scale and bias of one of them, "
            f"got {scale.dtype} and {bias.dtype}"
        )
    threads = _kernels.set_threads(torch.get_num_threads())
    dtype = scale.dtype
    n, t, c, h, w = x.shape
    major = channel_major(x)
    work = _cast(x.detach(), dtype)
    y = empty_like_layout(x, x.shape, dtype)
    x_mem, y_mem = _in_memory_order(work, y, major)
    scale_np, bias_np = scale.detach().contiguous().numpy(), bias.detach().contiguous().numpy()
    if frame_shift is None:  # rows c (channel-major) or (n, t, c) (contiguous)
        rows = c if major else n * t * c
        with compile_notice(_what("affine_relu", dtype), ("affine_relu", dtype), _WHEN):
            _kernels.affine_relu(
                x_mem.view(rows, -1).numpy(),
                y_mem.view(rows, -1).numpy(),
                scale_np,
                bias_np,
                _kernels.blocks(rows, threads),
            )
    else:
        frames = frame_shift.detach().to(torch.int64).contiguous().numpy()
        planes = (c, n, t) if major else (n, t, c)
        what = _what("affine_relu_frames", dtype)
        with compile_notice(what, ("affine_relu_frames", dtype), _WHEN):
            _kernels.affine_relu_frames(
                x_mem.view(*planes, h * w).numpy(),
                y_mem.view(*planes, h * w).numpy(),
                scale_np,
                bias_np,
                frames,
                major,
                _kernels.blocks(n * t * c, threads),
            )
    return in_layout_of(_cast(y, x.dtype), x)


def backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
    normalize_grad: bool,
    t_factor: float,
    need_x: bool,
    need_shift: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_ops.shift3d_backward``: (grad_x, grad_shift), empty where not needed; grad_x
    in x's layout."""
    threads = _kernels.set_threads(torch.get_num_threads())
    dtype = _compute_dtype(x.dtype)
    work_x = _cast(x.detach(), dtype).contiguous()
    work_gy = _cast(grad_y.detach(), dtype).contiguous()
    grad_x = torch.empty(work_x.shape if need_x else (0,) * 5, dtype=dtype)
    n_batch, channels = x.shape[0], x.shape[2]
    partial = np.zeros((n_batch, 3, channels) if need_shift else (0, 3, 0), np.float64)
    with compile_notice(_what("backward", dtype), ("backward", dtype), _WHEN):
        ints, weights, nan_channels, has_nan = _tables(shift, quantize, dtype)
        _kernels.backward(
            work_gy.numpy(),
            work_x.numpy(),
            grad_x.numpy(),
            partial,
            ints,
            weights,
            _int64s(tuple(stride)),
            _int64s(tuple(padding)),
            need_x,
            need_shift,
            _kernels.blocks(n_batch * channels, threads),
        )
    if need_x:
        if has_nan:
            grad_x[:, :, torch.from_numpy(nan_channels)] = float("nan")
        grad_x = in_layout_of(_cast(grad_x, x.dtype), x)
    else:
        grad_x = x.new_empty(0)
    if need_shift:
        finished = np.empty((3, channels))
        _kernels.finish_shift_grad(
            partial, nan_channels, bool(normalize_grad), float(t_factor), finished
        )
        grad_shift = _cast(torch.from_numpy(finished), shift.dtype)
    else:
        grad_shift = shift.new_empty(0)
    return grad_x, grad_shift
