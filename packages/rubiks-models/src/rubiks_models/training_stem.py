"""A RubiksNet's stem, the 3x3 stride-2 convolution of 3-channel frames, and its
training form on CUDA as one autograd node.

cuDNN takes Large's stem (64 frames of 3 x 224² into 72 x 112²) at 6-9x the time of
writing its output (``packages/rubiks-models/BENCHMARKS.md``, *Where the time goes*),
and its weight gradient longer still. :class:`TrainingStem` computes the same
convolution: the forward is :func:`rubiks_shift.stem_conv`'s kernel, the weight's
gradient one product per frame of the output's gradient with the frames' 27 taps
(``F.unfold``), summed over the frames in float32 in frame order (deterministic); the
frames' gradient, where one is asked for, is torch's (``conv2d_input``).
:class:`StemConv` is the models' stem: an ``nn.Conv2d`` that trains through it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import Tensor, nn

from rubiks_shift import kernels, stem_conv

__all__ = ["StemConv", "TrainingStem", "stem_weight_grad"]

# torch >= 2.8 has cuBLAS write a batched product of 16-bit matrices as float32
_BMM_OUT_DTYPE = hasattr(torch.ops.aten.bmm, "dtype")
_NARROW = (torch.bfloat16, torch.float16)


def stem_weight_grad(frames: Tensor, grad_out: Tensor) -> Tensor:
    """The stem weight's gradient, (C, 3, 3, 3), from its (N, 3, H, W) ``frames`` and
    its output's (N, C, ceil(H / 2), ceil(W / 2)) gradient: per frame, the gradient's
    (C, pixels) matrix times the frames' (pixels, 27) taps, then the frames' sum. In
    float32 for 16-bit inputs (cuBLAS's float32 sums, unrounded where torch can write
    them so), else in the inputs' dtype."""
    n, channels = grad_out.shape[:2]
    taps = F.unfold(frames, 3, padding=1, stride=2)  # (N, 27, pixels)
    grad = grad_out.reshape(n, channels, -1)
    narrow = grad.dtype in _NARROW
    if narrow and grad.is_cuda and _BMM_OUT_DTYPE:
        per_frame = torch.bmm(grad, taps.transpose(1, 2), out_dtype=torch.float32)
    else:
        per_frame = torch.bmm(grad, taps.transpose(1, 2))
        per_frame = per_frame.float() if narrow else per_frame
    return per_frame.sum(0).view(channels, 3, 3, 3)


class TrainingStem(torch.autograd.Function):
    """``apply(frames, weight, dtype)``: the convolution of stride 2 and padding 1 of
    (N, 3, H, W) ``frames`` with (C, 3, 3, 3) ``weight``, both taken in ``dtype`` (the
    autocast dtype, or their own), as ``F.conv2d`` would give it; gradients in the
    frames' and the weight's own dtypes."""

    @staticmethod
    def forward(ctx, frames: Tensor, weight: Tensor, dtype: torch.dtype) -> Tensor:
        x, w = frames.to(dtype), weight.to(dtype)
        ctx.save_for_backward(x, w if ctx.needs_input_grad[0] else None)
        ctx.dtypes = (frames.dtype, weight.dtype)
        return stem_conv(x, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple:
        x, w = ctx.saved_tensors
        frames_dtype, weight_dtype = ctx.dtypes
        grad_frames = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_frames = torch.nn.grad.conv2d_input(x.shape, w, grad, stride=2, padding=1)
            grad_frames = grad_frames.to(frames_dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = stem_weight_grad(x, grad).to(weight_dtype)
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
