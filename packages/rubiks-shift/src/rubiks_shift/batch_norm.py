"""Training-mode batch norm + ReLU on CUDA in few passes over the tensor.

``batch_norm_relu`` computes ``relu(F.batch_norm(x, ...))``. In training mode on a CUDA
tensor, in plain eager code (CUDA graphs included), it runs this package's kernels
(``_cuda_batch_norm``): the batch statistics and the gradient's per-channel sums as
fixed-order reductions (deterministic), the forward's normalisation and ReLU as one
elementwise pass, grad_x as one elementwise pass with the ReLU's mask recomputed from x;
a channel of few values is one block that does each direction in one launch, larger ones
spans of several blocks (three launches per direction). The frames of a channel-major
clip (x a (C, B, H, W) contiguous tensor seen as (B, C, H, W)) are read in place, each
channel one contiguous row, and give y and grad_x in that layout. PyTorch's own kernels
for a contiguous (NCHW) bfloat16 batch norm in training reduce each channel in one block
and were 2.6x slower than its channels-last ones on RubiksNet's shapes
(``packages/rubiks-models/BENCHMARKS.md``). Everywhere else (evaluation, the CPU,
compiled or traced code, no running statistics) it is ``torch.relu(F.batch_norm(...))``
itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import kernels
from ._ops import _plain_eager, unwrapped_apply
from .kernels import _acc_dtype

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _BatchNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, stats = kernels.batch_norm_relu_forward(
            x, weight, bias, running_mean, running_var, momentum, eps
        )
        ctx.save_for_backward(x, weight, stats)
        ctx.config = (momentum, eps)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, weight, stats = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = kernels.batch_norm_relu_backward(
            grad_y, x, weight, stats, *ctx.config
        )
        return (
            grad_x if ctx.needs_input_grad[0] else None,
            grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None,
            grad_bias.to(weight.dtype) if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
            None,
        )


def _unwrapped_apply():
    """``_BatchNormReLU.apply``, x, weight and bias unwrapped directly
    (``_ops.unwrapped_apply``)."""
    direct = unwrapped_apply(_BatchNormReLU)
    if direct is None:
        return _BatchNormReLU.apply
    bound, unwrap = direct

    def apply(x, weight, bias, *rest):
        return bound(unwrap(x), unwrap(weight), unwrap(bias), *rest)

    return apply


_apply = _unwrapped_apply()


def uses_kernels(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float | None,
) -> bool:
    """Whether ``batch_norm_relu`` with these arguments runs this package's CUDA kernels
    (else it is torch's batch norm and ReLU)."""
    if not (training and x.is_cuda and momentum is not None and x.dim() in (3, 4)):
        return False
    if x.dtype not in _KERNEL_DTYPES or not _plain_eager():
        return False
    acc = _acc_dtype(x.dtype)
    for t in (running_mean, running_var, weight, bias):
        if t is None or t.dtype != acc or t.device != x.device or not t.is_contiguous():
            return False
        if t.shape != (x.shape[1],):
            return False
    return not (running_mean.requires_grad or running_var.requires_grad)


def batch_norm_relu(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``relu(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum,
    eps))``, the arguments as ``F.batch_norm`` takes them. In training mode on a CUDA
    (B, C, H, W) or (B, C, L) tensor (any float dtype; weight, bias and running statistics
    contiguous, in float32, or float64 for float64 x) the batch statistics, the running
    statistics' update (unbiased variance, as torch) and the gradients come from this
    package's deterministic kernels, to float32 rounding of torch's, with y in x's layout
    where x is contiguous or (C, B, ...)-contiguous (else y is contiguous); every other
    call is torch's own."""
    if uses_kernels(x, running_mean, running_var, weight, bias, training, momentum):
        if x.numel() // x.shape[1] < 2:
            raise ValueError(
                "Expected more than 1 value per channel when training, got input size "
                f"{tuple(x.shape)}"
            )
        return _apply(x, weight, bias, running_mean, running_var, float(momentum), float(eps))
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return torch.relu(y)
