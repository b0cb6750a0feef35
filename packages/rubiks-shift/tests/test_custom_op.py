"""torch.library integration: opcheck, torch.compile, torch.export, autocast."""

from __future__ import annotations

import pytest
import torch
from shift_testing import DEVICES, channel_major

from rubiks_shift import RubiksShift3d, rubiks_shift3d


def _args(device, dtype=torch.float32, quantize=False):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 4, 5, 6, generator=g, dtype=dtype).to(device).requires_grad_()
    shift = (torch.rand(3, 4, generator=g, dtype=dtype) * 3 - 1.5).to(device).requires_grad_()
    return (x, shift, [1, 2, 1], [0, 1, 0], quantize, True, 1.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("quantize", [False, True])
def test_opcheck_forward(device, quantize):
    torch.library.opcheck(torch.ops.rubiks_shift.shift3d.default, _args(device, quantize=quantize))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward(device):
    x, shift, stride, padding, quantize, norm, factor = _args(device)
    gy = torch.randn(2, 3, 4, 4, 6, device=device)  # the forward output's shape
    args = (gy, x.detach(), shift.detach(), stride, padding, quantize, norm, factor, True, True)
    torch.library.opcheck(torch.ops.rubiks_shift.shift3d_backward.default, args)
    args = (gy, x.detach(), shift.detach(), stride, padding, quantize, norm, factor, True, False)
    torch.library.opcheck(torch.ops.rubiks_shift.shift3d_backward.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_channel_major(device):
    """A channel-major clip: y and grad_x channel-major, as the fake kernels say."""
    x, shift, stride, padding, quantize, norm, factor = _args(device)
    major = channel_major(x.detach()).requires_grad_()
    args = (major, shift, stride, padding, quantize, norm, factor)
    torch.library.opcheck(torch.ops.rubiks_shift.shift3d.default, args)
    gy = channel_major(torch.randn(2, 3, 4, 4, 6, device=device))
    args = (gy, major.detach(), shift.detach(), stride, padding, quantize, norm, factor)
    torch.library.opcheck(torch.ops.rubiks_shift.shift3d_backward.default, (*args, True, True))


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(4, 4, 1)
        self.shift = RubiksShift3d(4, stride=(1, 2, 2))

    def forward(self, x):  # x: (N, T, C, H, W)
        h = self.conv(x.transpose(1, 2)).transpose(1, 2).relu()
        return self.shift(h).mean(dim=(1, 3, 4))


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = _Block()
    x = torch.randn(2, 3, 4, 8, 8)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    grad_compiled = model.shift.shift.grad.clone()
    model.zero_grad()
    model(x).sum().backward()
    torch.testing.assert_close(grad_compiled, model.shift.shift.grad)


def test_export():
    model = _Block().eval()
    x = torch.randn(2, 3, 4, 8, 8)
    exported = torch.export.export(model, (x,))
    assert "rubiks_shift.shift3d" in str(exported.graph)
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_runs_in_low_precision_keeps_shift(device):
    x = torch.randn(2, 3, 4, 6, 6, device=device)
    shift = torch.rand(3, 4, device=device, requires_grad=True)
    dtype = torch.bfloat16
    with torch.autocast(device_type=device, dtype=dtype):
        y = rubiks_shift3d(x, shift)
    assert y.dtype == dtype
    y.float().sum().backward()
    assert shift.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), rubiks_shift3d(x.to(dtype), shift).float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "stride,quantize", [((1, 1, 1), False), ((1, 2, 2), False), ((1, 1, 1), True)]
)
def test_eager_path_equals_registered_op(device, stride, quantize):
    """The eager fast path and torch.ops.rubiks_shift.shift3d are the same computation."""
    from rubiks_shift._ops import EagerShift3d

    g = torch.Generator().manual_seed(12)
    x0 = torch.randn(2, 3, 4, 9, 8, generator=g).to(device)
    s0 = (torch.rand(3, 4, generator=g) * 4 - 2).to(device)
    results = []
    for call in (EagerShift3d.apply, torch.ops.rubiks_shift.shift3d):
        x = x0.clone().requires_grad_()
        s = s0.clone().requires_grad_()
        y = call(x, s, list(stride), [0, 1, 0], quantize, True, 1.0)
        y.backward(torch.ones_like(y))
        results.append((y, x.grad, s.grad))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_unwrapped_apply_equals_function_apply(device):
    """The host-time shortcut past torch's Python ``Function.apply`` wrapper records the
    same graph: same output, same gradients."""
    from rubiks_shift._ops import EagerShift3d

    bound = torch._C._FunctionBase.__dict__["apply"].__get__(None, EagerShift3d)
    unwrap = torch._C._functorch.unwrap_if_dead
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 5, 6, generator=g, dtype=torch.float64).to(device)
    shift = (torch.rand(3, 4, generator=g, dtype=torch.float64) * 4 - 2).to(device)
    gy = torch.randn(2, 3, 4, 5, 6, generator=g, dtype=torch.float64).to(device)
    results = []
    for apply in (EagerShift3d.apply, lambda a, b, *c: bound(unwrap(a), unwrap(b), *c)):
        xa = x.clone().requires_grad_()
        sa = shift.clone().requires_grad_()
        y = apply(xa, sa, [1, 1, 1], [0, 0, 0], False, True, 1.0)
        y.backward(gy)
        results.append((y.detach(), xa.grad, sa.grad))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


