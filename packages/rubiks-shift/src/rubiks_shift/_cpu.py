"""CPU backend: prepares tensors for the Numba CPU kernels and post-processes results."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from . import _normalize
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


def _shift_params(shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamped float64 shift for the kernels, and the mask of NaN channels."""
    s = shift.detach().to(torch.float64)
    nan_channels = torch.isnan(s).any(dim=0)
    s = torch.nan_to_num(s, nan=0.0).clamp(-SHIFT_LIMIT, SHIFT_LIMIT)
    return s.contiguous(), nan_channels


def _tables(s: torch.Tensor, quantize: bool, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per dimension and channel: tap offsets (3, C, 4) int64 and weights (3, C, 7) in the
    compute dtype (forward, interpolation and derivative taps; see ``_kernels.tables``)."""
    channels = s.shape[1]
    ints = np.empty((3, channels, 4), np.int64)
    weights = np.empty((3, channels, 7), _NUMPY[dtype])
    _kernels.tables(s.numpy(), quantize, ints, weights)
    return ints, weights


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
    work = x.detach().to(dtype)
    y = empty_like_layout(x, output_shape(x.shape, stride, padding), dtype)
    if major:  # the (C, N, T, H, W) tensors behind the channel-major clips
        x_mem, y_mem = work.permute(2, 0, 1, 3, 4), y.permute(2, 0, 1, 3, 4)
    else:
        x_mem, y_mem = work.contiguous(), y
    if scale is None or bias is None:
        scale = bias = torch.empty(0, dtype=dtype)  # no affine map
    params, nan_channels = _shift_params(shift)
    ints, weights = _tables(params, quantize, dtype)
    with compile_notice(_what("forward", dtype), ("forward", dtype), _WHEN):
        _kernels.forward(
            x_mem.numpy(),
            y_mem.numpy(),
            ints,
            weights,
            np.asarray(stride, np.int64),
            np.asarray(padding, np.int64),
            _kernels.blocks(x.shape[0] * x.shape[2], threads),
            major,
            scale.detach().to(dtype).contiguous().numpy(),
            bias.detach().to(dtype).contiguous().numpy(),
        )
    if bool(nan_channels.any()):
        y[:, :, nan_channels] = float("nan")
    return in_layout_of(y.to(x.dtype), x)


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
    work_x = x.detach().to(dtype).contiguous()
    work_gy = grad_y.detach().to(dtype).contiguous()
    grad_x = torch.empty(work_x.shape if need_x else (0,) * 5, dtype=dtype)
    n_batch, channels = x.shape[0], x.shape[2]
    partial = np.zeros((n_batch, 3, channels) if need_shift else (0, 3, 0), np.float64)
    params, nan_channels = _shift_params(shift)
    ints, weights = _tables(params, quantize, dtype)
    with compile_notice(_what("backward", dtype), ("backward", dtype), _WHEN):
        _kernels.backward(
            work_gy.numpy(),
            work_x.numpy(),
            grad_x.numpy(),
            partial,
            ints,
            weights,
            np.asarray(stride, np.int64),
            np.asarray(padding, np.int64),
            need_x,
            need_shift,
            _kernels.blocks(n_batch * channels, threads),
        )
    has_nan = bool(nan_channels.any())
    if need_x:
        if has_nan:
            grad_x[:, :, nan_channels] = float("nan")
        grad_x = in_layout_of(grad_x.to(x.dtype), x)
    else:
        grad_x = x.new_empty(0)
    if need_shift:
        raw = torch.from_numpy(partial).sum(dim=0)
        if has_nan:
            raw[:, nan_channels] = float("nan")
        grad_shift = _normalize.finish(raw, normalize_grad, t_factor).to(shift.dtype)
    else:
        grad_shift = shift.new_empty(0)
    return grad_x, grad_shift
