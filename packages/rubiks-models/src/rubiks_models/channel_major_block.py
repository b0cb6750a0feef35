"""A channel-major RubiksNet block in training as one autograd node, and the layout
helpers of channel-major clips.

:class:`ChannelMajorBlock` computes what ``RubiksBlock._composed_channel_major``
computes, with the same kernels and products in the same order, but records a single
autograd node: its backward calls the ops' backward passes (:mod:`rubiks_shift.kernels`)
and the products' transposes itself. Eager training of the small-plane blocks is bound
by the host (every op's Python call and autograd node), not by the GPU; one node per
block instead of ~20 took 12 % off one Large block's host time and 3-15 % off eager
Large steps (``packages/rubiks-models/BENCHMARKS.md``, *Eager training*). The gradients
equal the composed form's bit for bit on CUDA, but under autocast the products' weight
gradients: cuBLAS writes those in float32 from its float32 sums (torch >= 2.8), where the
composed form's are rounded to 16 bits first.

By default (``BlockSettings.recompute``) the node keeps the block's input, conv1's output
and the shifted clip for its backward, not ``relu(norm1(x))`` nor ``relu(norm2(h))``: the
backward recomputes those from the batch norms' inputs and statistics
(:func:`rubiks_shift.kernels.batch_norm_relu_apply`, bit for bit), three clip-sized
tensors kept instead of five.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rubiks_shift import kernels

__all__ = [
    "BlockSettings",
    "ChannelMajorBlock",
    "clip_points",
    "points_clip",
    "to_channel_major",
]


class BlockSettings(NamedTuple):
    """What the block's autograd node needs besides its differentiable tensors."""

    norm1: tuple  # (running_mean, running_var, momentum, eps) of norm1
    norm2: tuple  # the same of norm2
    stride: int  # the block's spatial stride (its projection's and its shift's)
    shift: tuple  # (stride, padding, quantize, normalize_grad, normalize_t_factor)
    dtype: torch.dtype | None  # the weights' dtype in the products (autocast's), or None
    recompute: bool = True  # recompute relu(norm1(x)) and relu(norm2(h)) in the backward
    # the weights already cast to ``dtype`` as (out, in) matrices (``weight_casts``), or None
    matrices: tuple | None = None


def _matrix(weight: Tensor, dtype: torch.dtype | None) -> Tensor:
    """A 1x1 convolution's (out, in, 1, 1) weight as an (out, in) matrix in ``dtype``."""
    w = weight.detach().view(weight.shape[0], weight.shape[1])
    return w if dtype is None else w.to(dtype)


def to_channel_major(x: Tensor) -> Tensor:
    """Clip x's values stored channel-major: (C, N, T, H, W) contiguous, seen as x."""
    return x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)


def clip_points(x: Tensor) -> Tensor:
    """The (C, N * T * H * W) matrix of a clip: a view where x is channel-major."""
    return x.permute(2, 0, 1, 3, 4).reshape(x.shape[2], -1)


def points_clip(m: Tensor, n: int, t: int, h: int, w: int) -> Tensor:
    """A contiguous (C, points) matrix as the channel-major (N, T, C, H, W) clip it
    stores (a view; ``clip_points``' inverse)."""
    return m.view(-1, n, t, h, w).permute(1, 2, 0, 3, 4)


def _rows(clip: Tensor) -> Tensor:
    """A clip as the (1, C, points, 1) image the batch norms read (a view where the clip
    is channel-major)."""
    return clip_points(clip).view(1, clip.shape[2], -1, 1)


def _strided(a: Tensor, shape: tuple, stride: int) -> Tensor:
    """The (C, points) matrix ``a`` of a clip of ``shape`` (C, N, T, H, W) at every
    ``stride``-th pixel (a view)."""
    return a.view(shape)[..., ::stride, ::stride]


