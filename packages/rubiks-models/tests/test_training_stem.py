"""The stem's training node (``rubiks_models.training_stem``): its gradients against
``F.conv2d``'s, and where the models' stem takes it."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import rubiks_models  # noqa: F401  (registers the models)
from rubiks_models.training_stem import StemConv, TrainingStem

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_training_stem_gradcheck() -> None:
    """The node against finite differences (float64, CPU: ``stem_conv`` is
    ``F.conv2d`` there), frames and weight both differentiated."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 3, 7, 6, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    run = lambda f, w: TrainingStem.apply(f, w, torch.float64)
    assert torch.autograd.gradcheck(run, (frames, weight))
    assert type(run(frames, weight).grad_fn).__name__ == "TrainingStemBackward"


def test_stem_conv_is_the_models_stem_and_a_conv2d() -> None:
    """The models' stem is a ``StemConv``: an ``nn.Conv2d`` (state dict, settings) that
    on the CPU computes what ``nn.Conv2d`` does, gradient included."""
    model = timm.create_model("rubiksnet_tiny", num_classes=3)
    stem = model.stem
    assert type(stem) is StemConv and isinstance(stem, torch.nn.Conv2d)
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (2, 2), (1, 1))
    assert stem.bias is None and list(stem.state_dict()) == ["weight"]
    frames = torch.randn(2, 3, 10, 10)
    out = stem(frames)
    assert out.grad_fn is not None and type(out.grad_fn).__name__ != "TrainingStemBackward"
    torch.testing.assert_close(out, F.conv2d(frames, stem.weight, stride=2, padding=1))


@requires_cuda
@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_cuda_stem_trains_through_the_node(autocast) -> None:
    """On CUDA in training the stem is the node, with ``F.conv2d``'s value and weight
    gradient (to the dtype's rounding); under ``torch.no_grad`` it is the convolution."""
    torch.manual_seed(0)
    stem = StemConv(3, 72).cuda()
    frames = torch.randn(4, 3, 64, 64, device="cuda")
    grad_out = torch.randn(4, 72, 32, 32, device="cuda")
    dtype = autocast or torch.float32
    # cuDNN's float32 backward may take TF32 (as nn.Conv2d's does): off, to check it exactly
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        with torch.autocast("cuda", dtype=dtype, enabled=autocast is not None):
            out = stem(frames)
        assert type(out.grad_fn).__name__ == "TrainingStemBackward" and out.dtype == dtype
        out.backward(grad_out.to(dtype))
    weight = stem.weight.detach().double().requires_grad_()
    want = F.conv2d(frames.to(dtype).double(), weight.to(dtype).double(), stride=2, padding=1)
    want.backward(grad_out.to(dtype).double())
    tol = 1e-5 if autocast is None else 1e-2
    scale = want.abs().max().item()
    torch.testing.assert_close(out.double(), want.detach(), rtol=tol, atol=tol * scale)
    assert stem.weight.grad.dtype == torch.float32
    g_scale = weight.grad.abs().max().item()
    torch.testing.assert_close(stem.weight.grad.double(), weight.grad, rtol=tol, atol=tol * g_scale)
    with torch.no_grad():
        assert stem(frames).grad_fn is None
