"""affine_relu_shift3d: equal to rubiks_shift3d(relu(x * scale + bias)), on every device."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shift_testing import DEVICES, channel_major, rel_err, requires_cuda

from rubiks_shift import affine_relu_shift3d, is_channel_major, rubiks_shift3d


def _composed(x, scale, bias, shift, stride, padding, quantize):
    """The unfused computation in float64."""
    view = (1, 1, -1, 1, 1)
    a = torch.relu(x.double() * scale.double().view(view) + bias.double().view(view))
    return rubiks_shift3d(a, shift.double(), stride, padding, quantize=quantize)


def _case(seed, shape, device, dtype=torch.float32, spread=4.0):
    g = torch.Generator().manual_seed(seed)
    c = shape[2]
    x = torch.randn(shape, generator=g).to(device, dtype)
    scale = (torch.rand(c, generator=g) + 0.5).to(device)
    bias = (torch.randn(c, generator=g) * 0.5).to(device)
    shift = (torch.rand(3, c, generator=g) * spread - spread / 2).to(device)
    return x, scale, bias, shift


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 2),
    t=st.integers(1, 5),
    c=st.integers(1, 5),
    h=st.integers(1, 11),
    w=st.integers(1, 11),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 2)),
    padding=st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 1)),
    quantize=st.booleans(),
)
def test_matches_composition(device, seed, n, t, c, h, w, stride, padding, quantize):
    x, scale, bias, shift = _case(seed, (n, t, c, h, w), device, torch.float64)
    if seed % 3 == 0:  # exact integers and ties on some axes
        shift[seed % 3] = shift[seed % 3].round()
    with torch.no_grad():
        y = affine_relu_shift3d(x, scale, bias, shift, stride, padding, quantize=quantize)
    expected = _composed(x, scale, bias, shift, stride, padding, quantize)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_shift_quantized_is_affine_relu(device):
    x, scale, bias, _ = _case(1, (2, 3, 4, 5, 6), device)
    zero = torch.zeros(3, 4, device=device)
    with torch.no_grad():
        y = affine_relu_shift3d(x, scale, bias, zero, quantize=True)
    expected = torch.relu(x * scale.view(1, 1, -1, 1, 1) + bias.view(1, 1, -1, 1, 1))
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_out_of_range_reads_are_zero_not_relu_of_bias(device):
    """A positive bias must not leak in where the shift reads outside the clip."""
    x = torch.zeros(1, 2, 1, 3, 3, device=device)
    scale = torch.ones(1, device=device)
    bias = torch.full((1,), 5.0, device=device)
    shift = torch.tensor([[0.0], [2.0], [0.0]], device=device)  # rows 2.. read outside
    with torch.no_grad():
        y = affine_relu_shift3d(x, scale, bias, shift)
    assert torch.equal(y[0, :, 0, 0], torch.full((2, 3), 5.0, device=device))
    assert torch.equal(y[0, :, 0, 1:], torch.zeros(2, 2, 3, device=device))


def test_refuses_gradients_and_bad_affine():
    x, scale, bias, shift = _case(2, (1, 2, 3, 4, 4), "cpu")
    affine_relu_shift3d(x, scale, bias, shift)  # a signature that passed stays checked:
    with pytest.raises(RuntimeError, match="inference"):
        affine_relu_shift3d(x.requires_grad_(), scale, bias, shift)
    x = x.detach()
    with pytest.raises(RuntimeError, match="inference"):  # the shift's gradient too
        affine_relu_shift3d(x, scale, bias, torch.nn.Parameter(shift.clone()))
    with pytest.raises(ValueError, match=r"scale must have shape \(C,\) = \(3,\)"):
        affine_relu_shift3d(x, scale[:2], bias, shift)
    with pytest.raises(TypeError, match="bias must be floating point"):
        affine_relu_shift3d(x, scale, torch.zeros(3, dtype=torch.int64), shift)
    with pytest.raises(ValueError, match="shift must have shape"):
        affine_relu_shift3d(x, scale, bias, shift[:2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channel-major"])
def test_cpu_kernel_equals_affine_relu_then_shift(dtype, layout):
    """On the CPU the affine map runs inside the shift kernel, rounded once as
    ``affine_relu`` (``torch.addcmul``) rounds it: bit for bit the two ops in a row, for
    fractional, integer and out-of-clip shifts, NaN inputs propagated, in x's layout."""
    from rubiks_shift import affine_relu

    x, scale, bias, shift = _case(9, (2, 4, 6, 7, 9), "cpu", dtype, spread=6.0)
    shift[:, 0] = torch.tensor([1.0, -2.0, 0.0])
    shift[:, 1] = torch.tensor([9.0, 0.5, -12.0])  # reads outside the clip
    x[0, 1, 2, 3, 4] = float("nan")
    x = channel_major(x) if layout == "channel-major" else x
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale, bias = scale.to(acc), bias.to(acc)
    for stride, quantize in (((1, 1, 1), False), ((1, 2, 2), False), ((1, 1, 1), True)):
        with torch.no_grad():
            y = affine_relu_shift3d(x, scale, bias, shift, stride, quantize=quantize)
            a = affine_relu(x.to(acc), scale, bias)
            expected = rubiks_shift3d(a, shift.to(acc), stride, quantize=quantize).to(dtype)
        assert y.dtype == dtype and is_channel_major(y) == (layout == "channel-major")
        assert torch.equal(y.isnan(), expected.isnan()) and y.isnan().any()
        assert torch.equal(y.nan_to_num(), expected.nan_to_num())


