"""Run a model over a (sharded) dataset and compute video-level metrics.

A dataset item is any object with ``clip`` (float tensor (V, T, 3, H, W), or None when the
video could not be read), ``label`` (int), ``video_id`` (str) and ``error`` (reason or
None), as ``rubiks_data.VideoSample``. The V views (clips x crops) of a video run through
the network independently and the video score is the mean of their raw logits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .distributed import DistEnv, all_gather_objects, shard_indices
from .metrics import Metrics, RunningAccuracy, aggregate_views, compute_metrics
from .progress import notices_above

__all__ = ["EvalResult", "IndexedSubset", "autocast", "collate_indexed", "evaluate"]


class IndexedSubset(Dataset):
    """``dataset`` restricted to ``indices``; items are ``(index, sample)``."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        index = self.indices[i]
        try:
            sample = self.dataset[index]
        except Exception as exc:  # a dataset bug must not hide a video: name it
            sample = _Failed(index, f"{type(exc).__name__}: {exc}")
        return index, sample


@dataclass
class _Failed:
    index: int
    error: str
    clip: None = None
    label: int = -1

    @property
    def video_id(self) -> str:
        return f"<index {self.index}>"


@dataclass
class _Batch:
    indices: list[int]
    clips: torch.Tensor | None
    labels: torch.Tensor
    video_ids: list[str]
    failures: list[dict]


def _label(value: Any) -> int:
    if value is None:
        return -1
    return int(value)


def collate_indexed(items: list[tuple[int, Any]]) -> _Batch:
    """Stack readable clips (B, V, T, 3, H, W); keep unreadable ones as failure records."""
    indices, clips, labels, ids, failures = [], [], [], [], []
    for index, sample in items:
        if sample.clip is None:
            failures.append(
                {
                    "index": index,
                    "video_id": str(sample.video_id),
                    "label": _label(sample.label),
                    "reason": str(sample.error or "unreadable (no reason given)"),
                }
            )
            continue
        clip = sample.clip
        if clip.dim() == 4:  # a single view (T, 3, H, W)
            clip = clip.unsqueeze(0)
        indices.append(index)
        clips.append(clip)
        labels.append(_label(sample.label))
        ids.append(str(sample.video_id))
    from rubiks_data import check_batchable  # here: rubiks_data imports its video readers

    check_batchable(clips, ids)
    stacked = torch.stack(clips) if clips else None
    return _Batch(indices, stacked, torch.tensor(labels, dtype=torch.long), ids, failures)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Mixed precision: float16 on CUDA, bfloat16 on CPU; a no-op when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class EvalResult:
    """Per-video results in dataset order, and the metrics (identical on every rank)."""

    metrics: Metrics
    indices: list[int]
    video_ids: list[str]
    labels: torch.Tensor
    scores: torch.Tensor
    failures: list[dict]
    num_views: int
    seconds: float
    world_size: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def predictions(self) -> torch.Tensor:
        return (
            self.scores.argmax(dim=1) if self.scores.numel() else torch.zeros(0, dtype=torch.long)
        )


def _loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_indexed,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),  # leave the global RNG untouched
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 1,
    workers: int = 0,
    env: DistEnv | None = None,
    amp: bool = False,
    progress: bool = True,
    desc: str = "eval",
) -> EvalResult:
    """Evaluate ``model`` on ``dataset``: every listed video is scored or reported as failed.

    Under torch.distributed (``env.world_size`` > 1) each rank takes a strided shard and
    the per-video results are gathered, so all ranks return the single-process metrics.
    """
    env = env or DistEnv()
    device = env.device
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    n = len(dataset)
    shard = IndexedSubset(dataset, shard_indices(n, env.rank, env.world_size))
    loader = _loader(shard, batch_size, workers, device)
    running = RunningAccuracy()
    indices: list[int] = []
    ids: list[str] = []
    labels: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    failures: list[dict] = []
    num_views = 0
    start = time.perf_counter()
    bar = None
    if progress and env.is_main:
        from tqdm.auto import tqdm

        total = len(shard)
        suffix = f" (rank 0 of {env.world_size})" if env.distributed else ""
        bar = tqdm(total=total, desc=desc + suffix, unit="video", dynamic_ncols=True)
    with notices_above(bar):
        for batch in loader:
            failures.extend(batch.failures)
            if batch.clips is not None:
                b, v = batch.clips.shape[:2]
                if num_views and v != num_views:
                    raise ValueError(
                        f"video {batch.video_ids[0]!r} has {v} views where earlier videos had "
                        f"{num_views}; every video of an evaluation must follow one protocol"
                    )
                num_views = v
                clips = batch.clips.to(device, non_blocking=True).flatten(0, 1)
                with autocast(device, amp):
                    logits = model(clips)
                if logits.dim() != 2 or logits.shape[0] != b * v:
                    raise RuntimeError(
                        f"model returned {tuple(logits.shape)} for {b * v} clips; expected "
                        "(clips, classes) logits"
                    )
                video_scores = aggregate_views(logits.float(), v).cpu()
                indices.extend(batch.indices)
                ids.extend(batch.video_ids)
                labels.append(batch.labels)
                scores.append(video_scores)
                running.update(video_scores, batch.labels, failed=len(batch.failures))
            else:
                no_labels = torch.zeros(0, dtype=torch.long)
                running.update(torch.zeros(0, 1), no_labels, len(batch.failures))
            if bar is not None:
                bar.update(len(batch.indices) + len(batch.failures))
                bar.set_postfix(running.postfix(), refresh=False)
    if bar is not None:
        bar.close()
    local = {
        "indices": indices,
        "video_ids": ids,
        "labels": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        "scores": torch.cat(scores) if scores else None,
        "failures": failures,
        "num_views": num_views,
    }
    parts = all_gather_objects(local, env)
    return _merge(parts, time.perf_counter() - start, env.world_size)


def _merge(parts: list[dict], seconds: float, world_size: int) -> EvalResult:
    indices = [i for p in parts for i in p["indices"]]
    ids = [v for p in parts for v in p["video_ids"]]
    labels = torch.cat([p["labels"] for p in parts])
    score_parts = [p["scores"] for p in parts if p["scores"] is not None]
    num_classes = score_parts[0].shape[1] if score_parts else 0
    scores = torch.cat(score_parts) if score_parts else torch.zeros(0, num_classes)
    order = sorted(range(len(indices)), key=indices.__getitem__)
    perm = torch.tensor(order, dtype=torch.long)
    failures = sorted((f for p in parts for f in p["failures"]), key=lambda f: f["index"])
    failed_labels = torch.tensor([f["label"] for f in failures], dtype=torch.long)
    labels, scores = labels[perm], scores[perm]
    metrics = compute_metrics(scores, labels, failed_labels, failures)
    views = max((p["num_views"] for p in parts), default=0)
    return EvalResult(
        metrics=metrics,
        indices=[indices[i] for i in order],
        video_ids=[ids[i] for i in order],
        labels=labels,
        scores=scores,
        failures=failures,
        num_views=views,
        seconds=seconds,
        world_size=world_size,
    )
