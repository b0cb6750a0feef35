"""Plain-PyTorch float64 reference of the RubiksShift operator (docs/spec.md §1).

The trilinear shift is separable: per channel it is the product of three 1-D linear
interpolation operators, one per dimension. This module builds those operators as
explicit (C, L_out, L_in) matrices and applies them with einsum, so every quantity
(forward, the adjoint for grad_x, the shift derivative) is a short, checkable formula.
It is the ground truth of the tests and the fallback when Numba is unavailable; it is
not fast and it allocates O(C * L_out * L_in) per dimension.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import SHIFT_LIMIT, output_length
from ._normalize import normalize_shift_grad

__all__ = ["normalize_shift_grad", "shift3d_backward", "shift3d_forward"]


def _axis_operators(
    shift: torch.Tensor, length: int, stride: int, padding: int, quantize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolation matrix A and its derivative dA/ds for one dimension.

    ``shift`` is (C,) float64. Returns two (C, L_out, L_in) float64 tensors.
    The derivative is the analytic one for a fractional shift and the central
    difference for an exactly integer shift (docs/spec.md §1.4, ours); under ``quantize``
    A is the rounded gather while dA stays the continuous one (straight-through).
    """
    out_len = output_length(length, stride, padding)
    s = shift.clamp(-SHIFT_LIMIT, SHIFT_LIMIT)
    base = torch.arange(out_len, dtype=torch.float64) * stride - padding  # (L_out,)
    cols = torch.arange(length, dtype=torch.float64).view(1, 1, -1)

    def hits(offset: torch.Tensor) -> torch.Tensor:
        pos = base.view(1, -1, 1) + offset.view(-1, 1, 1)
        return (cols == pos).to(torch.float64)

    floor = torch.floor(s)
    frac = (s - floor).view(-1, 1, 1)
    if quantize:
        matrix = hits(torch.floor(s + 0.5))
    else:
        matrix = (1 - frac) * hits(floor) + frac * hits(floor + 1)
    integer = (frac == 0).to(torch.float64)
    fractional_diff = hits(floor + 1) - hits(floor)
    central_diff = 0.5 * (hits(floor + 1) - hits(floor - 1))
    derivative = integer * central_diff + (1 - integer) * fractional_diff
    return matrix, derivative


def _apply(ops: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """y[n,a,c,b,d] = sum A_T[c,a,t] A_H[c,b,h] A_W[c,d,w] x[n,t,c,h,w]."""
    a_t, a_h, a_w = ops
    y = torch.einsum("cdw,ntchw->ntchd", a_w, x)
    y = torch.einsum("cbh,ntchd->ntcbd", a_h, y)
    return torch.einsum("cat,ntcbd->nacbd", a_t, y)


def _operators(x_shape, shift, stride, padding, quantize):
    lengths = (x_shape[1], x_shape[3], x_shape[4])
    return [
        _axis_operators(
            shift[d].to(torch.float64).cpu(), lengths[d], stride[d], padding[d], quantize
        )
        for d in range(3)
    ]


def shift3d_forward(
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int] = (1, 1, 1),
    padding: Sequence[int] = (0, 0, 0),
    quantize: bool = False,
) -> torch.Tensor:
    """Forward of docs/spec.md §1.2/§1.3, computed in float64 on the CPU."""
    ops = _operators(x.shape, shift, stride, padding, quantize)
    return _apply([m for m, _ in ops], x.detach().to("cpu", torch.float64))


def shift3d_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    shift: torch.Tensor,
    stride: Sequence[int] = (1, 1, 1),
    padding: Sequence[int] = (0, 0, 0),
    quantize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, raw grad_shift) of docs/spec.md §1.4 in float64 on the CPU, before normalisation."""
    ops = _operators(x.shape, shift, stride, padding, quantize)
    gy = grad_y.detach().to("cpu", torch.float64)
    xd = x.detach().to("cpu", torch.float64)
    transposed = [m.transpose(1, 2) for m, _ in ops]
    grad_x = _apply(transposed, gy)
    # The shift derivative always uses the continuous interpolation weights.
    continuous = _operators(x.shape, shift, stride, padding, False) if quantize else ops
    grad_shift = torch.empty(3, x.shape[2], dtype=torch.float64)
    for d in range(3):
        mats = [m for m, _ in continuous]
        mats[d] = continuous[d][1]
        grad_shift[d] = (gy * _apply(mats, xd)).sum(dim=(0, 1, 3, 4))
    return grad_x, grad_shift