def _is_channel_major(y) -> bool:
    return y.permute(2, 0, 1, 3, 4).is_contiguous() and not y.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape,stride,quantize",
    [((2, 4, 3, 6, 5), (1, 1, 1), False), ((2, 3, 4, 7, 6), (1, 2, 2), False),
     ((1, 3, 5, 4, 4), (1, 1, 1), True)],
)  # fmt: skip
def test_channel_major_in_channel_major_out(device, shape, stride, quantize):
    """A channel-major clip gives the same values as a contiguous one, channel-major."""
    x, scale, bias, shift = _case(6, shape, device)
    with torch.no_grad():
        y = affine_relu_shift3d(x, scale, bias, shift, stride, quantize=quantize)
        y_cm = affine_relu_shift3d(channel_major(x), scale, bias, shift, stride, quantize=quantize)
    assert _is_channel_major(y_cm)
    assert torch.equal(y_cm, y)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 6), (1, 3, 4, 5, 6), (2, 1, 4, 1, 6),
                                   (2, 3, 1, 5, 6), (1, 1, 1, 1, 1), (2, 3, 4, 5, 1)])  # fmt: skip
def test_channel_major_detection_reads_strides_as_torch_does(shape):
    """The stride rule equals permute(...).is_contiguous() for every layout and any
    dimension of size 1 (whose stride is free)."""
    from rubiks_shift._checks import empty_channel_major

    x = torch.randn(shape)
    layouts = [
        x,
        channel_major(x),
        x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3),  # channels-last
        x.transpose(0, 1).contiguous().transpose(0, 1),
        x[..., ::2],
    ]
    for y in layouts:
        expected = not y.is_contiguous() and y.permute(2, 0, 1, 3, 4).is_contiguous()
        assert is_channel_major(y) == expected
    made = empty_channel_major(x, shape)
    assert made.shape == x.shape and made.permute(2, 0, 1, 3, 4).is_contiguous()
    with pytest.raises(ValueError, match="must have rank 5"):
        is_channel_major(x[0])


