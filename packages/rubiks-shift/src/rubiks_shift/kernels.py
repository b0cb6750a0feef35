"""The ops' forward and backward passes as plain functions, recording no autograd node.

For code that records one autograd node over several ops: a network block written as a
``torch.autograd.Function`` whose backward calls these in turn costs one node's host
time per call instead of one per op (what bounds eager training of small-plane blocks
on the GPU, ``packages/rubiks-models/BENCHMARKS.md``). Each ``*_forward`` returns its
result and what its ``*_backward`` needs. They take the layouts the ops take (clips
contiguous or channel-major; batch-norm frames contiguous or (C, B, ...)-contiguous)
and return results in them. On CUDA they run this package's kernels, on the CPU the
shift's CPU kernels and torch's arithmetic for the batch norm. Call them in plain eager
code (:func:`plain_eager`): compiled or traced code should call the differentiable ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ._checks import check_grad_y
from ._ops import _cuda_backend, _plain_eager, eager_backend
from .functional import _checked_3d, _t_factor

__all__ = [
    "batch_norm_relu_apply",
    "batch_norm_relu_backward",
    "batch_norm_relu_forward",
    "plain_eager",
    "shift3d_backward",
    "shift3d_forward",
]


def plain_eager() -> bool:
    """Whether the caller runs plain eager PyTorch: no ``torch.compile``, functorch
    transform, dispatch mode or function mode, where these functions may replace the
    differentiable ops."""
    return _plain_eager()


# ------------------------------------------------------------------------------ shift


def shift3d_forward(
    x: Tensor,
    shift: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    quantize: bool = False,
) -> Tensor:
    """:func:`rubiks_shift.rubiks_shift3d`'s value, x (N, T, C, H, W) in x's dtype (cast
    it first under autocast), recording no gradient."""
    stride3, padding3, _ = _checked_3d(x, shift, stride, padding)
    backend = eager_backend(x)
    if backend is None:
        return torch.ops.rubiks_shift.shift3d(
            x, shift.detach(), list(stride3), list(padding3), quantize, False, 1.0
        )
    return backend.forward(x, shift.detach(), stride3, padding3, quantize)


def shift3d_backward(
    grad_y: Tensor,
    x: Tensor,
    shift: Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    quantize: bool = False,
    normalize_grad: bool = True,
    normalize_t_factor: float | str = 1.0,
    need_x: bool = True,
    need_shift: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """(grad_x, grad_shift) of :func:`shift3d_forward` at ``x``, the shift gradient
    normalised as :func:`rubiks_shift.rubiks_shift3d` does with these settings; None for
    what is not needed."""
    stride3, padding3, _ = _checked_3d(x, shift, stride, padding)
    check_grad_y(grad_y, x, stride3, padding3, "kernels.shift3d_backward")
    factor = _t_factor(normalize_t_factor, x)
    if not (need_x or need_shift):
        return None, None
    backend = eager_backend(x)
    args = (grad_y, x, shift.detach())
    if backend is None:
        settings = (list(stride3), list(padding3), quantize, normalize_grad, factor)
        gx, gs = torch.ops.rubiks_shift.shift3d_backward(*args, *settings, need_x, need_shift)
    else:
        settings = (stride3, padding3, quantize, normalize_grad, factor)
        gx, gs = backend.backward(*args, *settings, need_x, need_shift)
    return (gx if need_x else None), (gs if need_shift else None)


# ------------------------------------------------------------------ batch norm + ReLU


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _frames_channel_major(x: Tensor) -> bool:
    """Whether the (B, C, ...) ``x`` is a (C, B, ...)-contiguous tensor seen through
    ``transpose(0, 1)`` (the frames of a channel-major clip), and not also contiguous."""
    return not x.is_contiguous() and x.transpose(0, 1).is_contiguous()


def _rows(x: Tensor, major: bool) -> Tensor:
    """x as the CUDA kernels read it: (B, C, ...) contiguous, or, where ``major``, its
    channels as the rows of a contiguous (1, C, B·H·W)."""
    if major:
        return x.transpose(0, 1).reshape(1, x.shape[1], -1)
    return x.contiguous()


def _in_layout(y: Tensor, x: Tensor, major: bool) -> Tensor:
    """The kernels' result ``y`` (``_rows``' layout) seen in x's shape."""
    if major:
        return y.view(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)
    return y


