"""What a block keeps for its backward: the channel-major block's node and the batch
norm + ReLU + shift node recompute the cheap activations instead of keeping them, with
the gradients of the ops recorded one by one."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from rubiks_models.channel_major_block import to_channel_major
from rubiks_models.norm_relu_shift import NormReluShift, NormShiftSettings
from rubiks_models.rubiksnet import RubiksBlock
from rubiks_shift import rubiks_shift3d

_BLOCK_OPTIONS = dict(
    variant="rubiks3d", se_reduction=0, shift_init="uniform", t_init="uniform",
    normalize_grad=True, normalize_t_factor=1.0, aq_tau=2.0, deploy=False,
)  # fmt: skip


def _saved_sizes(run) -> list[int]:
    """The element counts of the tensors autograd keeps while ``run()`` records."""
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sizes


@pytest.mark.parametrize("stride,cin,cout", [(1, 6, 6), (2, 4, 6)])
def test_channel_major_node_keeps_three_activations(stride: int, cin: int, cout: int) -> None:
    """The block's node keeps its input, conv1's output and the shifted clip (not
    relu(norm1(x)) nor the shift's input): three tensors of a clip's size."""
    torch.manual_seed(1)
    block = RubiksBlock(cin, cout, stride, **_BLOCK_OPTIONS).double().train()
    x = to_channel_major(torch.randn(2, 3, cin, 8, 8, dtype=torch.float64)).requires_grad_()
    sizes = _saved_sizes(lambda: block._forward_channel_major(x))
    smallest_clip = 2 * 3 * min(cin, cout) * (8 // stride) ** 2
    assert len([n for n in sizes if n >= smallest_clip]) == 3
    assert sum(sizes) < 3 * 2 * 3 * max(cin, cout) * 64 + 1000
    block.recompute_activations = False  # set_activation_recompute(False): all five kept
    sizes = _saved_sizes(lambda: block._forward_channel_major(x))
    assert len([n for n in sizes if n >= smallest_clip]) == 5


@pytest.mark.parametrize("recompute", [True, False])
def test_channel_major_node_gradients_do_not_depend_on_recomputation(recompute: bool) -> None:
    """With and without recomputation the node gives the same output and gradients, bit
    for bit (float32, CPU)."""
    torch.manual_seed(2)
    block = RubiksBlock(4, 6, 2, **_BLOCK_OPTIONS).train()
    twin = RubiksBlock(4, 6, 2, **_BLOCK_OPTIONS).train()
    twin.load_state_dict(block.state_dict())
    twin.recompute_activations = recompute
    block.recompute_activations = not recompute
    x = to_channel_major(torch.randn(2, 3, 4, 8, 8))
    dy = torch.randn(2, 3, 6, 4, 4)
    results = []
    for net in (block, twin):
        xi = x.clone().requires_grad_()
        y = net._forward_channel_major(xi)
        y.backward(dy)
        results.append([y.detach(), xi.grad, *(p.grad for p in net.parameters())])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def _node_inputs(c: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2 * 4, c, 6, 5, generator=g, dtype=torch.float64) * 2 + 0.5
    weight = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(c, generator=g, dtype=torch.float64)
    shift = torch.rand(3, c, generator=g, dtype=torch.float64) * 2 - 1
    return h, weight, bias, shift


def _settings(c: int, stride: int, normalize_grad: bool) -> NormShiftSettings:
    running = (torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64))
    return NormShiftSettings(
        norm=(*running, 0.1, 1e-5),
        shift=((1, stride, stride), (0, 0, 0), False, normalize_grad, 1.0),
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_norm_relu_shift_node_matches_the_ops(stride: int) -> None:
    """The node's output, gradients and running statistics equal torch's batch norm +
    ReLU followed by the shift op (float64, CPU), and it keeps h alone of the clip's
    size."""
    c = 5
    h, weight, bias, shift = _node_inputs(c, 2)
    settings = _settings(c, stride, normalize_grad=True)
    dy_shape = (2, 4, c, 6 // stride, 5 // stride + 5 % stride)
    dy = torch.randn(dy_shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (h, weight, bias, shift)]
    out = NormReluShift.apply(*leaves, 4, settings)
    assert type(out.grad_fn).__name__ == "NormReluShiftBackward"
    out.backward(dy)
    refs = [t.clone().requires_grad_() for t in (h, weight, bias, shift)]
    rm, rv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    y = torch.relu(F.batch_norm(refs[0], rm, rv, refs[1], refs[2], True, 0.1, 1e-5))
    ref = rubiks_shift3d(y.unflatten(0, (2, 4)), refs[3], (1, stride, stride))
    ref.backward(dy)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(leaves, refs, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(settings.norm[0], rm, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(settings.norm[1], rv, rtol=1e-12, atol=1e-15)
    sizes = _saved_sizes(lambda: NormReluShift.apply(*leaves, 4, _settings(c, stride, True)))
    assert sorted(sizes)[-1] == h.numel() and sorted(sizes)[-2] < h.numel() // 4


def test_norm_relu_shift_node_gradcheck() -> None:
    """The node against finite differences (float64; the shift gradient unnormalised:
    normalisation is not a derivative)."""
    c = 3
    h, weight, bias, shift = _node_inputs(c, 4)
    inputs = [t.requires_grad_() for t in (h[:4, :, :4, :4].clone(), weight, bias, shift)]

    def run(*values):
        return NormReluShift.apply(*values, 2, _settings(c, 1, normalize_grad=False))

    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_block_takes_the_node_only_on_cuda_in_plain_eager_training() -> None:
    """On the CPU (and in evaluation) a block records the modules' own ops; the node's
    inputs are the block's own tensors where it applies."""
    block = RubiksBlock(4, 4, 1, **_BLOCK_OPTIONS).train()
    h = torch.randn(2 * 3, 4, 5, 5)
    assert block._norm_shift_inputs(h, 3) is None
    weight, bias, shift, frames, settings = block._norm_shift_args(h, 3)
    assert weight is block.norm2.weight and bias is block.norm2.bias
    assert shift is block.rubiks.shift and frames == 3
    assert settings.norm[0] is block.norm2.running_mean
    assert settings.norm[2:] == (block.norm2.momentum, block.norm2.eps)
    r = block.rubiks
    assert settings.shift == (r.stride, r.padding, r.quantize, r.normalize_grad, 1.0)
    block.rubiks.normalize_t_factor = "auto"
    assert block._norm_shift_args(h, 3)[-1].shift[-1] == 3 / 5
    assert block.eval()._norm_shift_args(h, 3) is None


def _twins(arch: str, dtype: torch.dtype):
    """(model, twin): the twin keeps every activation (``set_activation_recompute``)."""
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=7).cuda().train().to(dtype)
    twin = timm.create_model(arch, num_classes=7).cuda().train().to(dtype)
    twin.load_state_dict(model.state_dict())
    twin.set_activation_recompute(False)
    return model, twin


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["rubiksnet_tiny", "rubiksnet_large"])
def test_cuda_norm_relu_shift_node_equals_the_ops(arch: str, autocast: bool) -> None:
    """A CUDA training step that recomputes activations (the blocks' batch norm + ReLU +
    shift as one node; the channel-major nodes in bf16) gives the step that keeps them
    (the ops recorded one by one) bit for bit: logits, every gradient, the running
    statistics (float32, and bf16 autocast)."""
    model, twin = _twins(arch, torch.float32)
    nodes = []
    block = model.stages[0].blocks[0]
    block.register_forward_hook(lambda m, i, out: nodes.append(out.grad_fn))
    clip = torch.randn(2, 8, 3, 64, 64, device="cuda")
    target = torch.tensor([1, 5], device="cuda")
    logits = []
    with torch.backends.cudnn.flags(deterministic=True, allow_tf32=False):
        for net in (model, twin):
            with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
                out = net(clip)
            F.cross_entropy(out, target).backward()
            logits.append(out.detach())
    assert torch.equal(*logits)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    for (name, b), c in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.equal(b, c), name
    # the first block (112² planes: frame by frame) recorded the node
    chain, seen = [nodes[0]], set()
    while chain:
        fn = chain.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        chain += [f for f, _ in fn.next_functions]
    assert "NormReluShiftBackward" in {type(f).__name__ for f in seen}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_channel_major_node_keeps_three_activations() -> None:
    """On CUDA in bf16 too, the channel-major node keeps three clip-sized tensors."""
    torch.manual_seed(1)
    block = RubiksBlock(8, 8, 1, **_BLOCK_OPTIONS).cuda().train()
    x = to_channel_major(torch.randn(2, 4, 8, 7, 7, device="cuda", dtype=torch.bfloat16))
    x.requires_grad_()
    with torch.autocast("cuda", torch.bfloat16):
        sizes = _saved_sizes(lambda: block._forward_channel_major(x))
    assert len([n for n in sizes if n >= x.numel()]) == 3


def test_set_activation_recompute_sets_every_block() -> None:
    model = timm.create_model("rubiksnet_tiny", num_classes=5)
    blocks = [m for m in model.modules() if isinstance(m, RubiksBlock)]
    assert all(b.recompute_activations for b in blocks)
    model.set_activation_recompute(False)
    assert not any(b.recompute_activations for b in blocks)
    with pytest.raises(TypeError, match="enable must be a bool"):
        model.set_activation_recompute("off")
