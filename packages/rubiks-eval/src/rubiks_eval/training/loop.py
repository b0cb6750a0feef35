"""The training loop: :func:`train` sets a run up (:func:`setup_run`), trains it epoch by
epoch (:func:`train_epoch`, then :func:`end_epoch` with one-clip validation) and
finishes it (:func:`finish`).

Distributed (``torchrun --nproc_per_node N tools/train.py ...``): DistributedDataParallel
over NCCL (CUDA) or gloo (CPU). ``batch_size`` is the global batch, split evenly over the
ranks, so the lr rule and the data order do not depend on the process count. The order of
batches and every sample's augmentation are functions of (seed, epoch, index); each rank
takes a strided slice of the epoch's permutation; dropout draws from a per-rank seed.
Metrics are summed over ranks; rank 0 writes logs and checkpoints.

Shift-gradient normalisation under DDP (docs/spec.md §1.5): each rank's backward normalises its own
shift gradient per channel to a unit vector, then DDP averages the ranks' normalised
vectors. The update of a shift is therefore an average of W unit vectors (length <= 1,
exactly 1 when the ranks agree), not the normalisation of the full batch's gradient; the
reference code behaves the same way. With one process the two coincide.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import save_weights
from ..distributed import DistEnv, barrier, setup_distributed
from ..evaluate import autocast, collate_indexed, evaluate
from ..metrics import Metrics
from ..progress import notices_above
from .aq import (
    anneal_temperature,
    aq_channels,
    aq_epoch_fields,
    aq_report,
    aq_step_fields,
    budget_loss,
)
from .config import TrainConfig, lr_at
from .sampling import EpochSampler, SeededDataset
from .state import JsonlLog, TrainRun, resume_run, save_run_checkpoint, seed_everything

__all__ = ["EpochStats", "end_epoch", "finish", "setup_run", "train", "train_epoch", "validate"]


def train(
    cfg: TrainConfig,
    *,
    model: nn.Module | None = None,
    train_set: Any = None,
    val_set: Any = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) training; returns a summary with the last/best validation top-1.

    Under ``torchrun`` (WORLD_SIZE > 1) this is DistributedDataParallel: ``batch_size`` is
    the global batch, split evenly over the ranks; rank 0 writes logs and checkpoints.
    """
    with setup_distributed(cfg.device) as env:
        run = setup_run(cfg, env, model, train_set, val_set, metadata)
        for epoch in range(run.start_epoch, cfg.epochs):
            stats = train_epoch(run, epoch)
            if stats is None:  # stopped mid-epoch, checkpoint written
                break
            end_epoch(run, epoch, stats)
            if run.stopping:
                break
        return finish(run)


def _reduce_sums(values: list[float], env: DistEnv) -> list[float]:
    """Element-wise sum over ranks (identity in a single process)."""
    if not env.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    torch.distributed.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def _sync_buffers(model: nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's buffers (BN running statistics drift apart between the
    forwards DDP synchronises), so validation and checkpoints see one model."""
    if env.distributed:
        for b in model.buffers():
            torch.distributed.broadcast(b, src=0)


def _per_rank_batch(cfg: TrainConfig, world_size: int) -> int:
    if cfg.batch_size % world_size:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is the global batch; it must be divisible by the "
            f"{world_size} processes"
        )
    return cfg.batch_size // world_size


# -- setup ---------------------------------------------------------------------------


def _datasets(cfg: TrainConfig, train_set: Any, val_set: Any) -> tuple[Any, Any]:
    """The given datasets, the missing ones built from ``cfg`` (validation only if used)."""
    if train_set is None or val_set is None:
        from ..builders import build_dataset

        if train_set is None:
            train_set = build_dataset(cfg, "train")
        if val_set is None and cfg.val_every > 0:
            val_set = build_dataset(cfg, "val")
    return train_set, val_set


def _prepare_model(
    cfg: TrainConfig,
    device: torch.device,
    model: nn.Module | None,
    train_set: Any,
    metadata: dict[str, Any] | None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model (built from ``cfg`` if not given) on ``device`` with the run's memory
    options, and its metadata with the training config added."""
    if model is None:
        from ..builders import build_model

        model, metadata = build_model(cfg, dataset=train_set)
    metadata = dict(metadata or {})
    metadata.setdefault("train_config", json.dumps(dataclasses.asdict(cfg)))
    if cfg.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ValueError(f"{type(model).__name__} has no gradient checkpointing")
        model.set_grad_checkpointing(True)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, metadata


