"""Training and fine-tuning of RubiksNet (TSM recipe, docs/spec.md §3.5), on one or many processes.

Defaults follow TSM scaled to the batch: SGD momentum 0.9, lr 0.01 per 64 clips, weight
decay 5e-4 (none on shifts, BN and biases, via rubiks-models' parameter groups; shifts get
an lr multiplier), dropout 0.5 before the classifier, gradient-norm clipping at 20, step
schedule x0.1 at 40 % and 80 % of the epochs (TSM: 20 and 40 of 50) or cosine, optional
linear warm-up. One-clip validation after every epoch; atomic, resumable checkpoints
(see :mod:`rubiks_eval.checkpoint`); JSONL logs with throughput (clips/s).

Distributed (``torchrun --nproc_per_node N tools/train.py ...``): DistributedDataParallel
over NCCL (CUDA) or gloo (CPU). ``--batch-size`` is the global batch, split evenly over the
ranks, so the lr rule and the data order do not depend on the process count. The order of
batches and every sample's augmentation are functions of (seed, epoch, index); each rank
takes a strided slice of the epoch's permutation; dropout draws from a per-rank seed.
Metrics are summed over ranks; rank 0 writes logs and checkpoints (with every rank's RNG
state), so a resumed run continues with the batches the uninterrupted run would have seen.

Shift-gradient normalisation under DDP (docs/spec.md §1.5): each rank's backward normalises its own
shift gradient per channel to a unit vector, then DDP averages the ranks' normalised
vectors. The update of a shift is therefore an average of W unit vectors (length <= 1,
exactly 1 when the ranks agree), not the normalisation of the full batch's gradient; the
reference code behaves the same way. With one process the two coincide.

AQ models (``rubiksnet_*_aq``, docs/spec.md §2.3): the attention temperature is annealed
exponentially from ``aq_tau_start`` to ``aq_tau_end`` over the run, and
``aq_penalty x (AQ channels) x max(0, expected shifted fraction - aq_budget)`` is added to
the loss. At the end the model is hardened (integer shifts, one-hot temporal taps), the
measured shifted fraction is reported against the budget, validation runs before and after
hardening, and the hardened weights are saved as ``final_hard.safetensors``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rubiks_models.optim import (
    aq_budget_penalty,
    aq_shifted_fraction,
    aq_temperature,
    set_aq_temperature,
)
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import load_last_checkpoint, save_checkpoint, save_weights
from .distributed import DistEnv, all_gather_objects, barrier, setup_distributed
from .evaluate import autocast, collate_indexed, evaluate
from .progress import notices_above
from .sampling import EpochSampler, SeededDataset

__all__ = ["TrainConfig", "build_parser", "config_from_args", "lr_at", "main", "train"]


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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
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
        if not self.enabled:
            return
        record.setdefault("time", time.time())
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    from .builders import param_groups

    return param_groups(model, cfg.weight_decay, cfg.shift_lr_mult)


def _aq_channels(model: nn.Module) -> int:
    """Number of channels with AQ temporal attention (0 for other models)."""
    from rubiks_models.rubiksnet import TemporalAttentionShift

    return sum(
        int(m.weight.shape[0]) for m in model.modules() if isinstance(m, TemporalAttentionShift)
    )


def _aq_hard_fraction(model: nn.Module) -> float:
    """Fraction of AQ channels whose strongest tap is not the centre one (a non-zero
    integer temporal shift once hardened)."""
    from rubiks_models.rubiksnet import TemporalAttentionShift

    taps = [
        m.attention().argmax(1) for m in model.modules() if isinstance(m, TemporalAttentionShift)
    ]
    return float((torch.cat(taps) != 1).float().mean())


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
        return _train(cfg, env, model, train_set, val_set, metadata)


def _train(
    cfg: TrainConfig,
    env: DistEnv,
    model: nn.Module | None,
    train_set: Any,
    val_set: Any,
    metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    device = env.device
    rank_batch = _per_rank_batch(cfg, env.world_size)
    run_dir = Path(cfg.output)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(run_dir / "log.jsonl", enabled=env.is_main)
    _seed_everything(cfg.seed)  # the model's initialisation: the same on every rank

    if train_set is None or val_set is None:
        from .builders import build_dataset

        if train_set is None:
            train_set = build_dataset(cfg, "train")
        if val_set is None and cfg.val_every > 0:
            val_set = build_dataset(cfg, "val")
    if model is None:
        from .builders import build_model

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
    raw = model  # the module whose weights are saved (DDP wraps it below)
    aq_channels = _aq_channels(raw)
    if aq_channels and not 0.0 <= cfg.aq_budget <= 1.0:
        raise ValueError(f"--aq-budget must be a fraction in [0, 1], got {cfg.aq_budget}")

    groups = _param_groups(raw, cfg)
    for g in groups:
        g["initial_lr"] = cfg.base_lr * g.get("lr_mult", 1.0)
        g["lr"] = g["initial_lr"]
    optimizer = torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(raw, device_ids=[device] if device.type == "cuda" else None)

    sampler = EpochSampler(
        len(train_set), seed=cfg.seed, shuffle=True, rank=env.rank, world_size=env.world_size
    )
    steps_per_epoch = sampler.per_rank() // rank_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch size {cfg.batch_size} exceeds the {len(train_set)} training videos"
        )
    total_steps = steps_per_epoch * cfg.epochs
    seeded = SeededDataset(train_set, cfg.seed)
    # dropout & co.: a different stream per rank (augmentation is seeded per sample)
    _seed_everything(cfg.seed + 1_000_003 * env.rank)

    start_epoch, start_batch, step, best = 0, 0, 0, -1.0
    history: list[dict] = []
    if cfg.resume:
        found = load_last_checkpoint(run_dir)
        if found is not None:
            weights, state, info = found
            raw.load_state_dict(weights)
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            rng = state["rng"]
            rng = rng if isinstance(rng, list) else [rng]
            if len(rng) == env.world_size:
                _set_rng_state(rng[env.rank])
            elif env.is_main:
                print(
                    f"resuming {len(rng)}-process checkpoint with {env.world_size} processes: "
                    "the data order continues exactly; dropout streams are re-seeded"
                )
            start_epoch, start_batch = state["epoch"], state["batch_in_epoch"]
            step, best, history = state["step"], state["best_top1"], state.get("history", [])
            saved_batch = state.get("config", {}).get("batch_size", cfg.batch_size)
            if saved_batch != cfg.batch_size:
                raise ValueError(
                    f"{run_dir} was trained with --batch-size {saved_batch}; resume with the "
                    f"same global batch (or --no-resume / another --output)"
                )
            if start_batch >= steps_per_epoch:
                start_epoch, start_batch = start_epoch + 1, 0
            log.write(
                event="resume",
                epoch=start_epoch,
                batch=start_batch,
                step=step,
                checkpoint=info["weights"],
                world_size=env.world_size,
            )
            if env.is_main:
                print(f"resumed from {info['weights']} (epoch {start_epoch}, step {step})")
    if start_epoch == 0 and start_batch == 0 and step == 0:
        log.write(
            event="start",
            config=dataclasses.asdict(cfg),
            train_videos=len(train_set),
            val_videos=len(val_set) if val_set is not None else 0,
            steps_per_epoch=steps_per_epoch,
            device=str(device),
            world_size=env.world_size,
            aq_channels=aq_channels,
        )

    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def checkpoint(epoch: int, batch_in_epoch: int) -> None:
        rng_states = all_gather_objects(_rng_state(), env)  # collective: every rank
        if env.is_main:
            state = {
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": rng_states,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "step": step,
                "best_top1": best,
                "history": history,
                "config": dataclasses.asdict(cfg),
                "world_size": env.world_size,
            }
            save_checkpoint(
                run_dir,
                epoch=epoch,
                step=step,
                model_state=raw.state_dict(),
                metadata=metadata,
                train_state=state,
                keep=cfg.keep_checkpoints,
            )
        barrier(env)

    def validate(net: nn.Module, desc: str) -> Any:
        return evaluate(
            net,
            val_set,
            batch_size=cfg.val_batch_size or rank_batch,
            workers=cfg.workers,
            env=env,
            amp=cfg.amp,
            progress=cfg.progress and env.is_main,
            desc=desc,
        ).metrics

    stop = False
    batch_in_epoch = -1
    for epoch in range(start_epoch, cfg.epochs):
        first = start_batch if epoch == start_epoch else 0
        sampler.set_epoch(epoch, start=first * rank_batch)
        seeded.set_epoch(epoch)
        loader = DataLoader(
            seeded,
            batch_size=rank_batch,
            sampler=sampler,
            num_workers=cfg.workers,
            collate_fn=collate_indexed,
            drop_last=True,
            pin_memory=device.type == "cuda",
            # own generator: creating the iterator must not draw from the global RNG
            # (that would shift dropout's random stream after a resume)
            generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch),
        )
        model.train()
        bar = None
        if cfg.progress and env.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=steps_per_epoch,
                initial=first,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                unit="batch",
                dynamic_ncols=True,
            )
        tic = time.perf_counter()
        seen, loss_sum, correct, clips_done = 0, 0.0, 0, 0
        with notices_above(bar):
            for batch_in_epoch, batch in enumerate(loader, start=first):
                factor = lr_at(cfg, step, steps_per_epoch)
                for g in optimizer.param_groups:
                    g["lr"] = g["initial_lr"] * factor
                if aq_channels:
                    tau = aq_temperature(step, total_steps, cfg.aq_tau_start, cfg.aq_tau_end)
                    set_aq_temperature(raw, tau)
                for f in batch.failures:
                    log.write(
                        event="unreadable", epoch=epoch, video_id=f["video_id"], reason=f["reason"]
                    )
                if batch.clips is None:
                    # DDP needs every rank in every backward: a whole batch of unreadable
                    # videos is an error, not a silent skip
                    raise RuntimeError(
                        f"step {step}: no readable video in the batch "
                        f"({[f['video_id'] for f in batch.failures]})"
                    )
                b, v = batch.clips.shape[:2]
                clips = batch.clips.to(device, non_blocking=True).flatten(0, 1)
                labels = batch.labels.to(device)
                with autocast(device, cfg.amp):
                    logits = model(clips)
                logits = logits.float().reshape(b, v, -1).mean(1)
                loss = criterion(logits, labels)
                if aq_channels and cfg.aq_penalty:
                    # per-channel weight x channel count: the pull on each channel's taps
                    # does not shrink with the network's width
                    penalty = aq_budget_penalty(raw, cfg.aq_budget)
                    loss = loss + cfg.aq_penalty * aq_channels * penalty
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {step}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(raw.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                seen += b
                clips_done += b * v
                loss_sum += float(loss.detach()) * b
                correct += int((logits.argmax(1) == labels).sum())
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{loss_sum / max(seen, 1):.3f}",
                        acc=f"{100.0 * correct / max(seen, 1):.1f}",
                        lr=f"{cfg.base_lr * factor:.2e}",
                        refresh=False,
                    )
                if cfg.log_every and step % cfg.log_every == 0:
                    elapsed = time.perf_counter() - tic
                    n, l_sum, c_sum, clips_sum = _reduce_sums(
                        [seen, loss_sum, correct, clips_done], env
                    )
                    record = {
                        "epoch": epoch,
                        "step": step,
                        "loss": l_sum / max(n, 1),
                        "top1": 100.0 * c_sum / max(n, 1),
                        "lr": cfg.base_lr * factor,
                        "clips_per_s": clips_sum / max(elapsed, 1e-9),
                    }
                    if aq_channels:
                        record["aq_tau"] = tau
                        record["aq_expected_shifted_fraction"] = float(
                            aq_shifted_fraction(raw).detach()
                        )
                    log.write(event="train", **record)
                last_in_epoch = batch_in_epoch + 1 == steps_per_epoch
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    stop = True
                if cfg.save_every_steps and step % cfg.save_every_steps == 0 and not last_in_epoch:
                    checkpoint(epoch, batch_in_epoch + 1)
                if stop and not last_in_epoch:
                    checkpoint(epoch, batch_in_epoch + 1)
                    break
        if bar is not None:
            bar.close()
        if stop and batch_in_epoch + 1 < steps_per_epoch:
            break
        elapsed = time.perf_counter() - tic
        n, l_sum, c_sum, clips_sum = _reduce_sums([seen, loss_sum, correct, clips_done], env)
        _sync_buffers(raw, env)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": l_sum / max(n, 1),
            "train_top1": 100.0 * c_sum / max(n, 1),
            "seconds": elapsed,
            "clips_per_s": clips_sum / max(elapsed, 1e-9),
        }
        if aq_channels:
            record["aq_tau"] = float(
                aq_temperature(step, total_steps, cfg.aq_tau_start, cfg.aq_tau_end)
            )
            record["aq_expected_shifted_fraction"] = float(aq_shifted_fraction(raw).detach())
            record["aq_hard_shifted_fraction"] = _aq_hard_fraction(raw)
        if (
            val_set is not None
            and cfg.val_every
            and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs)
        ):
            m = validate(raw, f"val {epoch + 1}")
            record.update(
                val_top1=m.top1,
                val_top5=m.top5,
                val_mean_class=m.mean_class_accuracy,
                val_failed=m.num_failed,
            )
            if m.top1 > best:
                best = m.top1
                if env.is_main:
                    save_weights(
                        run_dir / "best.safetensors",
                        raw.state_dict(),
                        {**metadata, "val_top1": m.top1, "epoch": epoch + 1},
                    )
        history.append(record)
        log.write(event="epoch", **record)
        if env.is_main:
            print(json.dumps(record))
        checkpoint(epoch, steps_per_epoch)
        if stop:
            break
    final = run_dir / "final.safetensors"
    summary: dict[str, Any] = {
        "steps": step,
        "best_val_top1": best,
        "history": history,
        "final_weights": str(final),
        "world_size": env.world_size,
    }
    if aq_channels:
        summary.update(_aq_report(raw, cfg, val_set, validate, run_dir, metadata, env))
    if env.is_main:
        save_weights(final, raw.state_dict(), metadata)
    barrier(env)
    log.write(event="end", **{k: v for k, v in summary.items() if k != "history"})
    return summary


def _aq_report(raw, cfg, val_set, validate, run_dir, metadata, env) -> dict[str, Any]:
    """Hardening of an AQ model at the end of training.

    The trained model's shifted fraction (expected, and of its strongest taps) is measured;
    a copy is hardened: channels over the budget are re-centred
    (``rubiks_models.optim.aq_enforce_budget``: the most confident shifted channels stay),
    every shift becomes an integer and every AQ layer a one-hot temporal shift
    (``quantize_model``). Validation top-1 before and after; the hardened weights are saved
    as ``final_hard.safetensors``.
    """
    import copy

    from rubiks_models.deploy import quantize_model
    from rubiks_models.optim import aq_enforce_budget

    report: dict[str, Any] = {
        "aq_budget": cfg.aq_budget,
        "aq_expected_shifted_fraction": float(aq_shifted_fraction(raw).detach()),
        "aq_trained_hard_shifted_fraction": _aq_hard_fraction(raw),
    }
    enforced = copy.deepcopy(raw)
    report["aq_channels_recentred"] = aq_enforce_budget(enforced, cfg.aq_budget)
    report["aq_hard_shifted_fraction"] = _aq_hard_fraction(enforced)
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


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``tools/train.py`` (one per :class:`TrainConfig` field)."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train or fine-tune RubiksNet (TSM recipe; resumable, atomic checkpoints).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "dataset",
        nargs="?",
        default=d.dataset,
        help="dataset name (synthetic, dummy, ssv2, ssv1, kinetics, ucf101, hmdb51)",
    )
    p.add_argument("--output", "-o", default=d.output, help="run directory (logs, checkpoints)")
    p.add_argument("--root-path", default=None, help="videos / frame folders root")
    p.add_argument("--train-list", default=None, help="training list or annotation file")
    p.add_argument("--val-list", default=None, help="validation list or annotation file")
    p.add_argument("--labels-file", default=None, help="class names (e.g. SSv2 labels JSON)")
    p.add_argument(
        "--dummy-videos",
        type=int,
        default=d.dummy_videos,
        help="videos of the 'dummy' dataset (random clips, for overfitting checks)",
    )
    p.add_argument("--num-frames", type=int, default=d.num_frames)
    p.add_argument("--input-size", type=int, default=d.input_size, help="crop size")
    p.add_argument(
        "--scale-size",
        type=int,
        default=None,
        help="short side before cropping (default input_size * 256 / 224)",
    )
    p.add_argument("--arch", default=d.arch, help="timm model name, e.g. rubiksnet_tiny")
    p.add_argument("--num-classes", type=int, default=None, help="default: from the dataset")
    p.add_argument(
        "--pretrained",
        default=None,
        help="initial weights: a checkpoint file (ours or a released .pth.tar) or a timm "
        "name.tag such as rubiksnet_tiny.kinetics; a head of another class count is "
        "replaced (fine-tuning)",
    )
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--shift-lr-mult", type=float, default=d.shift_lr_mult)
    p.add_argument(
        "--freeze-temporal-shift", action="store_true", help="ablation: temporal shifts fixed at 0"
    )
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute stage activations")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument(
        "--aq-budget",
        type=float,
        default=d.aq_budget,
        help="AQ: allowed fraction of temporally shifted channels",
    )
    p.add_argument(
        "--aq-penalty",
        type=float,
        default=d.aq_penalty,
        help="AQ: budget penalty weight per AQ channel (0 disables)",
    )
    p.add_argument("--aq-tau-start", type=float, default=d.aq_tau_start)
    p.add_argument("--aq-tau-end", type=float, default=d.aq_tau_end)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument(
        "--batch-size",
        "-b",
        type=int,
        default=d.batch_size,
        help="global batch (split over torchrun's processes)",
    )
    p.add_argument("--lr", type=float, default=None, help="default 0.01 * batch_size / 64")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", "--wd", type=float, default=d.weight_decay)
    p.add_argument("--schedule", choices=["step", "cosine", "constant"], default=d.schedule)
    p.add_argument(
        "--lr-steps",
        type=float,
        nargs="*",
        default=d.lr_steps,
        help="step epochs (values < 1 are fractions of --epochs)",
    )
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--clip-grad", type=float, default=d.clip_grad, help="0 disables")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--amp", action="store_true", help="fp16 on CUDA, bf16 on CPU")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", "-j", type=int, default=d.workers)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    p.add_argument("--val-every", type=int, default=d.val_every, help="epochs; 0 disables")
    p.add_argument("--val-batch-size", type=int, default=None)
    p.add_argument("--save-every-steps", type=int, default=d.save_every_steps)
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="ignore an existing checkpoint in --output",
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def config_from_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse ``argv`` into a :class:`TrainConfig`; impossible values are refused with
    ``parser.error`` (exit 2, one line) before any work."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    ns = vars(args)
    if ns["clip_grad"] is not None and ns["clip_grad"] <= 0:
        ns["clip_grad"] = None
    return TrainConfig(**ns)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from .argcheck import device_error
    from .builders import default_scale_size

    minimum = {
        "epochs": 1,
        "batch_size": 1,
        "num_frames": 1,
        "input_size": 1,
        "scale_size": 1,
        "num_classes": 1,
        "dummy_videos": 1,
        "workers": 0,
        "val_every": 0,
        "val_batch_size": 1,
        "save_every_steps": 0,
        "keep_checkpoints": 1,
        "log_every": 1,
        "max_steps": 1,
    }
    for name, low in minimum.items():
        value = getattr(args, name)
        if value is not None and value < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    for name in ("lr", "aq_tau_start", "aq_tau_end"):
        value = getattr(args, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            parser.error(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    for name in ("momentum", "weight_decay", "dropout", "label_smoothing", "aq_penalty"):
        value = getattr(args, name)
        if not (value >= 0 and math.isfinite(value)):
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if not 0 <= args.dropout < 1 or not 0 <= args.label_smoothing < 1:
        parser.error("--dropout and --label-smoothing must be in [0, 1)")
    if not 0 <= args.aq_budget <= 1:
        parser.error(f"--aq-budget must be a fraction in [0, 1], got {args.aq_budget}")
    if args.warmup_epochs < 0 or args.warmup_epochs > args.epochs:
        parser.error(f"--warmup-epochs must be in [0, --epochs], got {args.warmup_epochs}")
    scale = args.scale_size or default_scale_size(args.input_size)
    if args.input_size > scale:
        parser.error(
            f"--input-size {args.input_size} is larger than --scale-size {scale} (the short "
            "side after resizing): no validation crop fits"
        )
    error = device_error(args.device)
    if error:
        parser.error(error)
    out = Path(args.output).expanduser()
    if out.exists() and not out.is_dir():
        parser.error(f"--output {out} is a file; it must be a run folder")
    for flag, path in (
        ("--train-list", args.train_list),
        ("--val-list", args.val_list),
        ("--labels-file", args.labels_file),
    ):
        if path and not Path(path).expanduser().is_file():
            parser.error(f"{flag} {path}: no such file")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tools/train.py`` and ``rubiks-train``."""
    cfg = config_from_args(argv)
    try:
        summary = train(cfg)
    except (OSError, ValueError, KeyError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # one summary per run, not one per process
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
