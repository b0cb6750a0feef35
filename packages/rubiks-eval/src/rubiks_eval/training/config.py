"""A training run's settings (:class:`TrainConfig`) and its learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["TrainConfig", "lr_at"]


@dataclass
class TrainConfig:
    """Everything a run needs; saved in checkpoints and the log."""

    output: str = "runs/train"
    # data (see rubiks_eval.builders.build_dataset)
    dataset: str = "synthetic"
    root_path: str | None = None
    train_list: str | None = None
    val_list: str | None = None
    labels_file: str | None = None
    dummy_videos: int = 32
    num_frames: int = 8
    input_size: int = 224
    scale_size: int | None = None
    # model
    arch: str = "rubiksnet_tiny"
    num_classes: int | None = None
    pretrained: str | None = None
    dropout: float = 0.5
    shift_lr_mult: float = 0.01
    freeze_temporal_shift: bool = False
    grad_checkpointing: bool = False
    channels_last: bool = False
    # AQ models (rubiksnet_*_aq): temperature annealing and the shifted-channel budget
    aq_budget: float = 0.125
    aq_penalty: float = 0.005
    aq_tau_start: float = 2.0
    aq_tau_end: float = 0.01
    # optimisation
    epochs: int = 50
    batch_size: int = 64
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    lr_steps: list[float] = field(default_factory=lambda: [0.4, 0.8])
    warmup_epochs: float = 0.0
    clip_grad: float | None = 20.0
    label_smoothing: float = 0.0
    amp: bool = False
    # run
    seed: int = 0
    workers: int = 4
    device: str | None = None
    val_every: int = 1
    val_batch_size: int | None = None
    save_every_steps: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: bool = True
    max_steps: int | None = None
    progress: bool = True

    @property
    def base_lr(self) -> float:
        """The lr given, else 0.01 per 64 clips (linear scaling)."""
        return self.lr if self.lr is not None else 0.01 * self.batch_size / 64


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning-rate factor (multiplies the base lr) at global ``step``."""
    epoch = step / steps_per_epoch
    total = cfg.epochs
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        start = cfg.warmup_epochs
        progress = (epoch - start) / max(total - start, 1e-9)
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    if cfg.schedule == "step":
        milestones = [m * total if m < 1 else m for m in cfg.lr_steps]
        return 0.1 ** sum(epoch >= m for m in milestones)
    if cfg.schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {cfg.schedule!r} (step, cosine, constant)")
