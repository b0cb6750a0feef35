"""The inference ops written in plain torch, for torch.compile to generate and fuse.

Under ``torch.compile`` the registered ops are opaque calls: each one costs a dispatcher
round trip on the host, and Inductor must hand it its input in the layout the op was
traced with (copying where it chose another, e.g. channels-last around convolutions).
These forms compute the same values with indexing and elementwise torch ops, which
Inductor turns into its own kernels: the prologue fused into the gather, the result
written in whatever layout the next kernel wants. Eager calls keep the hand-written
kernels; which ops compile to these forms is :data:`rubiks_shift.fused.COMPILE_AS_TORCH`.

Semantics are those of the ops (docs/spec.md §1.2/§1.3): output position ``o`` of a
dimension reads ``o * stride - padding + s``, linearly interpolated between its two
neighbours (rounded to ``floor(s + 0.5)`` under ``quantize``), zeros outside, the shift
clamped to ``±SHIFT_LIMIT``; the prologue ``relu(x * scale + bias)`` is applied to each
value read, in float32 (float64 for float64 x), the result rounded to x's dtype once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import SHIFT_LIMIT, channel_major, output_length

__all__ = ["affine_relu_shift3d_torch", "affine_relu_torch", "shift_frames", "stem_torch"]


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the prologue computes in for x: float64 for float64 x, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prologue(v: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """relu(v * scale + bias) in scale's dtype, scale and bias shaped to broadcast."""
    return torch.relu(v.to(scale.dtype) * scale + bias)


def shift_frames(a: torch.Tensor, frame_shift: torch.Tensor) -> torch.Tensor:
    """Frame t of channel c of the (N, T, C, H, W) clip ``a`` replaced by its frame
    t + frame_shift[c], zero where that falls outside the clip (one indexed read),
    channel-major where ``a`` is, else contiguous."""
    frames = a.shape[1]
    d = frame_shift.to(device=a.device, dtype=torch.int64).clamp(-frames, frames)
    source = torch.arange(frames, device=a.device)[None, :] + d[:, None]  # (C, T)
    inside = (source >= 0) & (source < frames)
    index = source.clamp(0, frames - 1)
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    if channel_major(a):  # gather in the (C, N, T, H, W) storage order, returned in it
        planes = a.permute(2, 0, 1, 3, 4)
        view = (planes.shape[0], 1, frames, 1, 1)
        picked = torch.gather(planes, 2, index.view(view).expand(planes.shape))
        return torch.where(inside.view(view), picked, zero).contiguous().permute(1, 2, 0, 3, 4)
    view = (1, frames, a.shape[2], 1, 1)
    a = a.contiguous()
    picked = torch.gather(a, 1, index.t().reshape(view).expand(a.shape))
    return torch.where(inside.t().reshape(view), picked, zero).contiguous()


def affine_relu_torch(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    frame_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """``relu(x * scale[c] + bias[c])`` of an (N, T, C, H, W) clip, in x's layout, each
    frame read ``frame_shift[c]`` frames later where given (zero outside the clip)."""
    view = (1, 1, -1, 1, 1)
    acc = acc_dtype(x)
    y = _prologue(x, scale.to(acc).view(view), bias.to(acc).view(view)).to(x.dtype)
    return y if frame_shift is None else shift_frames(y, frame_shift)


def _taps(
    shift: torch.Tensor, length: int, stride: int, padding: int, quantize: bool
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One dimension's reads: [(index (C, L_out) clamped into range, weight (C, L_out)
    with zero where the read falls outside)], one entry per interpolation tap."""
    s = shift.clamp(-SHIFT_LIMIT, SHIFT_LIMIT)
    out_len = output_length(length, stride, padding)
    base = torch.arange(out_len, device=shift.device) * stride - padding
    if quantize:
        first = torch.floor(s + 0.5)
        weights = [torch.ones_like(s)]
    else:
        first = torch.floor(s)
        frac = s - first
        weights = [1 - frac, frac]
    taps = []
    for k, w in enumerate(weights):
        pos = base[None, :] + (first.long() + k)[:, None]
        inside = (pos >= 0) & (pos < length)
        taps.append((pos.clamp(0, length - 1), w[:, None] * inside))
    return taps


def affine_relu_shift3d_torch(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    quantize: bool,
) -> torch.Tensor:
    """``rubiks_shift3d(relu(x * scale[c] + bias[c]), shift, stride, padding)`` as torch
    indexing (one read per interpolation tap: 1 under ``quantize``, else up to 8),
    channel-major where x is, else contiguous. Arguments already checked."""
    n, t, c, h, w = x.shape
    acc = acc_dtype(x)
    sh = shift.to(acc)
    dims = [(sh[d], (t, h, w)[d], stride[d], padding[d]) for d in range(3)]
    taps_t, taps_h, taps_w = (_taps(*dim, quantize) for dim in dims)
    major = channel_major(x)
    # every dimension indexed (the batch too), so the gather comes out in the order of
    # its index shapes: (C, N, T, H, W) channel-major, else (N, T, C, H, W)
    batch = torch.arange(n, device=x.device)
    chan = torch.arange(c, device=x.device)
    acc_scale, acc_bias = scale.to(acc), bias.to(acc)
    if major:
        src = x.permute(2, 0, 1, 3, 4)
        batch, chan = batch.view(1, n, 1, 1, 1), chan.view(c, 1, 1, 1, 1)

        def place(t_, h_, w_):  # (C, L) per dimension -> broadcast over (C, N, T, H, W)
            return (
                t_[:, None, :, None, None],
                h_[:, None, None, :, None],
                w_[:, None, None, None, :],
            )

    else:
        src = x
        batch, chan = batch.view(n, 1, 1, 1, 1), chan.view(1, 1, c, 1, 1)

        def place(t_, h_, w_):  # (C, L) per dimension -> broadcast over (N, T, C, H, W)
            return (
                t_.t().contiguous()[None, :, :, None, None],
                h_[None, None, :, :, None],
                w_[None, None, :, None, :],
            )

    s_view = chan.shape
    acc_scale, acc_bias = acc_scale.view(s_view), acc_bias.view(s_view)
    out = None
    for it, wt in taps_t:
        for ih, wh in taps_h:
            for iw, ww in taps_w:
                ti, hi, wi = place(it, ih, iw)
                v = src[chan, batch, ti, hi, wi] if major else src[batch, ti, chan, hi, wi]
                a = _prologue(v, acc_scale, acc_bias)
                ft, fh, fw = place(wt, wh, ww)
                term = a * (ft * fh * fw)
                out = term if out is None else out + term
    out = out.to(x.dtype)
    return out.permute(1, 2, 0, 3, 4) if major else out


def stem_torch(frames: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The stem's 3x3 stride-2 convolution (padding 1, no bias) as torch's, with the
    weights in the frames' dtype."""
    return torch.nn.functional.conv2d(frames, weight.to(frames.dtype), stride=2, padding=1)
