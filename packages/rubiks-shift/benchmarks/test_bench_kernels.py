"""pytest-benchmark regressions of the op (CPU kernels; CUDA too when a GPU is present).

    pytest packages/rubiks-shift/benchmarks --benchmark-only
    pytest packages/rubiks-shift/benchmarks --benchmark-only --benchmark-compare  # vs saved

The shapes are the CPU rows of BENCHMARKS.md. ``test_copy_floor`` times a copy that reads
and writes as many bytes as the forward (``fwd``) or the forward plus backward
(``fwd_bwd``) of each shape, so a regression can be read against the memory floor
measured in the same run; ``test_host_time`` times the calls on a tiny clip. Timings are
for regression tracking, never asserted.
"""

from __future__ import annotations

import pytest
import torch

from rubiks_shift import affine_relu, affine_relu_shift3d, rubiks_shift3d, stem_conv

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = {
    "stage1": ((2, 8, 72, 56, 56), (1, 1, 1)),
    "stage3": ((2, 8, 288, 14, 14), (1, 1, 1)),
    "stage4": ((2, 8, 576, 7, 7), (1, 1, 1)),
    "stride2": ((2, 8, 72, 112, 112), (1, 2, 2)),
}


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _inputs(shape, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device)
    shift = (torch.rand(3, shape[2], generator=g) * 4 - 2).to(device)
    return x, shift


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("quantize", [False, True], ids=["interp", "quantize"])
def test_forward(benchmark, device, name, quantize):
    shape, stride = SHAPES[name]
    x, shift = _inputs(shape, device)

    def run():
        rubiks_shift3d(x, shift, stride, quantize=quantize)
        _sync(device)

    benchmark(run)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SHAPES))
def test_forward_backward(benchmark, device, name):
    shape, stride = SHAPES[name]
    x, shift = _inputs(shape, device)
    x.requires_grad_()
    shift = torch.nn.Parameter(shift)
    gy = torch.randn_like(rubiks_shift3d(x, shift, stride))

    def run():
        torch.autograd.grad(rubiks_shift3d(x, shift, stride), (x, shift), gy)
        _sync(device)

    benchmark(run)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
def test_host_time(benchmark, device, direction):
    """A (1, 2, 4, 4, 4) clip, whose kernels take a few µs: the host time of a call
    (BENCHMARKS.md, *Host time per call on the CPU*)."""
    x, shift = _inputs((1, 2, 4, 4, 4), device)
    if direction == "fwd":
        benchmark(lambda: (rubiks_shift3d(x, shift), _sync(device)))
        return
    x.requires_grad_()
    shift = torch.nn.Parameter(shift)
    gy = torch.ones_like(x)
    benchmark(
        lambda: (torch.autograd.grad(rubiks_shift3d(x, shift), (x, shift), gy), _sync(device))
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("direction", ["fwd", "fwd_bwd"])
def test_copy_floor(benchmark, device, name, direction):
    """A copy of n values reads and writes 2n: n = (in + out) / 2 for the forward,
    (3 in + 2 out) / 2 for forward plus backward (x, y; then grad_y, x, grad_x)."""
    shape, stride = SHAPES[name]
    x, shift = _inputs(shape, device)
    out = rubiks_shift3d(x, shift, stride).numel()
    n = (x.numel() + out) // 2 if direction == "fwd" else (3 * x.numel() + 2 * out) // 2
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)

    def run():
        dst.copy_(src)
        _sync(device)

    benchmark(run)


def _channel_major(x):
    """x (N, T, C, H, W) stored in (C, N, T, H, W) order, as the fused models keep it."""
    return x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)


def _affine(channels, device):
    g = torch.Generator().manual_seed(1)
    scale = (torch.rand(channels, generator=g) + 0.5).to(device)
    bias = (torch.randn(channels, generator=g) * 0.5).to(device)
    return scale, bias


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["stage1", "stage3", "stage4"])
@pytest.mark.parametrize("layout", ["contiguous", "channel-major"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("quantize", [False, True], ids=["interp", "quantize"])
def test_affine_forward(benchmark, device, name, layout, dtype, quantize):
    """The fused inference form's shift (batch norm + ReLU applied as it reads x), on
    (N, T, C, H, W) and on channel-major clips (read and written in place); quantized,
    the hardened AQ block's spatial shift."""
    shape, stride = SHAPES[name]
    x, shift = _inputs(shape, device)
    x = x.to(dtype)
    if layout == "channel-major":
        x = _channel_major(x)
    if quantize:
        shift[0] = 0  # a hardened AQ block's shift is spatial only
    scale, bias = _affine(shape[2], device)

    def run():
        with torch.no_grad():
            affine_relu_shift3d(x, scale, bias, shift, stride, quantize=quantize)
        _sync(device)

    benchmark(run)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["stage1", "stage3", "stage4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("frames", [False, True], ids=["plain", "frame_shift"])
def test_affine_relu(benchmark, device, name, dtype, frames):
    """The fused block's batch norm + ReLU pass over a channel-major clip: plain (a
    rubiks3d block's bn1) or with a whole-frame shift per channel (a hardened AQ
    block's)."""
    shape, _ = SHAPES[name]
    x = _channel_major(_inputs(shape, device)[0].to(dtype))
    scale, bias = _affine(shape[2], device)
    frame_shift = None
    if frames:
        g = torch.Generator().manual_seed(2)
        frame_shift = torch.randint(-1, 2, (shape[2],), generator=g).to(device)

    def run():
        with torch.no_grad():
            affine_relu(x, scale, bias, frame_shift)
        _sync(device)

    benchmark(run)


@pytest.mark.parametrize("device", DEVICES)
def test_host_overhead_tiny(benchmark, device):
    x, shift = _inputs((1, 2, 4, 4, 4), device)

    def run():
        rubiks_shift3d(x, shift)

    benchmark(run)
    _sync(device)


@pytest.mark.parametrize("device", DEVICES)
def test_stem(benchmark, device):
    """RubiksNet-Large's stem over 8 frames of 224² (the CUDA kernel; torch's
    convolution on the CPU)."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(8, 3, 224, 224, generator=g).to(device)
    weight = torch.randn(72, 3, 3, 3, generator=g).to(device)

    def run():
        stem_conv(frames, weight)
        _sync(device)

    benchmark(run)
