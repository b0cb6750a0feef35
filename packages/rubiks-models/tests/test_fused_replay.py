"""An identity block's eager CUDA forward replays its bound ops per input signature:
the same values as the checked calls, and it steps aside wherever it may not apply."""

from __future__ import annotations

import copy
import pickle

import pytest
import timm
import torch

import rubiks_models  # noqa: F401  (registers the models)
from rubiks_models import fused as fused_module
from rubiks_models.channel_major_block import to_channel_major
from rubiks_models.deploy import quantize_model
from rubiks_models.fused import FusedBlock, fuse_model

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _trained_looking(name: str, device: str = "cpu") -> torch.nn.Module:
    model = timm.create_model(name, num_classes=10).to(device).eval()
    g = torch.Generator().manual_seed(5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.6 - 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.6 - 0.3)
    return model


@pytest.fixture
def stand_in(monkeypatch):
    """Replays on the CPU: ``call_and_bind`` whose ``again`` is the op itself with the
    bound call's other arguments (the CPU has no bound launches), counted in a log."""
    log = []

    def call_and_bind(op, *args, **kwargs):
        def again(*tensors):
            log.append(op.__name__)
            return op(*tensors, *args[len(tensors) :], **kwargs)

        return op(*args, **kwargs), again

    monkeypatch.setattr(fused_module, "call_and_bind", call_and_bind)
    monkeypatch.setattr(fused_module, "_REPLAY_DEVICES", ("cuda", "cpu"))
    return log


def _identity_block(name: str = "rubiksnet_tiny", hard: bool = False) -> FusedBlock:
    model = _trained_looking(name)
    if hard:
        model = quantize_model(model).eval()
    fused = fuse_model(model, "bmm")
    return next(b for b in fused.blocks if b.replays_forward and b.cin == 2 * 54)


def _clip(block: FusedBlock, seed: int, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return to_channel_major(torch.randn(2, 4, block.cin, 14, 14, generator=g).to(dtype))


def _checked(block: FusedBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's forward without replays (a copy of x: blocks update their input)."""
    block.replays_forward, replays = False, block._replays
    block._replays = {}
    try:
        return block(x.clone())
    finally:
        block.replays_forward, block._replays = True, replays


@pytest.mark.parametrize(
    "name,hard", [("rubiksnet_tiny", False), ("rubiksnet_tiny", True), ("rubiksnet_tiny_aq", True)]
)
def test_replay_equals_checked_calls(stand_in, name, hard):
    """Interpolated shifts, quantized ones, and a hardened AQ block's whole-frame
    temporal shift read by the bn1 pass."""
    block = _identity_block(name, hard)
    assert block.tshift_kind == ("hard" if name.endswith("aq") else "none")
    with torch.no_grad():
        first = _clip(block, 0)
        assert torch.equal(block(first.clone()), _checked(block, first))
        assert len(block._replays) == 1 and stand_in == []  # bound, not replayed yet
        x = _clip(block, 1)
        expected = _checked(block, x)
        y = block(x)
        assert y is x  # the residual sum into x, as the checked calls do
        assert stand_in == ["affine_relu", "affine_relu_shift3d"]
        assert y.stride() == expected.stride() and torch.equal(y, expected)


def test_replay_is_per_signature(stand_in):
    block = _identity_block()
    with torch.no_grad():
        block(_clip(block, 0))
        block(_clip(block, 1, torch.float64))  # another dtype: bound anew
        assert len(block._replays) == 2 and stand_in == []
        block(_clip(block, 2).contiguous())  # not channel-major: frames, no replay
        assert len(block._replays) == 2 and stand_in == []


def test_replay_follows_replaced_buffers_and_casts(stand_in):
    block = _identity_block()
    x = _clip(block, 3)
    with torch.no_grad():
        block(_clip(block, 0))
        block.b2 = block.b2 + 0.5  # a new tensor: the replay's no longer matches
        expected = _checked(block, x)
        assert torch.equal(block(x.clone()), expected) and stand_in == []
        block.double()
        assert block._replays == {}  # new buffers everywhere
        assert torch.equal(block(x.double()), _checked(block, x.double()))


def test_replay_steps_aside_for_gradients(stand_in):
    block = _identity_block()
    with torch.no_grad():
        block(_clip(block, 0))
    x = _clip(block, 1).requires_grad_()
    with pytest.raises(RuntimeError, match="no gradient"):
        block(x)
    assert stand_in == []


def test_block_with_replays_copies_and_compiles(stand_in):
    block = _identity_block()
    x = _clip(block, 4)
    with torch.no_grad():
        block(_clip(block, 0))
        for other in (copy.deepcopy(block), pickle.loads(pickle.dumps(block))):
            assert other._replays == {} and len(block._replays) == 1
            assert torch.equal(other(x.clone()), _checked(block, x))
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x.clone()), _checked(block, x))
    assert stand_in == []  # compiled code never replays


def test_projection_and_frame_blocks_do_not_replay():
    fused = fuse_model(_trained_looking("rubiksnet_large"), "bmm")
    kinds = {(b.has_proj, b.has_se, b.replays_forward) for b in fused.blocks}
    assert all(replays == (not proj and not se) for proj, se, replays in kinds)
    assert any(b.replays_forward for b in fused.blocks)
    aq = fuse_model(_trained_looking("rubiksnet_tiny_aq"), "bmm")  # soft temporal mixing
    assert not any(b.replays_forward for b in aq.blocks)
    # interpolated 2-D shifts run over one-frame clips on small planes: not replayed
    two_d = fuse_model(_trained_looking("rubiksnet2d_tiny"), "bmm")
    assert not any(b.replays_forward for b in two_d.blocks)


# (Large's random stand-in overflows float16: its logits would be NaN either way)
CASES = [
    ("rubiksnet_tiny", False, torch.bfloat16),
    ("rubiksnet_tiny", False, torch.float16),
    ("rubiksnet_large", False, torch.bfloat16),
    ("rubiksnet_tiny_aq", True, torch.bfloat16),
    ("rubiksnet_tiny_aq", True, torch.float16),
]


@requires_cuda
@pytest.mark.parametrize("name,hard,dtype", CASES)
def test_replayed_model_equals_checked_calls_cuda(name, hard, dtype):
    """Eager on the GPU: the second call of a signature replays every identity block,
    bit for bit the model whose blocks take the checked calls."""
    model = _trained_looking(name, "cuda")
    if hard:
        model = quantize_model(model).eval()
    fused = fuse_model(model)
    plain = fuse_model(model)
    for block in plain.blocks:
        block.replays_forward = False
    g = torch.Generator().manual_seed(6)
    clips = [torch.randn(2, 8, 3, 112, 112, generator=g).cuda() for _ in range(3)]
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        for x in clips:
            y = fused(x)
            assert torch.isfinite(y).all()
            assert torch.equal(y, plain(x))
    assert sum(len(b._replays) for b in fused.blocks) > 0
    assert all(b._replays == {} for b in plain.blocks)
