"""torch.func and forward-mode AD: what the ops support, and a clear refusal for the rest
(the ops have reverse-mode formulas only; a dropped tangent would be a silent zero)."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from rubiks_shift import affine_relu_shift3d, rubiks_shift3d
from rubiks_shift.modules import RubiksShift3d

FORWARD_AD = "forward-mode AD .* is not supported"
FUNC = r"torch.func transforms .* not supported"


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 3, 4, 4, dtype=torch.float64, generator=g)
    shift = torch.randn(3, 3, dtype=torch.float64, generator=g)
    return x, shift


@pytest.mark.parametrize("wrt", ["x", "shift"])
def test_forward_mode_tangents_are_refused_not_dropped(wrt):
    x, shift = _inputs()

    def f(a, s):
        return rubiks_shift3d(a, s)

    primals, tangents = (x, shift), (torch.randn_like(x), torch.randn_like(shift))
    argnum = 0 if wrt == "x" else 1
    with pytest.raises(NotImplementedError, match=FORWARD_AD):
        torch.func.jvp(
            lambda v: f(*(v if i == argnum else p for i, p in enumerate(primals))),
            (primals[argnum],),
            (tangents[argnum],),
        )
    with pytest.raises(NotImplementedError, match=FORWARD_AD):
        torch.func.jacfwd(lambda v: f(v, shift) if wrt == "x" else f(x, v))(primals[argnum])
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match=FORWARD_AD):
        dual = fwAD.make_dual(primals[argnum], tangents[argnum])
        f(dual, shift) if wrt == "x" else f(x, dual)


def test_inference_op_refuses_tangents_too():
    x, shift = _inputs()
    scale, bias = torch.rand(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    with fwAD.dual_level(), pytest.raises(NotImplementedError, match=FORWARD_AD):
        affine_relu_shift3d(fwAD.make_dual(x, torch.randn_like(x)), scale, bias, shift)


def test_an_open_dual_level_leaves_plain_calls_alone():
    x, shift = _inputs()
    layer = RubiksShift3d(3).double()
    with fwAD.dual_level():
        torch.testing.assert_close(rubiks_shift3d(x, shift), rubiks_shift3d(x.clone(), shift))
        y = layer(x.requires_grad_())
    y.sum().backward()  # reverse mode still records the node inside the level
    assert x.grad is not None and layer.shift.grad is not None


def test_func_grad_is_refused_with_the_reason():
    x, shift = _inputs()
    with pytest.raises(NotImplementedError, match=FUNC):
        torch.func.grad(lambda a: rubiks_shift3d(a, shift).sum())(x)
    with pytest.raises(NotImplementedError, match=FUNC):
        torch.func.grad(lambda s: rubiks_shift3d(x, s).sum())(shift)


def test_vmap_without_gradients_maps_the_op():
    x, shift = _inputs()
    batch = torch.stack([x, 2 * x])
    out = torch.func.vmap(lambda a: rubiks_shift3d(a, shift))(batch)
    torch.testing.assert_close(out, torch.stack([rubiks_shift3d(a, shift) for a in batch]))
