"""affine_relu: relu(x * scale + bias) in one pass, equal to the zero-shift affine op;
with a frame shift, equal to the affine op with that integer temporal shift."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shift_testing import DEVICES, channel_major, requires_cuda

from rubiks_shift import affine_relu, affine_relu_shift3d, is_channel_major

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _case(seed, shape, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    c = shape[2]
    x = torch.randn(shape, generator=g).to(device, dtype)
    scale = (torch.rand(c, generator=g) * 2 - 0.5).to(device)  # some negative
    bias = (torch.randn(c, generator=g) * 0.5).to(device)
    return x, scale, bias


def _expected(x, scale, bias, frame_shift=None):
    """float64 reference: frame t of channel c from frame t + frame_shift[c] (0 outside
    the clip), written as a loop over channels and frames."""
    view = (1, 1, -1, 1, 1)
    y = torch.relu(x.double() * scale.double().view(view) + bias.double().view(view))
    if frame_shift is None:
        return y
    out = torch.zeros_like(y)
    frames = x.shape[1]
    for c, d in enumerate(frame_shift.tolist()):
        for t in range(frames):
            if 0 <= t + d < frames:
                out[:, t, c] = y[:, t + d, c]
    return out


def _temporal(frame_shift, device, dtype=torch.float32):
    """The (3, C) shift of the affine op that moves whole frames by ``frame_shift``."""
    shift = torch.zeros(3, frame_shift.numel(), device=device, dtype=dtype)
    shift[0] = frame_shift.to(device, dtype)
    return shift


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=st.tuples(*(st.integers(1, n) for n in (2, 3, 5, 9, 9))),
    major=st.booleans(),
)
def test_matches_float64_reference(device, seed, shape, major):
    x, scale, bias = _case(seed, shape, device, torch.float64)
    x = channel_major(x) if major else x
    g = torch.Generator().manual_seed(seed)
    frame_shift = torch.randint(-shape[1] - 1, shape[1] + 2, (shape[2],), generator=g)
    for fs in (None, frame_shift.to(device)):
        with torch.no_grad():
            y = affine_relu(x, scale.double(), bias.double(), fs)
        assert y.dtype == torch.float64 and y.shape == x.shape
        assert is_channel_major(y) == is_channel_major(x)
        expected = _expected(x, scale, bias, frame_shift if fs is not None else None)
        torch.testing.assert_close(y.cpu(), expected.cpu(), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 6), (1, 4, 3, 7, 7), (2, 1, 5, 1, 9)])
def test_frame_shift_equals_the_temporal_shift_pass(device, dtype, shape):
    """With a frame shift (int32 or int64, beyond the clip too, as far as int32 goes),
    bit for bit the affine shift op with that integer temporal shift, in both layouts,
    the layout kept."""
    x, scale, bias = _case(8, shape, device, dtype)
    c = shape[2]
    extreme = torch.full((c,), 2**31 - 1, dtype=torch.int32)  # far beyond the clip
    extreme[::2] = -(2**31)
    shifts = (torch.arange(c) % 3 - 1, torch.arange(c, dtype=torch.int32) - 2, extreme)
    for frame_shift in shifts:
        fs = frame_shift.to(device)
        shift = _temporal(fs, device)
        for clip in (x, channel_major(x)):
            with torch.no_grad():
                y = affine_relu(clip, scale, bias, fs)
                z = affine_relu_shift3d(clip, scale, bias, shift, quantize=True)
            assert y.dtype == dtype
            assert torch.equal(y, z)
            assert is_channel_major(y) == is_channel_major(clip)
            assert y.stride() == z.stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 6), (1, 2, 3, 7, 7), (2, 1, 5, 1, 9)])
def test_equals_the_zero_shift_pass(device, dtype, shape):
    """Bit for bit the affine shift op with a zero shift (the same arithmetic: one fma in
    the accumulation dtype, rounded once), in both layouts, the layout kept."""
    x, scale, bias = _case(7, shape, device, dtype)
    zero = torch.zeros(3, shape[2], device=device)
    for clip in (x, channel_major(x)):
        with torch.no_grad():
            y = affine_relu(clip, scale, bias)
            z = affine_relu_shift3d(clip, scale, bias, zero, quantize=True)
        assert y.dtype == dtype
        assert torch.equal(y, z)
        assert is_channel_major(y) == is_channel_major(clip)
        assert y.stride() == z.stride()


@pytest.mark.parametrize("device", DEVICES)
def test_nan_stays_nan_and_negatives_are_zero(device):
    x = torch.tensor([float("nan"), -1.0, 2.0, float("inf")], device=device).view(1, 1, 1, 2, 2)
    one, zero = torch.ones(1, device=device), torch.zeros(1, device=device)
    with torch.no_grad():
        y = affine_relu(x, one, zero)
    assert torch.isnan(y.flatten()[0])
    assert y.flatten()[1:].tolist() == [0.0, 2.0, float("inf")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 7), (1, 8, 40, 4, 4), (3, 2, 1, 1, 33)])
def test_cpu_kernel_equals_torch_addcmul(dtype, shape):
    """On the CPU the pass is a Numba kernel over rows of the clip's memory: bit for bit
    torch's ``addcmul`` + ReLU in the accumulation dtype (one fma, rounded once, then to
    x's dtype), NaN and infinities included, in both layouts, for one thread and more."""
    from rubiks_shift._ops import _affine_relu

    x, scale, bias = _case(11, shape, "cpu", dtype)
    flat = x.view(-1)
    flat[::7] = float("nan")
    flat[3::11] = float("inf")
    flat[5::13] = -float("inf")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale, bias = scale.to(acc), bias.to(acc)
    threads = torch.get_num_threads()
    try:
        for count in (1, max(2, threads)):
            torch.set_num_threads(count)
            for clip in (x, channel_major(x)):
                with torch.no_grad():
                    y = affine_relu(clip, scale, bias)
                expected = _affine_relu(clip, scale, bias).to(dtype)
                assert y.dtype == dtype and is_channel_major(y) == is_channel_major(clip)
                assert torch.equal(y.isnan(), expected.isnan())
                assert torch.equal(y.nan_to_num(), expected.nan_to_num())
    finally:
        torch.set_num_threads(threads)


