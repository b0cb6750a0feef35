"""AQ models in training (``rubiksnet_*_aq``, docs/spec.md §2.3).

The attention temperature is annealed exponentially from ``aq_tau_start`` to ``aq_tau_end``
over the run, and ``aq_penalty x (AQ channels) x max(0, expected shifted fraction -
aq_budget)`` is added to the loss. At the end the model is hardened (integer shifts,
one-hot temporal taps), the measured shifted fraction is reported against the budget,
validation runs before and after hardening, and the hardened weights are saved as
``final_hard.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rubiks_models.optim import (
    aq_budget_penalty,
    aq_shifted_fraction,
    aq_temperature,
    set_aq_temperature,
)
from torch import nn

from ..checkpoint import save_weights
from ..distributed import DistEnv
from ..metrics import Metrics
from .config import TrainConfig

__all__ = [
    "anneal_temperature",
    "aq_channels",
    "aq_epoch_fields",
    "aq_hard_fraction",
    "aq_report",
    "aq_step_fields",
    "budget_loss",
]


def aq_channels(model: nn.Module) -> int:
    """Number of channels with AQ temporal attention (0 for other models)."""
    from rubiks_models import TemporalAttentionShift

    return sum(
        int(m.weight.shape[0]) for m in model.modules() if isinstance(m, TemporalAttentionShift)
    )


def aq_hard_fraction(model: nn.Module) -> float:
    """Fraction of AQ channels whose strongest tap is not the centre one (a non-zero
    integer temporal shift once hardened)."""
    from rubiks_models import TemporalAttentionShift

    taps = [
        m.attention().argmax(1) for m in model.modules() if isinstance(m, TemporalAttentionShift)
    ]
    return float((torch.cat(taps) != 1).float().mean())


def anneal_temperature(model: nn.Module, cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Set the attention temperature of global ``step`` on ``model``; returns it."""
    tau = aq_temperature(step, total_steps, cfg.aq_tau_start, cfg.aq_tau_end)
    set_aq_temperature(model, tau)
    return tau


def budget_loss(model: nn.Module, cfg: TrainConfig, channels: int) -> torch.Tensor:
    """The budget penalty added to the loss.

    Per-channel weight x channel count: the pull on each channel's taps does not shrink
    with the network's width.
    """
    return cfg.aq_penalty * channels * aq_budget_penalty(model, cfg.aq_budget)


def aq_step_fields(model: nn.Module, tau: float) -> dict[str, float]:
    """AQ fields of a ``train`` log record: temperature and expected shifted fraction."""
    return {
        "aq_tau": tau,
        "aq_expected_shifted_fraction": float(aq_shifted_fraction(model).detach()),
    }


def aq_epoch_fields(
    model: nn.Module, cfg: TrainConfig, step: int, total_steps: int
) -> dict[str, float]:
    """AQ fields of an ``epoch`` record: temperature, expected and hard shifted fractions."""
    return {
        "aq_tau": float(aq_temperature(step, total_steps, cfg.aq_tau_start, cfg.aq_tau_end)),
        "aq_expected_shifted_fraction": float(aq_shifted_fraction(model).detach()),
        "aq_hard_shifted_fraction": aq_hard_fraction(model),
    }


def aq_report(
    raw: nn.Module,
    cfg: TrainConfig,
    val_set: Any,
    validate: Callable[[nn.Module, str], Metrics],
    run_dir: Path,
    metadata: dict[str, Any],
    env: DistEnv,
) -> dict[str, Any]:
    """Hardening of an AQ model at the end of training.

    The trained model's shifted fraction (expected, and of its strongest taps) is measured;
    a copy is hardened: channels over the budget are re-centred
    (``rubiks_models.optim.aq_enforce_budget``: the most confident shifted channels stay),
    every shift becomes an integer and every AQ layer a one-hot temporal shift
    (``quantize_model``). Validation top-1 before and after (``validate(model, desc)``);
    rank 0 saves the hardened weights as ``final_hard.safetensors``.
    """
    import copy

    from rubiks_models.deploy import quantize_model
    from rubiks_models.optim import aq_enforce_budget

    report: dict[str, Any] = {
        "aq_budget": cfg.aq_budget,
        "aq_expected_shifted_fraction": float(aq_shifted_fraction(raw).detach()),
        "aq_trained_hard_shifted_fraction": aq_hard_fraction(raw),
    }
    enforced = copy.deepcopy(raw)
    report["aq_channels_recentred"] = aq_enforce_budget(enforced, cfg.aq_budget)
    report["aq_hard_shifted_fraction"] = aq_hard_fraction(enforced)
    hard = quantize_model(enforced)
    if val_set is not None and cfg.val_every:
        report["val_top1_soft"] = validate(raw, "val soft").top1
        report["val_top1_hard"] = validate(hard, "val hard").top1
    if env.is_main:
        save_weights(
            run_dir / "final_hard.safetensors",
            hard.state_dict(),
            {**metadata, "deploy": True, **report},
        )
        print(json.dumps(report))
    return report