def _optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.amp.GradScaler]:
    """SGD over rubiks-models' parameter groups (each with its ``initial_lr``) and the
    gradient scaler (enabled for AMP on CUDA)."""
    from ..builders import param_groups

    groups = param_groups(model, cfg.weight_decay, cfg.shift_lr_mult)
    for g in groups:
        g["initial_lr"] = cfg.base_lr * g.get("lr_mult", 1.0)
        g["lr"] = g["initial_lr"]
    optimizer = torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    return optimizer, scaler


def setup_run(
    cfg: TrainConfig,
    env: DistEnv,
    model: nn.Module | None,
    train_set: Any,
    val_set: Any,
    metadata: dict[str, Any] | None,
) -> TrainRun:
    """Build (or take) data and model, the optimizer and the data order; resume from the
    run folder's last checkpoint when ``cfg.resume``; log the start of a fresh run."""
    rank_batch = _per_rank_batch(cfg, env.world_size)
    run_dir = Path(cfg.output)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(run_dir / "log.jsonl", enabled=env.is_main)
    seed_everything(cfg.seed)  # the model's initialisation: the same on every rank
    train_set, val_set = _datasets(cfg, train_set, val_set)
    raw, metadata = _prepare_model(cfg, env.device, model, train_set, metadata)
    channels = aq_channels(raw)
    if channels and not 0.0 <= cfg.aq_budget <= 1.0:
        raise ValueError(f"--aq-budget must be a fraction in [0, 1], got {cfg.aq_budget}")
    optimizer, scaler = _optimizer(raw, cfg, env.device)
    model = raw  # what the forward runs; raw is the module whose weights are saved
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        cuda = env.device.type == "cuda"
        model = DistributedDataParallel(raw, device_ids=[env.device] if cuda else None)
    sampler = EpochSampler(
        len(train_set), seed=cfg.seed, shuffle=True, rank=env.rank, world_size=env.world_size
    )
    steps_per_epoch = sampler.per_rank() // rank_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch size {cfg.batch_size} exceeds the {len(train_set)} training videos"
        )
    seeded = SeededDataset(train_set, cfg.seed)
    # dropout & co.: a different stream per rank (augmentation is seeded per sample)
    seed_everything(cfg.seed + 1_000_003 * env.rank)
    run = TrainRun(
        cfg=cfg,
        env=env,
        run_dir=run_dir,
        log=log,
        model=model,
        raw=raw,
        metadata=metadata,
        train_set=train_set,
        val_set=val_set,
        optimizer=optimizer,
        scaler=scaler,
        sampler=sampler,
        seeded=seeded,
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        rank_batch=rank_batch,
        steps_per_epoch=steps_per_epoch,
        aq_channels=channels,
    )
    if cfg.resume:
        resume_run(run)
    if run.start_epoch == 0 and run.start_batch == 0 and run.step == 0:
        log.write(
            event="start",
            config=dataclasses.asdict(cfg),
            train_videos=len(train_set),
            val_videos=len(val_set) if val_set is not None else 0,
            steps_per_epoch=steps_per_epoch,
            device=str(env.device),
            world_size=env.world_size,
            aq_channels=channels,
        )
    return run


# -- one epoch -----------------------------------------------------------------------


@dataclass
class EpochStats:
    """This rank's running sums over an epoch (from its start or a resumed position)."""

    tic: float = field(default_factory=time.perf_counter)
    seen: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    clips: int = 0

    def totals(self, env: DistEnv) -> tuple[float, float, float, float]:
        """(mean loss, top-1 %, seconds so far, clips/s), summed over the ranks."""
        elapsed = time.perf_counter() - self.tic
        n, loss_sum, correct, clips = _reduce_sums(
            [self.seen, self.loss_sum, self.correct, self.clips], env
        )
        n = max(n, 1)
        return loss_sum / n, 100.0 * correct / n, elapsed, clips / max(elapsed, 1e-9)


