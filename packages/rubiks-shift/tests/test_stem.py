"""stem_conv: a RubiksNet's 3x3 stride-2 convolution of 3-channel frames (padding 1, no
bias), torch's convolution off CUDA, a kernel of its own on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from shift_testing import DEVICES, requires_cuda

from rubiks_shift import stem_conv

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _case(seed: int, n: int, height: int, width: int, channels: int, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(n, 3, height, width, generator=g, dtype=torch.float64)
    weight = torch.randn(channels, 3, 3, 3, generator=g, dtype=torch.float64) / 27**0.5
    return frames.to(device), weight.to(device)


def _expected(frames: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(frames.double(), weight.double(), stride=2, padding=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_cpu_is_torch_convolution_with_weights_in_the_frames_dtype(dtype):
    frames, weight = _case(0, 2, 9, 8, 6)
    frames, w32 = frames.to(dtype), weight.float()
    got = stem_conv(frames, w32)
    want = F.conv2d(frames, w32.to(dtype), stride=2, padding=1)
    assert got.shape == (2, 6, 5, 4) and got.dtype == dtype and got.is_contiguous()
    assert torch.equal(got, want)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    height=st.integers(1, 11),
    width=st.integers(1, 11),
    channels=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_float64_matches_the_definition(n, height, width, channels, seed):
    """Output pixel (y, x) of channel c sums weight[c, ci, ky, kx] * frames[ci, 2y - 1 +
    ky, 2x - 1 + kx] over the taps inside the frame, written as loops."""
    frames, weight = _case(seed, n, height, width, channels)
    got = stem_conv(frames, weight)
    out_h, out_w = (height + 1) // 2, (width + 1) // 2
    want = torch.zeros(n, channels, out_h, out_w, dtype=torch.float64)
    for ky in range(3):
        for kx in range(3):
            padded = F.pad(frames, (1, 2, 1, 2))  # room for the last window's taps
            taps = padded[:, :, ky : ky + 2 * out_h : 2, kx : kx + 2 * out_w : 2]
            want += torch.einsum("nihw,ci->nchw", taps, weight[:, :, ky, kx])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_non_contiguous_frames_and_empty_batches():
    frames, weight = _case(1, 2, 6, 10, 4)
    strided = frames[:, :, :, ::2]
    assert not strided.is_contiguous()
    torch.testing.assert_close(stem_conv(strided, weight), _expected(strided, weight))
    empty = stem_conv(frames[:0], weight)
    assert empty.shape == (0, 4, 3, 5)


def test_refuses_bad_input():
    frames, weight = _case(2, 1, 4, 4, 2)
    cases = [
        ((frames[0], weight), ValueError, r"frames must be \(N, 3, H, W\), got \(3, 4, 4\)"),
        ((frames[:, :2], weight), ValueError, r"got \(1, 2, 4, 4\)"),
        ((frames.int(), weight), TypeError, "unsupported dtype torch.int32"),
        ((frames, weight[:, :, :2]), ValueError, r"weight must be \(C, 3, 3, 3\)"),
        ((frames, weight[:0]), ValueError, r"weight must be \(C, 3, 3, 3\), got \(0, 3, 3, 3\)"),
        ((frames, weight.int()), TypeError, "weight must be floating point"),
        ((frames, weight.to("meta")), ValueError, "weight is on meta, frames on cpu"),
        ((frames.numpy(), weight), TypeError, "must be tensors, got ndarray"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            stem_conv(*args)
    with pytest.raises(RuntimeError, match="for inference and has no gradient"):
        stem_conv(frames, weight.requires_grad_())
    with torch.no_grad():
        assert stem_conv(frames, weight).shape == (1, 2, 2, 2)


@pytest.mark.parametrize("kernel", ["cpu", "fake", "cuda"])
def test_registered_op_refuses_bad_input(kernel):
    """torch.ops.rubiks_shift.stem called directly checks its arguments in every kernel:
    the CUDA kernel reads the filters as (C, 27) (a (C, 3, 5, 5) weight was read wrongly,
    a (C, 1, 3, 3) one out of bounds), the fake must not promise a shape the kernels do
    not give. The CUDA kernel is called here on CPU tensors: it checks before launching."""
    frames, weight = _case(7, 1, 5, 5, 4)
    frames, weight = frames.float(), weight.float()
    cases = [
        ((frames[0], weight), ValueError, r"frames must be \(N, 3, H, W\), got \(3, 5, 5\)"),
        (
            (frames, torch.zeros(4, 3, 5, 5)),
            ValueError,
            r"weight must be \(C, 3, 3, 3\), got \(4, 3, 5, 5\)",
        ),
        (
            (frames, torch.zeros(4, 1, 3, 3)),
            ValueError,
            r"weight must be \(C, 3, 3, 3\), got \(4, 1, 3, 3\)",
        ),
        ((frames.int(), weight.int()), TypeError, "unsupported dtype torch.int32"),
        ((frames, weight.to(torch.complex64)), TypeError, "weight must be floating point"),
    ]
    if kernel == "cpu":
        run = torch.ops.rubiks_shift.stem
        cases.append(((frames, weight.to("meta")), ValueError, "weight is on meta, frames on cpu"))
    elif kernel == "fake":
        cases = [(tuple(t.to("meta") for t in args), e, m) for args, e, m in cases]
        run = torch.ops.rubiks_shift.stem
    else:
        from rubiks_shift._ops import _stem_cuda as run
    for args, error, match in cases:
        with pytest.raises(error, match="rubiks_shift::stem: " + match):
            run(*args)


def test_refuses_empty_frames_on_every_path():
    """0-sized frames (H or W = 0): torch's convolution refuses them; so must the CUDA
    kernel (which returned an empty result) and the fake (which promised one)."""
    frames, weight = _case(8, 2, 4, 4, 3)
    from rubiks_shift._ops import _stem_cuda

    for empty in (frames[:, :, :0], frames[:, :, :, :0]):
        shape = str(tuple(empty.shape)).replace("(", r"\(").replace(")", r"\)")
        with pytest.raises(
            ValueError, match=r"stem_conv: frames must have H, W >= 1, got " + shape
        ):
            stem_conv(empty, weight)
        for run, args in [
            (torch.ops.rubiks_shift.stem, (empty, weight)),
            (torch.ops.rubiks_shift.stem, (empty.to("meta"), weight.to("meta"))),
            (_stem_cuda, (empty, weight)),
        ]:
            with pytest.raises(ValueError, match=r"rubiks_shift::stem: frames must have H, W >= 1"):
                run(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    frames, weight = _case(3, 2, 7, 6, 5, device)
    op = torch.ops.rubiks_shift.stem.default
    torch.library.opcheck(op, (frames.float(), weight.float()))
    torch.library.opcheck(op, (frames.to(torch.bfloat16), weight.float()))


def test_cpu_result_is_contiguous_for_channels_last_inputs():
    """The result is contiguous, as documented and as the fake says, also where torch's
    convolution would keep channels-last frames or filters channels-last."""
    frames, weight = _case(9, 2, 7, 6, 5)
    cl = torch.channels_last
    for f, w in [(frames, weight.to(memory_format=cl)), (frames.to(memory_format=cl), weight)]:
        got = stem_conv(f, w)
        assert got.is_contiguous()
        torch.testing.assert_close(got, _expected(frames, weight), rtol=1e-12, atol=1e-12)
        torch.library.opcheck(torch.ops.rubiks_shift.stem.default, (f.float(), w.float()))


def test_cpu_autocast_keeps_the_frames_dtype():
    """Under autocast the result is in the frames' dtype, as documented, as on CUDA and as
    the fake (so compiled code) says: torch's convolution ran in bfloat16 here."""
    frames, weight = _case(10, 2, 7, 6, 5)
    frames, weight = frames.float(), weight.float()
    want = F.conv2d(frames, weight, stride=2, padding=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        eager = stem_conv(frames, weight)
        op = torch.ops.rubiks_shift.stem(frames, weight)
        compiled = torch.compile(stem_conv, fullgraph=True, backend="aot_eager")(frames, weight)
    for got in (eager, op, compiled):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want)


