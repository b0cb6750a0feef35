"""The fused blocks' 1x1 convolutions: 2-D in eager code, 1-D over flattened planes where
torch.compile traces for a device of rubiks_models.pointwise.ONE_D_DEVICES (CUDA; the
CPU is added here to run that path)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import rubiks_models  # noqa: F401  (registers the models)
from rubiks_models import pointwise
from rubiks_models.fused import fuse_model
from rubiks_models.pointwise import conv1x1


@pytest.fixture
def cpu_as_1d(monkeypatch):
    monkeypatch.setattr(pointwise, "ONE_D_DEVICES", frozenset({"cpu", "cuda"}))


@pytest.mark.parametrize("stride", [1, 2])
def test_conv1x1_traced_equals_conv2d(cpu_as_1d, stride):
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(3, 5, 7, 6, dtype=torch.float64, generator=g)
    weight = torch.randn(4, 5, 1, 1, dtype=torch.float64, generator=g)
    expected = F.conv2d(frames, weight, stride=stride)
    traced = torch.compile(conv1x1, backend="eager", fullgraph=True)
    torch.testing.assert_close(traced(frames, weight, stride), expected)
    torch.testing.assert_close(conv1x1(frames, weight, stride), expected)


def _convolutions(model, x):
    """(2-D convolution, 1-D convolution, rubiks_shift stem) calls in the graph
    torch.compile traces of model(x), and the compiled model's output."""
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        out = torch.compile(model, backend=backend, fullgraph=True)(x)
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    conv2d = sum(t in (F.conv2d, torch.conv2d) for t in targets)
    conv1d = sum(t in (F.conv1d, torch.conv1d) for t in targets)
    stems = sum(t is torch.ops.rubiks_shift.stem for t in targets)
    return conv2d, conv1d, stems, out


def _tiny():
    torch.manual_seed(0)
    model = timm.create_model("rubiksnet_tiny", num_classes=5).eval()
    blocks = [m for m in model.modules() if type(m).__name__ == "RubiksBlock"]
    return model, sum(2 + b.has_proj for b in blocks)


@pytest.mark.parametrize("plane", [0, 64])  # frame by frame; channel-major from 8 x 8
def test_compiled_fused_blocks_run_1x1_convolutions_as_1d(cpu_as_1d, plane):
    """Only the stem stays a 2-D convolution in the fused model's compiled code, whose
    logits equal eager ones: Inductor's layout optimisation then puts no channels-last
    copies around the shift ops."""
    model, pointwise_count = _tiny()
    fused = fuse_model(model, "conv", channel_major_plane=plane).eval()
    x = torch.randn(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    conv2d, conv1d, stems, out = _convolutions(fused, x)
    assert (conv2d, conv1d, stems) == (1, pointwise_count, 0)
    with torch.no_grad():
        torch.testing.assert_close(out, fused(x), rtol=1e-5, atol=1e-5)


def test_other_devices_and_the_unfused_model_keep_2d_convolutions():
    model, pointwise_count = _tiny()
    x = torch.randn(1, 2, 3, 32, 32)
    fused = fuse_model(model, "conv").eval()
    assert _convolutions(fused, x)[:3] == (1 + pointwise_count, 0, 0)  # the CPU: not listed
    assert frozenset({"cuda"}) == pointwise.ONE_D_DEVICES
    assert _convolutions(model, x)[1] == 0  # the unfused model: nn.Conv2d modules


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_compiled_fused_model_runs_1x1_convolutions_as_1d():
    model, pointwise_count = _tiny()
    # traced: compiled as one op (the default on CUDA), its graph holds no convolution
    fused = fuse_model(model.cuda(), "conv", compile_as="traced").eval()
    x = torch.randn(1, 2, 3, 32, 32, device="cuda")
    conv2d, conv1d, stems, out = _convolutions(fused, x)
    # the stem is rubiks_shift's own kernel on CUDA: no 2-D convolution is left
    assert (conv2d, conv1d, stems) == (0, pointwise_count, 1)
    with torch.no_grad():
        expected = fused(x)
    # the same products up to the convolution algorithms (TF32) cuDNN picks for each form
    assert float((out - expected).norm() / expected.norm()) < 2e-3
