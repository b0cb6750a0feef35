"""The architecture that builds the bundled checkpoint reproduces the original code's
outputs (shared/fixtures/reference, SPEC §4): eval logits in float32, and in train mode
the logits and the gradients (shift gradients normalised) in float64, like the fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rubiks_eval._reference_model import ReferenceLayoutRubiksNet


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
    checkpoint = torch.load(
        path / "orig_tiny_rubiks3d.pth.tar", map_location="cpu", weights_only=False
    )
    io = load_file(str(path / "model_io.safetensors"))
    return checkpoint, {k.removeprefix("tiny_rubiks3d."): v for k, v in io.items()}


def _model(checkpoint, dtype):
    assert checkpoint["variant"] == "rubiks3d" and checkpoint["tier"] == "tiny"
    model = ReferenceLayoutRubiksNet(checkpoint["num_classes"], checkpoint["tier"], dropout=0.0)
    model.load_state_dict(checkpoint["model"], strict=True)
    return model.to(dtype)


def _rel(a, b):
    return float((a.detach().double() - b.double()).norm() / b.double().norm())


def test_eval_logits_float32(reference):
    checkpoint, io = reference
    model = _model(checkpoint, torch.float32).eval()
    with torch.no_grad():
        logits = model(io["video"])
    assert _rel(logits, io["logits_eval"]) < 1e-5


def test_train_logits_and_gradients_float64(reference):
    checkpoint, io = reference
    model = _model(checkpoint, torch.float64).train()
    logits = model(io["video"].double())
    assert _rel(logits, io["logits_train"]) < 1e-5
    torch.nn.functional.cross_entropy(logits, io["target"]).backward()
    params = dict(model.named_parameters())
    grads = {k.removeprefix("grad."): v for k, v in io.items() if k.startswith("grad.")}
    assert any(name.endswith(".shift") for name in grads)
    for name, expected in grads.items():
        assert _rel(params[name].grad, expected) < 1e-4, name
