"""What kind of tracing runs the model's Python code."""

from __future__ import annotations

import torch

__all__ = ["exporting"]


def exporting() -> bool:
    """Whether torch.export is tracing. The flag it sets is read directly:
    ``torch.compiler.is_exporting()`` was True under torch.compile too in torch 2.11."""
    return bool(getattr(torch.compiler, "_is_exporting_flag", False))