def _epoch_loader(run: TrainRun, epoch: int, first: int) -> DataLoader:
    """The loader of ``epoch`` from its batch ``first`` on."""
    cfg = run.cfg
    run.sampler.set_epoch(epoch, start=first * run.rank_batch)
    run.seeded.set_epoch(epoch)
    return DataLoader(
        run.seeded,
        batch_size=run.rank_batch,
        sampler=run.sampler,
        num_workers=cfg.workers,
        collate_fn=collate_indexed,
        drop_last=True,
        pin_memory=run.env.device.type == "cuda",
        # own generator: creating the iterator must not draw from the global RNG
        # (that would shift dropout's random stream after a resume)
        generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch),
    )


def _progress_bar(run: TrainRun, epoch: int, first: int) -> Any:
    """A tqdm bar over the epoch's batches on rank 0 with progress on, else None."""
    if not (run.cfg.progress and run.env.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=run.steps_per_epoch,
        initial=first,
        desc=f"epoch {epoch + 1}/{run.cfg.epochs}",
        unit="batch",
        dynamic_ncols=True,
    )


def _set_schedules(run: TrainRun) -> tuple[float, float | None]:
    """Set this step's learning rates (and AQ temperature); returns (lr factor, tau)."""
    factor = lr_at(run.cfg, run.step, run.steps_per_epoch)
    for g in run.optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    tau = None
    if run.aq_channels:
        tau = anneal_temperature(run.raw, run.cfg, run.step, run.total_steps)
    return factor, tau


def _train_step(run: TrainRun, batch: Any, epoch: int, stats: EpochStats) -> None:
    """One optimizer step on ``batch``; adds to ``stats`` and advances ``run.step``."""
    cfg, device = run.cfg, run.env.device
    for f in batch.failures:
        run.log.write(event="unreadable", epoch=epoch, video_id=f["video_id"], reason=f["reason"])
    if batch.clips is None:
        # DDP needs every rank in every backward: a whole batch of unreadable
        # videos is an error, not a silent skip
        raise RuntimeError(
            f"step {run.step}: no readable video in the batch "
            f"({[f['video_id'] for f in batch.failures]})"
        )
    b, v = batch.clips.shape[:2]
    clips = batch.clips.to(device, non_blocking=True).flatten(0, 1)
    labels = batch.labels.to(device)
    with autocast(device, cfg.amp):
        logits = run.model(clips)
    logits = logits.float().reshape(b, v, -1).mean(1)
    loss = run.criterion(logits, labels)
    if run.aq_channels and cfg.aq_penalty:
        loss = loss + budget_loss(run.raw, cfg, run.aq_channels)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {run.step}")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg.clip_grad:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.raw.parameters(), cfg.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    stats.seen += b
    stats.clips += b * v
    stats.loss_sum += float(loss.detach()) * b
    stats.correct += int((logits.argmax(1) == labels).sum())
    run.step += 1


def _log_train(
    run: TrainRun, epoch: int, stats: EpochStats, factor: float, tau: float | None
) -> None:
    """The ``train`` log record: running loss, top-1, lr and clips/s over the ranks."""
    loss, top1, _, rate = stats.totals(run.env)
    record = {
        "epoch": epoch,
        "step": run.step,
        "loss": loss,
        "top1": top1,
        "lr": run.cfg.base_lr * factor,
        "clips_per_s": rate,
    }
    if run.aq_channels:
        record.update(aq_step_fields(run.raw, tau))
    run.log.write(event="train", **record)