def test_other_layouts_give_contiguous_results():
    x, scale, bias, shift = _case(7, (2, 3, 4, 5, 6), "cpu")
    channels_last = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    with torch.no_grad():
        y = affine_relu_shift3d(channels_last, scale, bias, shift)
    assert y.is_contiguous()
    assert torch.equal(y, affine_relu_shift3d(x, scale, bias, shift))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_channel_major(device):
    x, scale, bias, shift = _case(3, (2, 3, 4, 5, 6), device)
    args = (channel_major(x), scale, bias, shift, [1, 2, 1], [0, 1, 0], False)
    torch.library.opcheck(torch.ops.rubiks_shift.affine_relu_shift3d.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x, scale, bias, shift = _case(3, (2, 3, 4, 5, 6), device)
    args = (x, scale, bias, shift, [1, 2, 1], [0, 1, 0], False)
    torch.library.opcheck(torch.ops.rubiks_shift.affine_relu_shift3d.default, args)


def test_compile_fullgraph_matches_eager():
    x, scale, bias, shift = _case(4, (2, 3, 4, 6, 6), "cpu")

    def fn(x):
        return affine_relu_shift3d(x * 2, scale, bias, shift, (1, 2, 2)).sum(2)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fn(x))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape,stride,quantize",
    [
        ((2, 8, 6, 20, 19), (1, 1, 1), False),  # frame walk: inner and edge passes
        ((2, 8, 6, 20, 19), (1, 1, 1), True),  # quantized: the elementwise pass
        ((1, 3, 4, 30, 29), (1, 2, 2), True),  # quantized, strided: row walk
        ((16, 1, 6, 20, 19), (1, 1, 1), False),  # one-frame clips: row walk
        ((2, 3, 5, 17, 13), (1, 2, 2), False),  # row walk (strided)
        ((1, 4, 7, 9, 1), (1, 1, 1), False),  # one-column source
        ((3, 2, 40, 7, 7), (1, 1, 1), False),  # short bands, many channels
    ],
)
def test_cuda_matches_composition(dtype, shape, stride, quantize):
    x, scale, bias, shift = _case(5, shape, "cuda", dtype, spread=6.0)
    shift[:, 0] = torch.tensor([1.0, -1.0, 0.0])  # integer shifts: one row tap
    with torch.no_grad():
        y = affine_relu_shift3d(x, scale, bias, shift, stride, quantize=quantize)
        y_cm = affine_relu_shift3d(channel_major(x), scale, bias, shift, stride, quantize=quantize)
    expected = _composed(x, scale, bias, shift, stride, 0, quantize)
    assert y.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-6, torch.float64: 1e-13}
    assert rel_err(y, expected) < tol[dtype]
    assert _is_channel_major(y_cm) and torch.equal(y_cm, y)  # the same arithmetic


_ALL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_PIXEL_SHAPES = (
    (8, 8, 288, 14, 14),  # RubiksNet-Large's 14² and 7² stages
    (8, 8, 576, 7, 7),
    (2, 5, 33, 13, 11),  # odd sizes, many tasks per warp straddling planes
    (1, 12, 3, 4, 14),  # more frames than a task takes: two frame chunks
)
_PIXEL_SHAPES_16BIT = (  # 16-bit storage takes the pixel walk up to 56²
    (2, 8, 144, 28, 28),
    (1, 8, 72, 56, 56),
    (1, 3, 5, 27, 53),  # odd widths: a task's second column outside the plane
)


