"""rubiks-eval's loading path reproduces the original code's network (shared/fixtures/
reference, docs/spec.md §4): the reference ``.pth.tar`` goes through ``builders.load_model``
(rubiks-models underneath) and gives the original eval logits in float32, and in train
mode the original logits and gradients (shift gradients normalised) in float64."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rubiks_eval.builders import load_model


def _reference_dir() -> Path:
    env = os.environ.get("RUBIKS_SHARED_DIR")
    shared = Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared"
    path = shared / "fixtures" / "reference"
    if not path.exists():
        pytest.fail(f"reference fixtures not found at {path}; set RUBIKS_SHARED_DIR")
    return path


@pytest.fixture(scope="module")
def reference():
    from safetensors.torch import load_file

    path = _reference_dir()
    io = load_file(str(path / "model_io.safetensors"))
    io = {k.removeprefix("tiny_rubiks3d."): v for k, v in io.items()}
    return path / "orig_tiny_rubiks3d.pth.tar", io


def _rel(a, b):
    return float((a.detach().double() - b.double()).norm() / b.double().norm())


def test_loads_the_reference_checkpoint(reference):
    ckpt, io = reference
    _, info = load_model(str(ckpt), num_frames=io["video"].shape[1])
    assert info["arch"] == "rubiksnet_tiny" and info["source"] == "checkpoint"
    assert info["num_classes"] == io["logits_eval"].shape[1]


def test_eval_logits_float32(reference):
    ckpt, io = reference
    model, _ = load_model(str(ckpt), num_frames=io["video"].shape[1])
    with torch.no_grad():
        logits = model.eval()(io["video"])
    assert _rel(logits, io["logits_eval"]) < 1e-5


def test_train_logits_and_gradients_float64(reference):
    from rubiks_models.rubiksnet import convert_reference_key

    ckpt, io = reference
    model, _ = load_model(str(ckpt), num_frames=io["video"].shape[1])
    model = model.double().train()
    logits = model(io["video"].double())
    assert _rel(logits, io["logits_train"]) < 1e-5
    torch.nn.functional.cross_entropy(logits, io["target"]).backward()
    params = dict(model.named_parameters())
    grads = {k.removeprefix("grad."): v for k, v in io.items() if k.startswith("grad.")}
    assert any(name.endswith(".shift") for name in grads)
    for name, expected in grads.items():
        ours = convert_reference_key(name)
        assert _rel(params[ours].grad, expected) < 1e-4, name


def test_unknown_timm_weights_fail_with_instructions():
    with pytest.raises(FileNotFoundError, match="rubiks-convert"):
        load_model("rubiksnet_large.ssv2")
    with pytest.raises(FileNotFoundError, match="not a RubiksNet timm name"):
        load_model("no_such_model_or_file")


def test_aq_checkpoint_loads_through_eval(tmp_path):
    import timm
    from rubiks_models.weights import save_weights

    torch.manual_seed(0)
    src = timm.create_model("rubiksnet_tiny_aq", num_classes=7, num_frames=4).eval()
    save_weights(src, tmp_path / "aq.safetensors")
    model, info = load_model(str(tmp_path / "aq.safetensors"), num_frames=4)
    assert info["arch"] == "rubiksnet_tiny_aq" and info["num_classes"] == 7
    clip = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(clip), src(clip), rtol=0, atol=0)