def train_epoch(run: TrainRun, epoch: int) -> EpochStats | None:
    """Train ``epoch`` from the run's position; its statistics, or None when
    ``max_steps`` stopped it before its last batch (a checkpoint is written there)."""
    cfg = run.cfg
    first = run.start_batch if epoch == run.start_epoch else 0
    loader = _epoch_loader(run, epoch, first)
    run.model.train()
    bar = _progress_bar(run, epoch, first)
    stats = EpochStats()
    stopped = False
    with notices_above(bar):
        for batch_in_epoch, batch in enumerate(loader, start=first):
            factor, tau = _set_schedules(run)
            _train_step(run, batch, epoch, stats)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{stats.loss_sum / max(stats.seen, 1):.3f}",
                    acc=f"{100.0 * stats.correct / max(stats.seen, 1):.1f}",
                    lr=f"{cfg.base_lr * factor:.2e}",
                    refresh=False,
                )
            if cfg.log_every and run.step % cfg.log_every == 0:
                _log_train(run, epoch, stats, factor, tau)
            last_in_epoch = batch_in_epoch + 1 == run.steps_per_epoch
            if cfg.max_steps is not None and run.step >= cfg.max_steps:
                run.stopping = True
            periodic = cfg.save_every_steps and run.step % cfg.save_every_steps == 0
            if periodic and not last_in_epoch:
                save_run_checkpoint(run, epoch, batch_in_epoch + 1)
            if run.stopping and not last_in_epoch:
                save_run_checkpoint(run, epoch, batch_in_epoch + 1)
                stopped = True
                break
    if bar is not None:
        bar.close()
    return None if stopped else stats


# -- validation, end of epoch, end of run -------------------------------------------


def validate(run: TrainRun, net: nn.Module, desc: str) -> Metrics:
    """One-clip metrics of ``net`` on the run's validation set (sharded over the ranks)."""
    cfg = run.cfg
    return evaluate(
        net,
        run.val_set,
        batch_size=cfg.val_batch_size or run.rank_batch,
        workers=cfg.workers,
        env=run.env,
        amp=cfg.amp,
        progress=cfg.progress and run.env.is_main,
        desc=desc,
    ).metrics


def _validation_due(run: TrainRun, epoch: int) -> bool:
    cfg = run.cfg
    return bool(
        run.val_set is not None
        and cfg.val_every
        and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs)
    )


def _validate_epoch(run: TrainRun, epoch: int, record: dict[str, Any]) -> None:
    """Validate after ``epoch`` into ``record``; a new best top-1 saves ``best.safetensors``."""
    m = validate(run, run.raw, f"val {epoch + 1}")
    record.update(
        val_top1=m.top1,
        val_top5=m.top5,
        val_mean_class=m.mean_class_accuracy,
        val_failed=m.num_failed,
    )
    if m.top1 > run.best:
        run.best = m.top1
        if run.env.is_main:
            save_weights(
                run.run_dir / "best.safetensors",
                run.raw.state_dict(),
                {**run.metadata, "val_top1": m.top1, "epoch": epoch + 1},
            )


def end_epoch(run: TrainRun, epoch: int, stats: EpochStats) -> None:
    """After a complete epoch: the ``epoch`` record (training sums over the ranks, AQ
    fractions, validation when due) logged and printed, then a checkpoint."""
    loss, top1, elapsed, rate = stats.totals(run.env)
    _sync_buffers(run.raw, run.env)
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "step": run.step,
        "train_loss": loss,
        "train_top1": top1,
        "seconds": elapsed,
        "clips_per_s": rate,
    }
    if run.aq_channels:
        record.update(aq_epoch_fields(run.raw, run.cfg, run.step, run.total_steps))
    if _validation_due(run, epoch):
        _validate_epoch(run, epoch, record)
    run.history.append(record)
    run.log.write(event="epoch", **record)
    if run.env.is_main:
        print(json.dumps(record))
    save_run_checkpoint(run, epoch, run.steps_per_epoch)


def finish(run: TrainRun) -> dict[str, Any]:
    """The run's summary; AQ models are hardened and reported; rank 0 saves
    ``final.safetensors``; the ranks meet; the ``end`` record is logged."""
    final = run.run_dir / "final.safetensors"
    summary: dict[str, Any] = {
        "steps": run.step,
        "best_val_top1": run.best,
        "history": run.history,
        "final_weights": str(final),
        "world_size": run.env.world_size,
    }
    if run.aq_channels:
        check = functools.partial(validate, run)
        summary.update(
            aq_report(run.raw, run.cfg, run.val_set, check, run.run_dir, run.metadata, run.env)
        )
    if run.env.is_main:
        save_weights(final, run.raw.state_dict(), run.metadata)
    barrier(run.env)
    run.log.write(event="end", **{k: v for k, v in summary.items() if k != "history"})
    return summary
