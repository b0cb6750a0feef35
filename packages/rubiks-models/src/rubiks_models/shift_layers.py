"""The shift layers of the RubiksNet blocks (:mod:`.rubiksnet`).

* :class:`Shift3d` / :class:`Shift2d`: the rubiks-shift layers, scriptable and FX leaves.
* :class:`TemporalAttentionShift`: the AQ variant's soft 3-tap temporal shift;
  :func:`hard_temporal_shift` gives its integer form for the deployment model.
"""

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

from rubiks_shift import RubiksShift2d, RubiksShift3d

__all__ = ["Shift2d", "Shift3d", "TemporalAttentionShift", "hard_temporal_shift"]


@register_notrace_module
class Shift3d(RubiksShift3d):
    """:class:`rubiks_shift.RubiksShift3d` that TorchScript can compile (it calls the
    registered op ``torch.ops.rubiks_shift.shift3d`` directly) and FX keeps as a leaf."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            setting = self.normalize_t_factor
            if isinstance(setting, str):  # "auto": T / H of the input
                factor = float(x.shape[1]) / float(x.shape[3])
            else:
                factor = float(setting)
            return torch.ops.rubiks_shift.shift3d(
                x,
                self.shift,
                list(self.stride),
                list(self.padding),
                self.quantize,
                self.normalize_grad,
                factor,
            )
        return super().forward(x)


@register_notrace_module
class Shift2d(RubiksShift2d):
    """:class:`rubiks_shift.RubiksShift2d`, scriptable and an FX leaf (see :class:`Shift3d`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            shift3 = torch.cat([torch.zeros_like(self.shift[:1]), self.shift], 0)
            y = torch.ops.rubiks_shift.shift3d(
                x.unsqueeze(1),
                shift3,
                [1, self.stride[0], self.stride[1]],
                [0, self.padding[0], self.padding[1]],
                self.quantize,
                self.normalize_grad,
                1.0,
            )
            return y.squeeze(1)
        return super().forward(x)


class TemporalAttentionShift(nn.Module):
    """The AQ temporal layer (docs/spec.md §2.3) on clips (B, T, C, H, W).

    ``y[t] = a0 x[t-1] + a1 x[t] + a2 x[t+1]`` per channel (zeros beyond the clip), with
    ``a_c = softmax(w_c / (std(w_c) + 1e-6) / tau)``; ``w`` (C, 3) is learned, ``tau`` a
    buffer (2.0 as in the released code; anneal it towards 0 for one-hot taps).
    """

    def __init__(self, channels: int, tau: float = 2.0) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.rand(channels, 3))
        self.register_buffer("tau", torch.tensor(float(tau)))

    def attention(self) -> torch.Tensor:
        """(C, 3) tap weights (float32 or the parameter's dtype)."""
        w = self.weight
        w = w / (w.std(dim=1, keepdim=True) + 1e-6)
        return torch.softmax(w / self.tau, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention().to(x.dtype)
        a0 = a[:, 0].reshape(1, 1, -1, 1, 1)
        a1 = a[:, 1].reshape(1, 1, -1, 1, 1)
        a2 = a[:, 2].reshape(1, 1, -1, 1, 1)
        xp = F.pad(x, [0, 0, 0, 0, 0, 0, 1, 1])  # zeros at t = -1 and t = T
        t = x.shape[1]
        return a0 * xp[:, 0:t] + a1 * x + a2 * xp[:, 2 : t + 2]

    def extra_repr(self) -> str:
        return f"{self.channels}, tau={float(self.tau):g}"


def hard_temporal_shift(logits: torch.Tensor) -> torch.Tensor:
    """(3, C) integer shifts (rows T, H, W) from AQ tap logits (C, 3): the strongest tap
    0 / 1 / 2 becomes a temporal shift of -1 / 0 / +1 (``y[t] = x[t + s]``), H = W = 0."""
    t = logits.detach().argmax(dim=1).to(torch.float32) - 1
    return torch.stack([t, torch.zeros_like(t), torch.zeros_like(t)])
