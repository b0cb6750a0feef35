"""A stage's weights cast once per call of its blocks (``rubiks_models.weight_casts``)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import rubiks_models  # registers the models
from rubiks_models.rubiksnet import RubiksBlock
from rubiks_models.weight_casts import RubiksBlocks, StageCasts, current_casts

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _stage(index: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("rubiksnet_tiny", num_classes=3).stages[index]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matrices_equal_the_weights_cast_one_by_one(dtype) -> None:
    """The first block to ask gets its weights, and every later block its own, as
    ``Tensor.to(dtype)`` (out, in) matrices bit for bit; an earlier block gets none."""
    blocks = list(_stage().blocks)
    assert len(blocks) >= 3 and blocks[0].has_proj
    casts = StageCasts(blocks)
    for block in blocks[1:]:
        weights = block.product_weights()
        got = casts.matrices(block, weights, dtype)
        assert got is not None and len(got) == 3
        for m, w in zip(got, weights, strict=True):
            if w is None:
                assert m is None
                continue
            want = w.detach().view(w.shape[0], w.shape[1]).to(dtype)
            assert m.dtype == dtype and m.shape == want.shape and torch.equal(m, want)
    assert casts.matrices(blocks[0], blocks[0].product_weights(), dtype) is None


def test_matrices_refused_for_another_dtype_or_block() -> None:
    blocks = list(_stage().blocks)
    casts = StageCasts(blocks)
    assert casts.matrices(blocks[0], blocks[0].product_weights(), torch.bfloat16) is not None
    assert casts.matrices(blocks[1], blocks[1].product_weights(), torch.float16) is None
    other = _stage(3).blocks[1]
    assert casts.matrices(other, other.product_weights(), torch.bfloat16) is None
    # a block outside the sequence asking first: nothing is cast
    assert StageCasts(blocks).matrices(other, other.product_weights(), torch.bfloat16) is None


def test_weights_cast_in_one_copy(monkeypatch) -> None:
    """All the weights from the asking block on go through one foreach copy."""
    calls = []
    real = torch._foreach_copy_
    monkeypatch.setattr(torch, "_foreach_copy_", lambda d, s: (calls.append(len(d)), real(d, s)))
    blocks = list(_stage().blocks)
    StageCasts(blocks).matrices(blocks[1], blocks[1].product_weights(), torch.bfloat16)
    want = sum(w is not None for b in blocks[1:] for w in b.product_weights())
    assert calls == [want]


def test_blocks_share_casts_while_they_run() -> None:
    """``RubiksBlocks`` runs its blocks in order with one ``StageCasts`` of them current,
    and none once the call ends (an error included)."""
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(current_casts())
            if x.sum() < 0:
                raise ValueError("stop")
            return x + 1

    blocks = RubiksBlocks(Probe(), Probe())
    assert torch.equal(blocks(torch.zeros(2)), torch.full((2,), 2.0))
    assert seen[0] is seen[1] and isinstance(seen[0], StageCasts)
    assert current_casts() is None
    with pytest.raises(ValueError, match="stop"):
        blocks(-torch.ones(2))
    assert current_casts() is None
    assert seen[2] is not seen[0]


def test_models_stages_hold_rubiks_blocks() -> None:
    model = timm.create_model("rubiksnet_tiny", num_classes=3)
    assert all(type(s.blocks) is RubiksBlocks for s in model.stages)
    assert all(isinstance(b, RubiksBlock) for s in model.stages for b in s.blocks)


@requires_cuda
def test_cuda_bf16_training_equals_per_block_casts(monkeypatch) -> None:
    """A bf16 autocast training step with the stage's casts gives the same outputs,
    gradients and running statistics, bit for bit, as one casting block by block."""
    torch.manual_seed(0)
    model = timm.create_model("rubiksnet_tiny", num_classes=7).cuda().train()
    twin = timm.create_model("rubiksnet_tiny", num_classes=7).cuda().train()
    twin.load_state_dict(model.state_dict())
    for net in (model, twin):
        net.set_eager_graphs(False)
    clip = torch.randn(2, 8, 3, 64, 64, device="cuda")
    target = torch.tensor([1, 5], device="cuda")
    asked = []
    real = StageCasts.matrices
    monkeypatch.setattr(
        StageCasts, "matrices", lambda self, *a: asked.append(r := real(self, *a)) or r
    )
    outs = []
    with torch.backends.cudnn.flags(deterministic=True):
        for net, casting in ((model, True), (twin, False)):
            if not casting:  # the blocks cast their own weights
                monkeypatch.setattr(rubiks_models.rubiksnet, "current_casts", lambda: None)
            with torch.autocast("cuda", torch.bfloat16):
                out = net(clip)
            F.cross_entropy(out, target).backward()
            outs.append(out)
    assert asked and all(m is not None for m in asked)  # the casts were taken
    assert torch.equal(outs[0], outs[1])
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    for (name, b), c in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.equal(b, c), name
