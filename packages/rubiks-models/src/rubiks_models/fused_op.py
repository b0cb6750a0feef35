"""The fused RubiksNet's whole forward as one op for torch.compile.

The fused form has already removed what Inductor would fuse (batch norms folded, ReLUs
and the residual sums inside the shift and GEMM calls), so compiled code traced through
its blocks runs the same GPU work as eager code and only adds host time: Inductor's
wrapper issues each extern call (cuDNN, cuBLAS, the shift kernels) through the
dispatcher, where the eager blocks call their kernels through bound, pre-checked calls.
``rubiks_models::fused_forward`` lets compiled code (``fullgraph=True`` included) call the
eager forward as one opaque op instead; CUDA graphs (``mode="reduce-overhead"``) capture
it as they capture the eager model.

The op finds its model through a handle that stays valid while the model lives (the
compiled module holds it); copies and unpickled models get handles of their own. A
handle means nothing in another process, so ``torch.export`` traces the blocks instead.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Protocol

import torch

__all__ = ["fused_forward", "register"]


class _Forward(Protocol):
    def _forward(self, x: torch.Tensor) -> torch.Tensor: ...


_MODELS: weakref.WeakValueDictionary[int, _Forward] = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


def register(model: _Forward) -> int:
    """A new handle under which :func:`fused_forward` finds ``model`` (while it lives)."""
    handle = next(_HANDLES)
    _MODELS[handle] = model
    return handle


@torch.library.custom_op("rubiks_models::fused_forward", mutates_args=())
def fused_forward(clip: torch.Tensor, handle: int, width: int) -> torch.Tensor:
    """The fused model registered under ``handle`` on a (B, T, C, H, W) ``clip`` already
    in its compute dtype: (B, ``width``) logits or pooled features, computed eagerly."""
    model = _MODELS.get(handle)
    if model is None:
        raise RuntimeError(
            f"no fused RubiksNet is registered under handle {handle}: the model this "
            "compiled code was traced from no longer exists"
        )
    with torch.autocast(clip.device.type, enabled=False):
        return model._forward(clip)


@fused_forward.register_fake
def _(clip: torch.Tensor, handle: int, width: int) -> torch.Tensor:
    return clip.new_empty((clip.shape[0], width))