@pytest.mark.parametrize(
    "dtype,shape",
    [(d, s) for d in _ALL_DTYPES for s in _PIXEL_SHAPES]
    + [(d, s) for d in (torch.float16, torch.bfloat16) for s in _PIXEL_SHAPES_16BIT],
)
@requires_cuda
def test_cuda_pixel_walk_equals_the_frame_walk(dtype, shape):
    """Small planes take the pixel walk: the frame walk's values bit for bit, in both
    layouts, with infinities in x, a NaN shift, shifts out of the clip and integer
    shifts."""
    from dataclasses import replace

    from rubiks_shift import _cuda, _cuda_plan
    from rubiks_shift._cuda_tuning import TUNING

    x, scale, bias, shift = _case(11, shape, "cuda", dtype, spread=6.0)
    x.view(-1)[::97] = float("inf")
    x.view(-1)[5::101] = -float("inf")
    shift[:, 0] = torch.tensor([1.0, -1.0, 0.0])
    shift[:, 1] = torch.tensor([float("nan"), 0.5, 0.5])
    shift[:, 2] = torch.tensor([0.25, 30.0, -0.5])

    def both_layouts():
        with torch.no_grad():
            return (
                affine_relu_shift3d(x, scale, bias, shift),
                affine_relu_shift3d(channel_major(x), scale, bias, shift),
            )

    storage = _cuda._STORAGE[dtype]
    args = (shape, shape, (1, 1, 1), (0, 0, 0), False, False, storage)
    steps = _cuda_plan.gather_plan(*args, affine=True)
    assert [s.name for s in steps] == ["gather_pixels"]
    pixels = both_layouts()
    no_pixel_walk = replace(TUNING, pixel_walk_affine_plane=0, pixel_walk_affine_plane_16bit=0)
    with _cuda.tuned(no_pixel_walk):
        frames = both_layouts()
    assert pixels[0][:, :, 1].isnan().all()
    for got, want in zip(pixels, frames, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert _is_channel_major(pixels[1])


_INTEGER_SHAPES = (
    (8, 8, 288, 14, 14),  # RubiksNet-Large's 14², 7² and 56² stages
    (8, 8, 576, 7, 7),
    (2, 8, 72, 56, 56),
    (2, 5, 33, 13, 11),  # odd sizes: a block's values straddle rows, frames and planes
    (3, 1, 6, 9, 40),  # one-frame clips
)


@pytest.mark.parametrize("dtype,shape", [(d, s) for d in _ALL_DTYPES for s in _INTEGER_SHAPES])
@requires_cuda
def test_cuda_integer_shift_equals_the_gathers(dtype, shape):
    """Quantized shifts at stride 1 run as one elementwise pass (``shift_integer``): the
    gathers' values bit for bit for the forward, its affine form (3-D and 2-D shifts) and
    grad_x, in both layouts, with infinities in x, a NaN shift and shifts out of the
    clip."""
    from dataclasses import replace

    from rubiks_shift import _cuda, _cuda_plan
    from rubiks_shift._cuda_tuning import TUNING

    x, scale, bias, shift = _case(13, shape, "cuda", dtype, spread=6.0)
    x.view(-1)[::97] = float("inf")
    x.view(-1)[5::101] = -float("inf")
    shift[:, 0] = torch.tensor([0.5, -0.5, -1.5])  # ties round half up
    shift[:, 1] = torch.tensor([float("nan"), 0.5, 0.5])
    shift[:, 2] = torch.tensor([0.25, 30.0, -9.0])
    spatial = torch.cat([torch.zeros_like(shift[:1]), shift[1:]])  # a 2-D shift
    gy = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to("cuda", dtype)
    args = ((1, 1, 1), (0, 0, 0), True)

    def every_form():
        out = []
        for clip in (x, channel_major(x)):
            for s in (shift, spatial):
                out.append(_cuda.forward_affine(clip, scale, bias, s, *args))
            out.append(_cuda.forward(clip, shift, *args))
            out.append(_cuda.backward(gy, clip, shift, *args, True, 1.0, True, False)[0])
        return out

    storage = _cuda._STORAGE[dtype]
    for adjoint in (False, True):
        plan = (shape, shape, *args, adjoint, storage)
        assert [s.name for s in _cuda_plan.gather_plan(*plan)] == ["shift_integer"]
    integer = every_form()
    with _cuda.tuned(replace(TUNING, integer_shift=False)):
        gathers = every_form()
    assert integer[0][:, :, 1].isnan().all()
    for got, want in zip(integer, gathers, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert _is_channel_major(integer[4]) and _is_channel_major(integer[7])
