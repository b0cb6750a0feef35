"""Helpers the tests import: fixture location, devices, comparison. A module of its own
name (not a conftest), so that several packages' tests can run in one pytest call."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch


def shared_dir() -> Path:
    """The steering repo's shared/ folder: $RUBIKS_SHARED_DIR, else ../shared beside the repo."""
    env = os.environ.get("RUBIKS_SHARED_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared"


REFERENCE_DIR = shared_dir() / "fixtures" / "reference"


def load_op_cases():
    from safetensors import safe_open

    path = REFERENCE_DIR / "op_cases.safetensors"
    if not path.exists():
        pytest.fail(f"reference fixtures not found at {path}; set RUBIKS_SHARED_DIR")
    with safe_open(str(path), "pt") as f:
        cases = json.loads(f.metadata()["cases"])
        for case in cases:
            tensors = {
                k: f.get_tensor(f"{case['name']}.{k}")
                for k in (
                    "x",
                    "shift",
                    "y",
                    "grad_y",
                    "grad_x",
                    "grad_shift",
                    "grad_shift_normalized",
                )
            }
            yield case, tensors


def channel_major(x: torch.Tensor) -> torch.Tensor:
    """x's values stored channel-major: (C, N, T, H, W) contiguous, seen as (N, T, C, H, W)."""
    return x.permute(2, 0, 1, 3, 4).contiguous().permute(1, 2, 0, 3, 4)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.detach().to("cpu", torch.float64)
    b = b.detach().to("cpu", torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
