"""Modules, initialisation modes and 2-D -> 3-D inflation."""

from __future__ import annotations

import pytest
import torch

from rubiks_shift import RubiksShift2d, RubiksShift3d, group_offsets, init_temporal


def test_uniform_default_init_in_range():
    layer = RubiksShift3d(64)
    assert layer.shift.shape == (3, 64)
    assert layer.shift.abs().max() <= 1 and layer.shift.std() > 0.3


def test_tsm_init():
    row = torch.empty(16)
    init_temporal(row, "tsm")
    assert row.tolist() == [1.0, 1.0] + [-1.0, -1.0] + [0.0] * 12
    noisy = torch.empty(800)
    init_temporal(noisy, "tsm-g0.1", torch.Generator().manual_seed(0))
    clean = torch.empty(800)
    init_temporal(clean, "tsm")
    assert 0.08 < float((noisy - clean).std()) < 0.12


def test_group_offsets_tile_the_neighbourhood():
    offsets = group_offsets(18, 3)
    pairs = {tuple(int(v) for v in offsets[:, c]) for c in range(18)}
    assert pairs == {(dh, dw) for dh in (-1, 0, 1) for dw in (-1, 0, 1)}
    counts = torch.bincount(((offsets[0] + 1) * 3 + (offsets[1] + 1)).long()).tolist()
    assert counts == [2] * 9
    layer = RubiksShift2d(18, init="group3")
    assert torch.equal(layer.shift, offsets.float())


def test_inflation_copies_spatial_rows():
    layer2d = RubiksShift2d(16, stride=2, padding=(1, 0))
    layer3d = RubiksShift3d.from_2d(layer2d, t_init="tsm")
    assert layer3d.stride == (1, 2, 2) and layer3d.padding == (0, 1, 0)
    assert torch.equal(layer3d.shift[1:], layer2d.shift)
    assert layer3d.shift[0, :2].tolist() == [1.0, 1.0]
    x = torch.randn(2, 1, 16, 6, 6)
    # One frame: the inflated layer computes what the 2-D one does (the T row is integer
    # on the tsm channels, so compare those with the zero-T channels only).
    layer3d.shift.data[0] = 0
    torch.testing.assert_close(layer3d(x).squeeze(1), layer2d(x.squeeze(1)))


def test_module_forward_backward_and_repr():
    layer = RubiksShift3d(8, stride=(1, 2, 2), normalize_t_factor="auto", quantize=True)
    x = torch.randn(2, 4, 8, 10, 10, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 4, 8, 5, 5)
    y.square().sum().backward()
    assert x.grad is not None and layer.shift.grad.shape == (3, 8)
    assert "quantize=True" in repr(layer) and "normalize_t_factor=auto" in repr(layer)


def test_state_dict_round_trip():
    a, b = RubiksShift3d(12), RubiksShift3d(12)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.shift, b.shift)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(channels=4, stride=0), ValueError, "stride must be >= 1"),
        (dict(channels=4, padding=-1), ValueError, "padding >= 0"),
        (dict(channels=4, quantize="no"), TypeError, "quantize must be a bool"),
        (dict(channels=4, normalize_grad=1), TypeError, "normalize_grad must be a bool"),
        (dict(channels=True), TypeError, "channels must be an int"),
        (dict(channels=3.5), TypeError, "channels must be an int"),
        (dict(channels=0), ValueError, "channels must be >= 1"),
        (dict(channels=4, t_init="tsm-g1e400"), ValueError, "sigma must be finite"),
    ],
)
def test_constructors_refuse_bad_settings(kwargs, error, message):
    with pytest.raises(error, match=message):
        RubiksShift3d(**kwargs)
    if "t_init" not in kwargs:
        with pytest.raises(error, match=message):
            RubiksShift2d(**kwargs)


def test_from_2d_keeps_the_spatial_init_mode():
    inflated = RubiksShift3d.from_2d(RubiksShift2d(18, init="group3"))
    assert inflated.init == "group3" and inflated.t_init == "tsm"


def test_numpy_scalars_are_taken_as_python_numbers():
    import numpy as np

    layer = RubiksShift3d(np.int64(4), stride=np.int64(2), quantize=np.True_)
    assert layer.channels == 4 and layer.stride == (2, 2, 2) and layer.quantize is True
    layer = RubiksShift3d(4, normalize_t_factor=np.float32(0.5))
    assert layer(torch.randn(1, 2, 4, 6, 6)).shape == (1, 2, 4, 6, 6)