class _Ops(torch.nn.Module):
    """Each public op on the input, for export and dynamic compilation."""

    def __init__(self):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.rand(3, 4) * 2 - 1)
        self.register_buffer("scale", torch.rand(4) + 0.5)
        self.register_buffer("bias", torch.randn(4))

    def forward(self, x):
        from rubiks_shift import affine_relu, affine_relu_shift3d

        a = affine_relu(x, self.scale, self.bias)
        b = affine_relu_shift3d(x, self.scale, self.bias, self.shift.detach())
        return rubiks_shift3d(x, self.shift) + a + b


def test_export_with_a_dynamic_batch():
    torch.manual_seed(0)
    model = _Ops()
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        model, (torch.randn(2, 3, 4, 5, 6),), dynamic_shapes=({0: batch},)
    )
    x = torch.randn(3, 3, 4, 5, 6)
    torch.testing.assert_close(program.module()(x), model(x))


def test_compile_dynamic_fullgraph_module():
    """dynamic=True makes the module's float settings symbolic; the checks still trace."""
    torch.manual_seed(0)
    layer = RubiksShift3d(4, normalize_t_factor=0.5)
    compiled = torch.compile(layer, backend="eager", dynamic=True, fullgraph=True)
    x = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    torch.testing.assert_close(compiled(x), layer(x))
    compiled(x).sum().backward()


def test_compiled_ops_compile_once_whatever_runs_eagerly_later():
    """The public ops remember the signatures whose checks passed (eager host time); in
    compiled code they check at trace time instead, so a later eager call of a new
    signature does not invalidate the compiled graph (a guard on that memory would)."""
    from torch._dynamo.testing import CompileCounter

    from rubiks_shift import affine_relu, affine_relu_shift3d

    torch.manual_seed(0)
    model = _Ops()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(2, 3, 4, 5, 6)
    with torch.no_grad():
        expected = model(x)
        for _ in range(2):
            torch.testing.assert_close(compiled(x), expected)
        for channels in (5, 6):  # new signatures, checked eagerly and remembered
            y = torch.randn(1, 2, channels, 3, 3)
            scale, bias = torch.rand(channels) + 0.5, torch.randn(channels)
            affine_relu(y, scale, bias)
            affine_relu_shift3d(y, scale, bias, torch.zeros(3, channels))
            rubiks_shift3d(y, torch.zeros(3, channels))
        torch.testing.assert_close(compiled(x), expected)
    assert counter.frame_count == 1