def _channel_view(x: Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


def _check_batch_norm(x: Tensor, momentum: float, *per_channel: Tensor) -> None:
    """Refuse what the kernels would read out of bounds or misuse, before anything is
    written: (C,) per-channel tensors, more than one value per channel, a momentum in
    [0, 1]."""
    channels = x.shape[1] if x.dim() >= 2 else -1
    for t in per_channel:
        if t.shape != (channels,):
            raise ValueError(
                f"batch_norm_relu: weight, bias and running statistics must have shape "
                f"(C,) = ({channels},) for x of shape {tuple(x.shape)}, got {tuple(t.shape)}"
            )
    if x.numel() // channels < 2:
        raise ValueError(
            f"batch_norm_relu: more than one value per channel needed, got {tuple(x.shape)}"
        )
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, (int, float))
        or not 0 <= momentum <= 1
    ):
        raise ValueError(f"batch_norm_relu: momentum must be a number in [0, 1], got {momentum!r}")


def batch_norm_relu_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    momentum: float,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """``relu(batch_norm(x))`` in training mode over (B, C, ...) ``x``, the running
    statistics updated in place (unbiased variance, as torch). Returns (y, stats): y in
    x's layout where it is contiguous or (C, B, ...)-contiguous (else contiguous), stats
    the (4, C) mean, 1 / sqrt(var + eps), scale and shift of the affine applied, in float32
    (float64 for float64 x). weight, bias and the running statistics: contiguous (C,), in
    that dtype."""
    _check_batch_norm(x, momentum, weight, bias, running_mean, running_var)
    if x.is_cuda:
        major = _frames_channel_major(x)
        y, stats = _cuda_backend().batch_norm_relu_forward(
            _rows(x, major), weight.detach(), bias.detach(), running_mean, running_var,
            momentum, eps,
        )  # fmt: skip
        return _in_layout(y, x, major), stats
    acc = _acc_dtype(x.dtype)
    dims = [0, *range(2, x.dim())]
    xf = x.detach().to(acc)
    var, mean = torch.var_mean(xf, dims, correction=0)
    invstd = torch.rsqrt(var + eps)
    scale = weight.detach().to(acc) * invstd
    shift = bias.detach().to(acc) - mean * scale
    view = _channel_view(x)
    y = torch.relu(xf * scale.view(view) + shift.view(view)).to(x.dtype)
    count = x.numel() // x.shape[1]
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
        unbiased = var * (count / max(count - 1, 1))
        running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    return y, torch.stack([mean, invstd, scale, shift])


def batch_norm_relu_apply(x: Tensor, stats: Tensor) -> Tensor:
    """:func:`batch_norm_relu_forward`'s y again, bit for bit, from its x and stats,
    updating nothing: a block that saves x and the stats for its backward need not also
    save y (one pass over x recomputes it)."""
    channels = x.shape[1] if x.dim() >= 2 else -1
    acc = _acc_dtype(x.dtype)
    if stats.shape != (4, channels) or stats.dtype != acc or stats.device != x.device:
        raise ValueError(
            f"batch_norm_relu_apply: stats must be the forward's (4, {channels}) {acc} "
            f"tensor on {x.device} for x of shape {tuple(x.shape)}, got a "
            f"{tuple(stats.shape)} {stats.dtype} tensor on {stats.device}"
        )
    if x.is_cuda:
        major = _frames_channel_major(x)
        y = _cuda_backend().batch_norm_relu_apply(_rows(x, major), stats.contiguous())
        return _in_layout(y, x, major)
    view = _channel_view(x)
    scale, shift = stats[2].view(view), stats[3].view(view)
    return torch.relu(x.detach().to(acc) * scale + shift).to(x.dtype)


def batch_norm_relu_backward(
    grad_y: Tensor, x: Tensor, weight: Tensor, stats: Tensor, momentum: float, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_bias) of :func:`batch_norm_relu_forward` at ``x`` with
    its ``stats`` (the ReLU's mask recomputed from x); grad_x in x's layout as y is, the
    parameter gradients in the stats' dtype."""
    if x.is_cuda:
        major = _frames_channel_major(x)
        gy = _rows(grad_y, major)
        if gy.dtype != x.dtype:
            gy = gy.to(x.dtype)
        grad_x, grad_weight, grad_bias = _cuda_backend().batch_norm_relu_backward(
            gy, _rows(x, major), weight.detach(), stats, eps, momentum
        )
        return _in_layout(grad_x, x, major), grad_weight, grad_bias
    view = _channel_view(x)
    mean, invstd, scale, shift = (s.view(view) for s in stats)
    xf = x.detach().to(stats.dtype)
    xhat = (xf - mean) * invstd
    g = torch.where(xf * scale + shift <= 0, 0.0, grad_y.to(stats.dtype))  # torch's ReLU on NaN
    dims = [0, *range(2, x.dim())]
    count = x.numel() // x.shape[1]
    grad_bias = g.sum(dims)
    grad_weight = (g * xhat).sum(dims)
    grad_x = scale * (g - grad_bias.view(view) / count - xhat * grad_weight.view(view) / count)
    return grad_x.to(x.dtype), grad_weight, grad_bias
