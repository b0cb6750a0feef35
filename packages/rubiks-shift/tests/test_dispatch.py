"""The ops' dispatcher path: device kernels and autograd kernels at their own keys."""

from __future__ import annotations

import pytest
import torch
from shift_testing import DEVICES
from torch.utils._python_dispatch import TorchDispatchMode

import rubiks_shift  # noqa: F401  (registers the ops)

OPS = torch.ops.rubiks_shift


class _Recording(TorchDispatchMode):
    """A dispatch mode: with it active the autograd kernel must redispatch (the direct
    call would skip the mode); it records the ops it sees."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def _clip(device, seed, shape=(2, 3, 4, 5, 6)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).to(device)
    shift = (torch.rand(3, shape[2], generator=g) * 4 - 2).to(device)
    scale = (torch.rand(shape[2], generator=g) + 0.5).to(device)
    bias = (torch.randn(shape[2], generator=g) * 0.1).to(device)
    return x, shift, scale, bias


def _calls(x, shift, scale, bias):
    """Each op through torch.ops, as compiled code calls it."""
    return {
        "shift3d": lambda: OPS.shift3d.default(x, shift, [1, 2, 1], [0, 1, 0], False, True, 1.0),
        "shift3d_backward": lambda: OPS.shift3d_backward.default(
            torch.ones_like(x), x, shift, [1, 1, 1], [0, 0, 0], False, True, 1.0, True, True
        ),
        "affine_relu_shift3d": lambda: OPS.affine_relu_shift3d.default(
            x, scale, bias, shift, [1, 1, 1], [0, 0, 0], False
        ),
        "affine_relu": lambda: OPS.affine_relu.default(x, scale, bias),
    }


@pytest.mark.parametrize("device", DEVICES)
def test_device_keys_hold_the_kernels(device):
    """Each op's kernels at the device's backend and autograd keys are this package's
    (not the custom op's wrappers)."""
    key = {"cpu": "CPU", "cuda": "CUDA"}[device]
    for name in ("shift3d", "shift3d_backward", "affine_relu_shift3d", "affine_relu"):
        table = {
            line.split(":", 1)[0]: line
            for line in torch._C._dispatch_dump(f"rubiks_shift::{name}").splitlines()
        }
        for k in (key, "Autograd" + key):
            assert "_dispatch.py" in table.get(k, ""), (name, k, table)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("context", ["no_grad", "grad", "inference_mode"])
def test_direct_call_equals_redispatch(device, context):
    """Without gradients the autograd kernel calls the device kernel itself; under a
    dispatch mode it redispatches: the results are the same, bit for bit."""
    x, shift, scale, bias = _clip(device, 21)
    ctx = {
        "no_grad": torch.no_grad,
        "grad": torch.enable_grad,
        "inference_mode": torch.inference_mode,
    }[context]
    for name, call in _calls(x, shift, scale, bias).items():
        with ctx():
            direct = call()
            mode = _Recording()
            with mode:
                dispatched = call()
        assert any(name in op for op in mode.seen), (name, mode.seen)
        for a, b in zip(torch.utils._pytree.tree_leaves(direct),
                        torch.utils._pytree.tree_leaves(dispatched), strict=True):  # fmt: skip
            assert not a.requires_grad
            assert torch.equal(a, b), name


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_through_the_registered_op(device):
    """shift3d through torch.ops records its gradient; without grad mode it records none."""
    x0, s0, _, _ = _clip(device, 22)
    x, s = x0.clone().requires_grad_(), s0.clone().requires_grad_()
    with torch.no_grad():
        assert not OPS.shift3d.default(x, s, [1, 1, 1], [0, 0, 0], False, True, 1.0).requires_grad
    y = OPS.shift3d.default(x, s, [1, 1, 1], [0, 0, 0], False, True, 1.0)
    assert y.grad_fn is not None
    gy = torch.randn_like(y)
    y.backward(gy)
    gx, gs = OPS.shift3d_backward.default(
        gy, x0, s0, [1, 1, 1], [0, 0, 0], False, True, 1.0, True, True
    )
    assert torch.equal(x.grad, gx) and torch.equal(s.grad, gs)

    x.grad = None  # only x needs a gradient: the shift's is not computed
    y = OPS.shift3d.default(x, s0, [1, 1, 1], [0, 0, 0], False, True, 1.0)
    y.backward(gy)
    assert torch.equal(x.grad, gx)


@pytest.mark.parametrize("device", DEVICES)
def test_ops_without_gradient_raise_on_backward(device):
    """The inference ops and the backward op run on inputs that require gradients, and a
    backward through their results raises a clear error."""
    x0, shift, scale, bias = _clip(device, 23)
    x = x0.clone().requires_grad_()
    for name, call in _calls(x, shift, scale, bias).items():
        if name == "shift3d":
            continue
        out = torch.utils._pytree.tree_leaves(call())[0]
        assert out.requires_grad, name
        with pytest.raises(RuntimeError, match="has no gradient formula"):
            out.sum().backward()


def test_double_backward_raises():
    x = torch.randn(1, 3, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    s = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    y = OPS.shift3d.default(x, s, [1, 1, 1], [0, 0, 0], False, True, 1.0)
    (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="cannot be differentiated again"):
        gx.sum().backward()
