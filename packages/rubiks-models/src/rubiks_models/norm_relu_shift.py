"""A RubiksNet block's second batch norm, its ReLU and its shift in training as one
autograd node that keeps only the batch norm's input for the backward.

Recorded as separate ops, the batch norm keeps its input h for its backward and the
shift keeps its own input ``relu(norm2(h))`` for its: two tensors of the block's width
per block. :class:`NormReluShift` keeps h and the batch norm's (4, C) statistics and
recomputes ``relu(norm2(h))`` in its backward (one elementwise pass,
:func:`rubiks_shift.kernels.batch_norm_relu_apply`, the same values bit for bit), so a
training step holds one activation less per block between its forward and backward.
The gradients are the separate ops' bit for bit: the same kernels in the same order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rubiks_shift import kernels

__all__ = ["NormReluShift", "NormShiftSettings"]


class NormShiftSettings(NamedTuple):
    """What :class:`NormReluShift` needs besides its differentiable tensors."""

    norm: tuple  # (running_mean, running_var, momentum, eps) of the batch norm
    shift: tuple  # (stride, padding, quantize, normalize_grad, normalize_t_factor)


class NormReluShift(torch.autograd.Function):
    """``forward(h, weight, bias, shift, frames, settings)``:
    ``shift3d(relu(batch_norm(h)))`` over the frames ``h`` (B·T, C, H, W) of clips of
    T = ``frames`` frames, in training mode (running statistics updated in place),
    returned as the shifted clips (B, T, C, H', W') in h's dtype."""

    @staticmethod
    def forward(ctx, h, weight, bias, shift, frames: int, settings: NormShiftSettings):
        y, stats = kernels.batch_norm_relu_forward(h, weight, bias, *settings.norm)
        stride, padding, quantize = settings.shift[:3]
        clip = y.unflatten(0, (-1, frames))
        out = kernels.shift3d_forward(clip, shift, stride, padding, quantize)
        ctx.save_for_backward(h, weight, stats, shift)
        ctx.frames, ctx.settings = frames, settings
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        h, weight, stats, shift = ctx.saved_tensors
        settings = ctx.settings
        need = ctx.needs_input_grad
        clip = kernels.batch_norm_relu_apply(h, stats).unflatten(0, (-1, ctx.frames))
        grad_y, grad_shift = kernels.shift3d_backward(
            grad_out, clip, shift, *settings.shift, need_x=True, need_shift=need[3]
        )
        del clip
        grad_h, grad_weight, grad_bias = kernels.batch_norm_relu_backward(
            grad_y.flatten(0, 1), h, weight, stats, *settings.norm[2:]
        )
        return (
            grad_h if need[0] else None,
            grad_weight.to(weight.dtype) if need[1] else None,
            grad_bias.to(weight.dtype) if need[2] else None,
            grad_shift if need[3] else None,
            None,
            None,
        )
