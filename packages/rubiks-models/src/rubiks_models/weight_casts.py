"""A stage's 1x1-convolution weights cast to autocast's dtype in one call per forward.

Under autocast a channel-major block (:class:`.ChannelMajorBlock`) multiplies 16-bit
copies of its float32 weights; cast one at a time, that is a kernel (and a host call) per
weight: 97 per RubiksNet-Large step, 0.19 ms of an H100's time against 0.04 for one
foreach copy of them all (``packages/rubiks-models/BENCHMARKS.md``, *Where training time
goes*). While a stage's blocks run (:class:`RubiksBlocks`), the first block to ask for
its matrices casts its own weights and every later block's into one buffer with
``torch._foreach_copy_``, the same values as ``Tensor.to``; the later blocks take theirs
from there. The casts live for that one call of the blocks, so weights changed between
calls are cast again.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar

import torch
from torch import Tensor, nn

__all__ = ["RubiksBlocks", "StageCasts", "current_casts"]

_CURRENT: ContextVar[StageCasts | None] = ContextVar("rubiks_stage_casts", default=None)


def current_casts() -> StageCasts | None:
    """The casts of the stage whose blocks are running, or None outside one."""
    return _CURRENT.get()


class StageCasts:
    """The 16-bit (out, in) matrices of a sequence of blocks' 1x1-convolution weights
    (each block's ``product_weights()``), made on the first :meth:`matrices` call."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        self._blocks = blocks
        self._dtype: torch.dtype | None = None
        self._cast: dict[int, Tensor] = {}

    def matrices(self, block: nn.Module, weights: tuple, dtype: torch.dtype) -> tuple | None:
        """``block``'s ``weights`` (a tuple with None where absent) as ``dtype`` (out, in)
        matrices, or None where they were not cast together (another dtype asked for, a
        weight not float32, a block not among the blocks)."""
        if self._dtype is None:
            self._cast_from(block, dtype)
        if dtype != self._dtype:
            return None
        out = []
        for w in weights:
            if w is None:
                out.append(None)
                continue
            m = self._cast.get(id(w))
            if m is None:
                return None
            out.append(m)
        return tuple(out)

    def _cast_from(self, block: nn.Module, dtype: torch.dtype) -> None:
        """Cast the float32 weights of ``block`` and of every block after it, in one
        buffer; ``dtype`` is then the casts' dtype, whatever was cast (nothing where
        ``block`` is not among the blocks)."""
        blocks = list(self._blocks)
        at = next((i for i, b in enumerate(blocks) if b is block), None)
        if at is None:
            return
        self._dtype = dtype
        weights = []
        for b in blocks[at:]:
            product_weights = getattr(b, "product_weights", None)
            if product_weights is None:
                continue
            for w in product_weights():
                if w is not None and w.dtype == torch.float32 and w.dim() >= 2:
                    weights.append(w)
        if not weights:
            return
        sizes = [w.numel() for w in weights]
        flat = torch.empty(sum(sizes), dtype=dtype, device=weights[0].device)
        parts = flat.split(sizes)
        torch._foreach_copy_(list(parts), [w.detach().reshape(-1) for w in weights])
        self._cast = {id(w): p.view(w.shape[0], -1) for w, p in zip(weights, parts, strict=True)}


class RubiksBlocks(nn.Sequential):
    """A stage's blocks, run in order as ``nn.Sequential`` runs them; in eager code each
    call shares one :class:`StageCasts` among them (:func:`current_casts`)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            for block in self:
                x = block(x)
            return x
        return self._forward_sharing_casts(x)

    @torch.jit.unused
    def _forward_sharing_casts(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            return super().forward(x)
        token = _CURRENT.set(StageCasts(self))
        try:
            return super().forward(x)
        finally:
            _CURRENT.reset(token)
