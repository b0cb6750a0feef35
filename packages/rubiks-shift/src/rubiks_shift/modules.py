"""nn.Module wrappers of the RubiksShift operator."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ._checks import triple
from .functional import check_t_factor, rubiks_shift2d, rubiks_shift3d
from .init import init_spatial, init_temporal

__all__ = ["RubiksShift2d", "RubiksShift3d"]


def _check_channels(channels: int) -> int:
    if isinstance(channels, bool) or not isinstance(channels, numbers.Integral):
        raise TypeError(f"channels must be an int, got {channels!r}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return int(channels)


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


class _ShiftLayer(nn.Module):
    """What both layers hold: the (rows, C) parameter ``shift`` and the shared settings."""

    def __init__(
        self, rows, channels, stride, padding, init, quantize, normalize_grad, device, dtype
    ):
        super().__init__()
        self.channels = _check_channels(channels)
        self.stride = triple(stride, "stride", rows)
        self.padding = triple(padding, "padding", rows)
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(
                f"stride must be >= 1 and padding >= 0, got {self.stride} and {self.padding}"
            )
        self.init = init
        self.quantize = _check_flag("quantize", quantize)
        self.normalize_grad = _check_flag("normalize_grad", normalize_grad)
        self.shift = nn.Parameter(torch.empty(rows, channels, device=device, dtype=dtype))

    def _repr_parts(self) -> list[str]:
        parts = [f"{self.channels}", f"stride={self.stride}", f"padding={self.padding}"]
        if self.quantize:
            parts.append("quantize=True")
        if not self.normalize_grad:
            parts.append("normalize_grad=False")
        return parts

    def extra_repr(self) -> str:
        return ", ".join(self._repr_parts())


class RubiksShift3d(_ShiftLayer):
    """Learnable per-channel 3-D shift of clips (N, T, C, H, W).

    The parameter ``shift`` has shape (3, C), rows T, H, W. ``t_init`` picks the temporal
    initialisation (``uniform``, ``zero``, ``tsm``, ``tsm-g<sigma>``), ``init`` the spatial
    one (``uniform``, ``zero``, ``group<K>``). Defaults follow the reference: U[-1, 1].
    """

    def __init__(
        self,
        channels: int,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        *,
        init: str = "uniform",
        t_init: str = "uniform",
        quantize: bool = False,
        normalize_grad: bool = True,
        normalize_t_factor: float | str = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_t_factor(normalize_t_factor)
        super().__init__(
            3, channels, stride, padding, init, quantize, normalize_grad, device, dtype
        )
        self.t_init = t_init
        self.normalize_t_factor = normalize_t_factor
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        values = torch.empty(3, self.channels, dtype=torch.float64)
        init_temporal(values[0], self.t_init, generator)
        init_spatial(values[1:], self.init, generator)
        self.shift.copy_(values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rubiks_shift3d(
            x,
            self.shift,
            self.stride,
            self.padding,
            quantize=self.quantize,
            normalize_grad=self.normalize_grad,
            normalize_t_factor=self.normalize_t_factor,
        )

    @classmethod
    def from_2d(cls, layer: RubiksShift2d, t_init: str = "tsm", **kwargs) -> RubiksShift3d:
        """Inflate a trained 2-D layer: copy its (H, W) rows, initialise T by ``t_init``."""
        if not isinstance(layer, RubiksShift2d):
            raise TypeError(f"from_2d expects a RubiksShift2d, got {type(layer).__name__}")
        options = dict(
            init=layer.init,  # how the copied rows began
            stride=(1, *layer.stride),
            padding=(0, *layer.padding),
            quantize=layer.quantize,
            normalize_grad=layer.normalize_grad,
            device=layer.shift.device,
            dtype=layer.shift.dtype,
        )
        options.update(kwargs)
        inflated = cls(layer.channels, t_init=t_init, **options)
        with torch.no_grad():
            inflated.shift[1:].copy_(layer.shift)
        return inflated

    def extra_repr(self) -> str:
        parts = self._repr_parts()
        if self.normalize_grad and self.normalize_t_factor != 1.0:
            parts.append(f"normalize_t_factor={self.normalize_t_factor}")
        return ", ".join(parts)


class RubiksShift2d(_ShiftLayer):
    """Learnable per-channel spatial shift of images (N, C, H, W); ``shift`` is (2, C)."""

    def __init__(
        self,
        channels: int,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        *,
        init: str = "uniform",
        quantize: bool = False,
        normalize_grad: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            2, channels, stride, padding, init, quantize, normalize_grad, device, dtype
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        values = torch.empty(2, self.channels, dtype=torch.float64)
        init_spatial(values, self.init, generator)
        self.shift.copy_(values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rubiks_shift2d(
            x,
            self.shift,
            self.stride,
            self.padding,
            quantize=self.quantize,
            normalize_grad=self.normalize_grad,
        )
