"""Shared helpers: the reference fixtures live in ../shared beside the checkout."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

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


@pytest.fixture
def benchmark_script():
    """``load(name)``: the script ``benchmarks/<name>.py`` as a module (its folder put on
    ``sys.path`` first: the scripts import the ones beside them)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str) -> ModuleType:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_compile_caches():
    """Each test starts from empty torch.compile caches. Dynamo caches compiled code per
    code object (``FusedRubiksNet.forward``, ``RubiksNet.forward``): every model instance,
    backend and mode an earlier test compiled counts toward its recompile limit (8), and
    past it a ``fullgraph=True`` compile fails."""
    yield
    torch._dynamo.reset()
