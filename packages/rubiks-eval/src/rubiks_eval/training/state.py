"""What a training run holds and how it persists: RNG states, the JSONL log, the
:class:`TrainRun` (model, optimizer, data order, position) and its checkpoints.

Rank 0 writes checkpoints with every rank's RNG state (see :mod:`rubiks_eval.checkpoint`
for the files), so a resumed run continues with the batches, augmentations and dropout
draws the uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_last_checkpoint, save_checkpoint
from ..distributed import DistEnv, all_gather_objects, barrier
from .config import TrainConfig
from .sampling import EpochSampler, SeededDataset

__all__ = [
    "JsonlLog",
    "TrainRun",
    "resume_run",
    "rng_state",
    "save_run_checkpoint",
    "seed_everything",
    "set_rng_state",
]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """This process's global RNG states (torch CPU and CUDA, ``random``, numpy)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states taken by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class JsonlLog:
    """Append-only JSON-lines log (one object per line, flushed at once)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record: Any) -> None:
        """Append ``record`` with the current ``time`` (unless given); no-op when disabled."""
        if not self.enabled:
            return
        record.setdefault("time", time.time())
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()


@dataclass
class TrainRun:
    """A run in progress: settings, objects and position (what a checkpoint saves).

    ``model`` runs the forward (DistributedDataParallel under ``torchrun``); ``raw`` is
    the module whose weights are saved. ``start_epoch``/``start_batch`` are where the
    loop begins (after a resume), ``step`` counts optimizer steps, ``best`` is the best
    validation top-1 so far, ``stopping`` is set once ``max_steps`` is reached.
    """

    cfg: TrainConfig
    env: DistEnv
    run_dir: Path
    log: JsonlLog
    model: nn.Module
    raw: nn.Module
    metadata: dict[str, Any]
    train_set: Any
    val_set: Any
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: EpochSampler
    seeded: SeededDataset
    criterion: nn.Module
    rank_batch: int
    steps_per_epoch: int
    aq_channels: int
    start_epoch: int = 0
    start_batch: int = 0
    step: int = 0
    best: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    stopping: bool = False

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return self.steps_per_epoch * self.cfg.epochs


def save_run_checkpoint(run: TrainRun, epoch: int, batch_in_epoch: int) -> None:
    """Checkpoint ``run`` at (``epoch``, ``batch_in_epoch``): a collective (every rank
    contributes its RNG state); rank 0 writes, then the ranks meet at a barrier."""
    rng_states = all_gather_objects(rng_state(), run.env)
    if run.env.is_main:
        scaler = run.scaler
        state = {
            "optimizer": run.optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": rng_states,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": run.step,
            "best_top1": run.best,
            "history": run.history,
            "config": dataclasses.asdict(run.cfg),
            "world_size": run.env.world_size,
        }
        save_checkpoint(
            run.run_dir,
            epoch=epoch,
            step=run.step,
            model_state=run.raw.state_dict(),
            metadata=run.metadata,
            train_state=state,
            keep=run.cfg.keep_checkpoints,
        )
    barrier(run.env)


def resume_run(run: TrainRun) -> bool:
    """Load the newest checkpoint of ``run.run_dir`` into ``run``, if there is one.

    Weights, optimizer, grad scaler, this rank's RNG state (when the process count is the
    saved one) and the position are restored; a different global batch is an error.
    Returns whether a checkpoint was loaded.
    """
    found = load_last_checkpoint(run.run_dir)
    if found is None:
        return False
    cfg, env = run.cfg, run.env
    weights, state, info = found
    run.raw.load_state_dict(weights)
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    rng = rng if isinstance(rng, list) else [rng]
    if len(rng) == env.world_size:
        set_rng_state(rng[env.rank])
    elif env.is_main:
        print(
            f"resuming {len(rng)}-process checkpoint with {env.world_size} processes: "
            "the data order continues exactly; dropout streams are re-seeded"
        )
    run.start_epoch, run.start_batch = state["epoch"], state["batch_in_epoch"]
    run.step, run.best = state["step"], state["best_top1"]
    run.history = state.get("history", [])
    saved_batch = state.get("config", {}).get("batch_size", cfg.batch_size)
    if saved_batch != cfg.batch_size:
        raise ValueError(
            f"{run.run_dir} was trained with --batch-size {saved_batch}; resume with the "
            f"same global batch (or --no-resume / another --output)"
        )
    if run.start_batch >= run.steps_per_epoch:
        run.start_epoch, run.start_batch = run.start_epoch + 1, 0
    run.log.write(
        event="resume",
        epoch=run.start_epoch,
        batch=run.start_batch,
        step=run.step,
        checkpoint=info["weights"],
        world_size=env.world_size,
    )
    if env.is_main:
        print(f"resumed from {info['weights']} (epoch {run.start_epoch}, step {run.step})")
    return True
