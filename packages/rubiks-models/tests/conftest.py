"""Shared helpers: the reference fixtures live in ../shared beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]


def shared_dir() -> Path:
    return Path(os.environ.get("RUBIKS_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def fixtures() -> Path:
    path = shared_dir() / "fixtures" / "reference"
    if not (path / "orig_tiny_rubiks3d.pth.tar").is_file():
        pytest.skip(f"reference fixtures not found in {path}")
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """``tmp_path / "m.safetensors"``: a random three-class tiny RubiksNet (save_weights)."""
    from rubiks_models import RubiksNet
    from rubiks_models.weights import save_weights

    path = tmp_path / "m.safetensors"
    save_weights(RubiksNet("tiny", 3), path)
    return path


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