def test_refuses_bad_input():
    x, scale, bias = _case(3, (1, 2, 3, 4, 4), "cpu")
    affine_relu(x, scale, bias)  # a signature that passed stays checked:
    with pytest.raises(RuntimeError, match="inference"):
        affine_relu(x.clone().requires_grad_(), scale, bias)
    with pytest.raises(ValueError, match=r"scale must have shape \(C,\) = \(3,\)"):
        affine_relu(x, scale[:2], bias)
    with pytest.raises(TypeError, match="bias must be floating point"):
        affine_relu(x, scale, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="rank 5"):
        affine_relu(x[0], scale, bias)
    with pytest.raises(TypeError, match="unsupported dtype"):
        affine_relu(x.to(torch.int32), scale, bias)
    with pytest.raises(ValueError, match="empty"):
        affine_relu(x[:0], scale, bias)
    frames = torch.tensor([1, 0, -1])
    affine_relu(x, scale, bias, frames)
    with pytest.raises(TypeError, match="signed integer tensor"):
        affine_relu(x, scale, bias, frames.float())
    with pytest.raises(TypeError, match="tensor or None"):
        affine_relu(x, scale, bias, [1, 0, -1])
    with pytest.raises(ValueError, match=r"frame_shift must have shape \(C,\) = \(3,\)"):
        affine_relu(x, scale, bias, frames[:2])
    with pytest.raises(ValueError, match="frame_shift is on meta"):
        affine_relu(x, scale, bias, frames.to("meta"))