def test_compile_fullgraph_matches_eager():
    frames, weight = _case(4, 2, 8, 8, 3)
    frames, weight = frames.float(), weight.float()

    def fn(x):
        return stem_conv(x * 2, weight).relu().sum((2, 3))

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(frames), fn(frames))


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape", [(64, 224, 224, 72), (3, 7, 9, 54), (2, 1, 1, 3), (1, 33, 65, 40), (5, 6, 5, 100)]
)
def test_cuda_matches_float64(dtype, shape):
    """Against torch's convolution in float64 of the same (rounded) frames and the
    weights as the kernel reads them: float32 sums (float64 for float64 frames), one
    rounding to the dtype, so within a few of its units."""
    n, height, width, channels = shape
    frames, weight = _case(5, n, height, width, channels, "cuda")
    frames = frames.to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    got = stem_conv(frames, weight.to(acc))
    want = _expected(frames, weight.to(acc))
    assert got.dtype == dtype and got.shape == want.shape and got.is_contiguous()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 4 * torch.finfo(dtype).eps)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * float(want.abs().max()))


@requires_cuda
def test_cuda_graph_capture_and_registered_op_equal_eager():
    frames, weight = _case(6, 4, 30, 31, 72, "cuda")
    frames, weight = frames.to(torch.bfloat16), weight.float()
    eager = stem_conv(frames, weight)
    assert torch.equal(torch.ops.rubiks_shift.stem(frames, weight), eager)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        stem_conv(frames, weight)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = stem_conv(frames, weight)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)
