"""A RubiksNet's stem, the 3x3 stride-2 convolution of 3-channel frames, and its
training form on CUDA as one autograd node.

cuDNN's forward takes Large's stem (64 frames of 3 x 224² into 72 x 112²) at 6-9x the
time of writing its output; :func:`rubiks_shift.stem_conv`'s kernel takes 0.7x of
cuDNN's time (``packages/rubiks-models/BENCHMARKS.md``, *Where the time goes*).
:class:`TrainingStem` is the convolution with that kernel's forward and cuDNN's
backward (``convolution_backward``: the weight's gradient, and the frames' where one is
asked for). :class:`StemConv` is the models' stem: an ``nn.Conv2d`` that trains through
it.
"""

from __future__ import annotations

import torch
from timm.layers import register_notrace_module
from torch import Tensor, nn

from rubiks_shift import kernels, stem_conv

__all__ = ["StemConv", "TrainingStem"]


class TrainingStem(torch.autograd.Function):
    """``apply(frames, weight, dtype)``: the convolution of stride 2 and padding 1 of
    (N, 3, H, W) ``frames`` with (C, 3, 3, 3) ``weight``, both taken in ``dtype`` (the
    autocast dtype, or their own), as ``F.conv2d`` would give it; gradients in the
    frames' and the weight's own dtypes."""

    @staticmethod
    def forward(ctx, frames: Tensor, weight: Tensor, dtype: torch.dtype) -> Tensor:
        x, w = frames.to(dtype), weight.to(dtype)
        ctx.save_for_backward(x, w)
        ctx.dtypes = (frames.dtype, weight.dtype)
        return stem_conv(x, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple:
        x, w = ctx.saved_tensors
        frames_dtype, weight_dtype = ctx.dtypes
        need_frames, need_weight = ctx.needs_input_grad[:2]
        grad_frames, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad, x, w, None, [2, 2], [1, 1], [1, 1], False, [0, 0], 1,
            [need_frames, need_weight, False],
        )  # fmt: skip
        if grad_frames is not None:
            grad_frames = grad_frames.to(frames_dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight_dtype)
        return grad_frames, grad_weight, None


@register_notrace_module  # a leaf for torch.fx: its eager path branches on the input
class StemConv(nn.Conv2d):
    """``nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False)``, the stem of a
    RubiksNet: where it records a gradient on CUDA in plain eager PyTorch
    (``rubiks_shift.kernels.plain_eager``) with 3 input channels, it runs
    :class:`TrainingStem`; elsewhere, and in TorchScript, ``nn.Conv2d``'s forward."""

    def __init__(self, in_chans: int, width: int, **kwargs) -> None:
        super().__init__(in_chans, width, 3, stride=2, padding=1, bias=False, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(x, self.weight, self.bias)
        return self._eager_forward(x)

    @torch.jit.unused
    def _eager_forward(self, x: Tensor) -> Tensor:
        dtype = self._node_dtype(x)
        if dtype is None:
            return self._conv_forward(x, self.weight, self.bias)
        return TrainingStem.apply(x, self.weight, dtype)

    @torch.jit.unused
    def _node_dtype(self, x: Tensor) -> torch.dtype | None:
        """The dtype :class:`TrainingStem` computes ``self(x)`` in, or None where
        ``nn.Conv2d`` runs: no gradient recorded, not CUDA, not plain eager, not the
        stem's shape and settings, or dtypes only autocast's rules resolve."""
        weight = self.weight
        if not (
            x.is_cuda
            and torch.is_grad_enabled()
            and (weight.requires_grad or x.requires_grad)
            and x.dim() == 4
            and x.shape[1] == 3
            and self.in_channels == 3
            and self.bias is None
            and self.padding_mode == "zeros"
            and (self.kernel_size, self.stride, self.padding) == ((3, 3), (2, 2), (1, 1))
            and (self.dilation, self.groups) == ((1, 1), 1)
            and x.dtype == weight.dtype
            and kernels.plain_eager()
        ):
            return None
        if x.dtype != torch.float64 and torch.is_autocast_enabled("cuda"):
            return torch.get_autocast_dtype("cuda")  # as autocast casts a convolution's
        return x.dtype