def test_every_signed_integer_frame_shift_and_a_strided_clip():
    x, scale, bias = _case(6, (1, 5, 3, 4, 4), "cpu")
    expected = affine_relu(x, scale, bias, torch.tensor([1, -1, 7], dtype=torch.int32))
    for dtype in (torch.int8, torch.int16, torch.int64):
        frames = torch.tensor([1, -1, 7], dtype=dtype)
        torch.testing.assert_close(affine_relu(x, scale, bias, frames), expected, rtol=0, atol=0)
    strided = x.transpose(3, 4)  # the result is contiguous, as the fake kernel says
    y = affine_relu(strided, scale, bias)
    assert y.is_contiguous()
    torch.testing.assert_close(y, torch.relu(strided * scale.view(3, 1, 1) + bias.view(3, 1, 1)))
    torch.library.opcheck(torch.ops.rubiks_shift.affine_relu.default, (strided, scale, bias))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, scale, bias = _case(4, (2, 3, 4, 5, 5), device)
    frames = torch.tensor([2, 0, -1, 1], device=device, dtype=torch.int32)
    for clip in (x, channel_major(x)):
        torch.library.opcheck(torch.ops.rubiks_shift.affine_relu.default, (clip, scale, bias))
        op = torch.ops.rubiks_shift.affine_relu.default
        torch.library.opcheck(op, (clip, scale, bias, frames))


def test_compile_fullgraph_matches_eager():
    x, scale, bias = _case(5, (2, 3, 4, 6, 6), "cpu")

    frames = torch.tensor([1, 0, -1, 2])

    def fn(x):
        return affine_relu(x * 2, scale, bias).sum(2) + affine_relu(x, scale, bias, frames).sum(2)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fn(x))


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 8, 64, 14, 14), (2, 3, 5, 7, 7), (1, 1, 3, 1, 1023)])
def test_cuda_at_row_tails(dtype, shape):
    """Rows whose length is not a multiple of a block's span (the tail path), both
    layouts: the float64 reference within one rounding of the dtype, and bit for bit the
    zero-shift pass."""
    x, scale, bias = _case(6, shape, "cuda", dtype)
    frames = (torch.arange(shape[2], dtype=torch.int32) % 5 - 2).cuda()
    for fs in (None, frames):
        shift = _temporal(fs if fs is not None else torch.zeros_like(frames), "cuda")
        for clip in (x, channel_major(x)):
            with torch.no_grad():
                y = affine_relu(clip, scale, bias, fs)
                z = affine_relu_shift3d(clip, scale, bias, shift, quantize=True)
            expected = _expected(clip, scale, bias, fs.cpu() if fs is not None else None)
            info = torch.finfo(dtype)  # one rounding, down to the subnormals' spacing
            torch.testing.assert_close(
                y.double(), expected.cuda(), rtol=info.eps, atol=info.smallest_normal * info.eps
            )
            assert torch.equal(y, z)


@requires_cuda
@pytest.mark.parametrize("shape", [(8, 8, 72, 56, 56), (2, 3, 4, 1, 1026), (2, 3, 4, 5, 5)])
def test_cuda_bfloat16_pairs_equal_values_one_by_one(shape):
    """bfloat16 clips move as 32-bit pairs where H·W is even and the tensor is aligned to
    4 bytes; the same values one element off that boundary (a view) take one value at a
    time. Both equal the gather pass bit for bit, in both layouts, with frame shifts."""
    x, scale, bias = _case(9, shape, "cuda", torch.bfloat16)
    flat = torch.empty(x.numel() + 1, device="cuda", dtype=torch.bfloat16)
    flat[1:] = x.flatten()
    off = flat[1:].view(shape)
    assert off.data_ptr() % 4 == 2
    frames = (torch.arange(shape[2], dtype=torch.int32) % 5 - 2).cuda()
    for fs in (None, frames):
        shift = _temporal(fs if fs is not None else torch.zeros_like(frames), "cuda")
        for clip, moved in ((x, off), (channel_major(x), None)):
            with torch.no_grad():
                y = affine_relu(clip, scale, bias, fs)
                z = affine_relu_shift3d(clip, scale, bias, shift, quantize=True)
                assert torch.equal(y, z)
                if moved is not None:
                    assert torch.equal(affine_relu(moved, scale, bias, fs), y)