class ChannelMajorBlock(torch.autograd.Function):
    """``forward(x, conv1, conv2, shortcut or None, norm1 weight, norm1 bias, norm2
    weight, norm2 bias, shift, settings)`` over a channel-major clip x (N, T, C, H, W):
    relu(norm1) -> conv1 -> relu(norm2) -> shift -> conv2 + shortcut, returned
    channel-major (``RubiksBlock``). Running statistics are updated in place."""

    @staticmethod
    def forward(ctx, x, w1, w2, wp, g1, b1, g2, b2, shift, settings: BlockSettings):
        n, t, cin, height, width = x.shape
        cout = w1.shape[0]
        cast = settings.matrices
        if cast is None:
            w1m, w2m = _matrix(w1, settings.dtype), _matrix(w2, settings.dtype)
        else:
            w1m, w2m = cast[0], cast[1]
            settings = settings._replace(matrices=None)  # kept by the saved tensors alone
        xm = _rows(x)
        a, stats1 = kernels.batch_norm_relu_forward(xm, g1, b1, *settings.norm1)
        a = a.view(cin, -1)
        h = torch.mm(w1m, a).view(1, cout, -1, 1)
        h2, stats2 = kernels.batch_norm_relu_forward(h, g2, b2, *settings.norm2)
        clip = points_clip(h2, n, t, height, width)
        stride, padding, quantize = settings.shift[:3]
        shifted = kernels.shift3d_forward(clip, shift, stride, padding, quantize)
        ho, wo = shifted.shape[-2:]
        sm = clip_points(shifted)
        wpm = None
        if wp is None:
            skip = xm.view(cin, -1)
        else:
            wpm = _matrix(wp, settings.dtype) if cast is None else cast[2]
            frames = _strided(a, (cin, n, t, height, width), settings.stride)
            skip = torch.mm(wpm, frames.reshape(cin, -1))
        out = torch.addmm(skip, w2m, sm)
        if settings.recompute:  # the backward recomputes a and h2 from xm and h
            a = h2 = None
        ctx.save_for_backward(xm, a, h, h2, sm, stats1, stats2, w1m, w2m, wpm, g1, g2, shift)
        ctx.settings = settings
        ctx.shapes = (n, t, cin, height, width, ho, wo)
        weights = ((1, w1), (2, w2), (3, wp))
        ctx.weight_meta = {i: (w.shape, w.dtype) for i, w in weights if w is not None}
        return points_clip(out, n, t, ho, wo)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        xm, a, h, h2, sm, stats1, stats2, w1m, w2m, wpm, g1, g2, shift = ctx.saved_tensors
        settings = ctx.settings
        n, t, cin, height, width, ho, wo = ctx.shapes
        cout = w2m.shape[0]
        need = ctx.needs_input_grad
        go = clip_points(grad_out)
        if go.dtype != sm.dtype:
            go = go.to(sm.dtype)
        grad_w2 = _weight_product(go, sm.t(), ctx, 2) if need[2] else None
        grad_shifted = points_clip(torch.mm(w2m.t(), go), n, t, ho, wo)
        if h2 is None:
            h2 = kernels.batch_norm_relu_apply(h, stats2)
        clip = points_clip(h2, n, t, height, width)
        grad_h2, grad_shift = kernels.shift3d_backward(
            grad_shifted, clip, shift, *settings.shift, need_x=True, need_shift=need[8]
        )
        del clip, h2
        grad_h, grad_g2, grad_b2 = kernels.batch_norm_relu_backward(
            _rows(grad_h2), h, g2, stats2, *settings.norm2[2:]
        )
        grad_h = grad_h.view(cout, -1)
        if a is None and (need[1] or (wpm is not None and need[3])):
            a = kernels.batch_norm_relu_apply(xm, stats1).view(cin, -1)
        grad_w1 = _weight_product(grad_h, a.t(), ctx, 1) if need[1] else None
        grad_a = torch.mm(w1m.t(), grad_h)
        grad_wp = None
        if wpm is not None:
            if need[3]:
                frames = _strided(a, (cin, n, t, height, width), settings.stride)
                grad_wp = _weight_product(go, frames.reshape(cin, -1).t(), ctx, 3)
            _strided(grad_a, (cin, n, t, height, width), settings.stride).add_(
                torch.mm(wpm.t(), go).view(cin, n, t, ho, wo)
            )
        grad_x, grad_g1, grad_b1 = kernels.batch_norm_relu_backward(
            grad_a.view(1, cin, -1, 1), xm, g1, stats1, *settings.norm1[2:]
        )
        if wpm is None:
            grad_x = grad_x.add_(go.view(1, cin, -1, 1))
        return (
            points_clip(grad_x, n, t, height, width) if need[0] else None,
            _weight_grad(grad_w1, need[1], ctx, 1),
            _weight_grad(grad_w2, need[2], ctx, 2),
            _weight_grad(grad_wp, need[3], ctx, 3),
            grad_g1.to(g1.dtype) if need[4] else None,
            grad_b1.to(g1.dtype) if need[5] else None,
            grad_g2.to(g2.dtype) if need[6] else None,
            grad_b2.to(g2.dtype) if need[7] else None,
            grad_shift if need[8] else None,
            None,
        )


# torch >= 2.8 has cuBLAS write a product of 16-bit matrices as float32 (``mm.dtype``)
_MM_OUT_DTYPE = hasattr(torch.ops.aten.mm, "dtype")


def _weight_product(grad: Tensor, inputs: Tensor, ctx, index: int) -> Tensor:
    """``grad @ inputs``: the gradient of product ``index``'s weight as an (out, in)
    matrix in the weight's dtype. Under autocast on CUDA (16-bit factors, a float32
    weight) cuBLAS writes it in float32 from its float32 sums, with no rounding to 16
    bits and no cast kernel after it; elsewhere, and while Dynamo traces, the product is
    cast."""
    dtype = ctx.weight_meta[index][1]
    narrow = grad.dtype in (torch.bfloat16, torch.float16)
    if (
        narrow
        and dtype == torch.float32
        and grad.is_cuda
        and _MM_OUT_DTYPE
        and not torch.compiler.is_compiling()
    ):
        return torch.mm(grad, inputs, out_dtype=dtype)
    return torch.mm(grad, inputs).to(dtype)


def _weight_grad(grad: Tensor | None, needed: bool, ctx, index: int) -> Tensor | None:
    """A product's weight gradient (None where not computed) as the (out, in, 1, 1)
    weight."""
    if grad is None or not needed:
        return None
    return grad.view(ctx.weight_meta[index][0])
