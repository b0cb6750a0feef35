"""Video-level metrics of the TSM protocol (docs/spec.md §3.3).

Every listed video counts: an unreadable video has no score and is a miss for top-1,
top-5 and its class's recall. Scores are per-video logits already averaged over views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

__all__ = [
    "Metrics",
    "RunningAccuracy",
    "aggregate_views",
    "compute_metrics",
    "confusion_matrix",
    "mean_class_accuracy",
    "topk_hits",
]


def aggregate_views(logits: torch.Tensor, num_views: int | None = None) -> torch.Tensor:
    """Video scores as the mean of raw logits over views (no softmax).

    ``logits`` is (B, V, K), or (B * V, K) with ``num_views`` given (views of one video
    contiguous, as produced by flattening a (B, V, T, 3, H, W) batch).
    """
    if logits.dim() == 2:
        if num_views is None:
            raise ValueError("aggregate_views: num_views is required for (B*V, K) logits")
        if num_views < 1:
            raise ValueError(f"aggregate_views: num_views must be >= 1, got {num_views}")
        if logits.shape[0] % num_views:
            raise ValueError(
                f"aggregate_views: {logits.shape[0]} rows are not a multiple of "
                f"num_views={num_views}"
            )
        logits = logits.reshape(-1, num_views, logits.shape[1])
    if logits.dim() != 3:
        raise ValueError(f"aggregate_views: expected (B, V, K) logits, got {tuple(logits.shape)}")
    return logits.float().mean(dim=1)


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict:
    """Boolean hit vectors per k: label among the k highest scores (k clipped to #classes).

    Ties are broken by ``torch.topk`` (deterministic for a given input on CPU). A row with
    a NaN or infinite score hits nothing (``topk`` would rank a NaN first).
    """
    if scores.dim() != 2 or labels.dim() != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(
            f"topk_hits: scores (N, K) and labels (N,) expected, got "
            f"{tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.long()
    out = {}
    if scores.shape[0] == 0:
        return {k: torch.zeros(0, dtype=torch.bool) for k in ks}
    maxk = min(max(ks), scores.shape[1])
    top = scores.topk(maxk, dim=1).indices
    match = (top == labels[:, None]) & torch.isfinite(scores).all(dim=1, keepdim=True)
    for k in ks:
        out[k] = match[:, : min(k, maxk)].any(dim=1)
    return out


def confusion_matrix(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = true class, columns = predicted.

    Entries with a prediction or label of -1 (no score / no label) are not counted.
    """
    labels = labels.long()
    predictions = predictions.long()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    ok = (predictions >= 0) & (predictions < num_classes) & (labels >= 0) & (labels < num_classes)
    if ok.any():
        flat = labels[ok] * num_classes + predictions[ok]
        cm += torch.bincount(flat, minlength=num_classes * num_classes).reshape(
            num_classes, num_classes
        )
    return cm


def mean_class_accuracy(correct: torch.Tensor, labels: torch.Tensor) -> float:
    """Unweighted mean over classes present in ``labels`` of per-class recall (in %)."""
    labels = labels.long()
    classes = labels[labels >= 0].unique()
    if classes.numel() == 0:
        return float("nan")
    recalls = [correct[labels == c].double().mean() for c in classes]
    return float(torch.stack(recalls).mean() * 100.0)


@dataclass
class Metrics:
    """Summary of one evaluation. Percentages use the listed videos with a label (all of
    ``num_videos`` but ``num_unlabelled``) as denominator."""

    num_videos: int
    num_evaluated: int
    top1: float
    top5: float
    mean_class_accuracy: float
    top1_readable: float
    top5_readable: float
    num_classes: int
    failures: list[dict] = field(default_factory=list)
    num_nonfinite: int = 0  # evaluated videos with a NaN or infinite score (misses)
    num_unlabelled: int = 0  # listed videos of label -1, outside the accuracies

    @property
    def num_failed(self) -> int:
        return len(self.failures)

    def as_dict(self) -> dict:
        return {
            "num_videos": self.num_videos,
            "num_evaluated": self.num_evaluated,
            "num_failed": self.num_failed,
            "top1": self.top1,
            "top5": self.top5,
            "mean_class_accuracy": self.mean_class_accuracy,
            "top1_readable": self.top1_readable,
            "top5_readable": self.top5_readable,
            "num_classes": self.num_classes,
            "num_nonfinite": self.num_nonfinite,
            "num_unlabelled": self.num_unlabelled,
            "denominator": "all listed videos with a label; unreadable videos and "
            "non-finite scores count as misses",
            "failures": self.failures,
        }


def _pct(hits: torch.Tensor, n: int) -> float:
    return float(hits.sum().item() * 100.0 / n) if n else float("nan")


def compute_metrics(
    scores: torch.Tensor,
    labels: torch.Tensor,
    failed_labels: torch.Tensor | None = None,
    failures: list[dict] | None = None,
) -> Metrics:
    """Metrics over evaluated videos (``scores`` (N, K), ``labels`` (N,)) plus failed ones.

    ``failed_labels`` are the labels of unreadable videos (they count as misses);
    ``failures`` their descriptions (video id, reason) carried into the result. A video
    whose label is -1 (unknown: an unlabelled test split, or a failure before its label
    was read) is outside the accuracies, read or not (``num_unlabelled``).
    """
    failures = list(failures or [])
    if failed_labels is None:
        failed_labels = torch.zeros(0, dtype=torch.long)
    failed_labels = failed_labels.long()
    if len(failures) and len(failures) != failed_labels.numel():
        raise ValueError("compute_metrics: failures and failed_labels differ in length")
    labels = labels.long()
    num_classes = int(scores.shape[1]) if scores.dim() == 2 and scores.shape[1] else 0
    n_eval = int(labels.numel())
    n_listed = n_eval + int(failed_labels.numel())
    known, failed_known = labels >= 0, failed_labels >= 0
    num_unlabelled = n_listed - int(known.sum()) - int(failed_known.sum())
    hits = topk_hits(scores[known] if scores.dim() == 2 else scores, labels[known], (1, 5))
    miss = torch.zeros(int(failed_known.sum()), dtype=torch.bool)
    top1_all = torch.cat([hits[1], miss])
    top5_all = torch.cat([hits[5], miss])
    all_labels = torch.cat([labels[known], failed_labels[failed_known]])
    n_scored, n_read = int(all_labels.numel()), int(known.sum())
    return Metrics(
        num_videos=n_listed,
        num_evaluated=n_eval,
        top1=_pct(top1_all, n_scored),
        top5=_pct(top5_all, n_scored),
        mean_class_accuracy=mean_class_accuracy(top1_all, all_labels),
        top1_readable=_pct(hits[1], n_read),
        top5_readable=_pct(hits[5], n_read),
        num_classes=num_classes,
        failures=failures,
        num_unlabelled=num_unlabelled,
        num_nonfinite=int((~torch.isfinite(scores)).any(dim=1).sum()) if scores.dim() == 2 else 0,
    )


class RunningAccuracy:
    """Running top-1 / top-5 counts for a progress bar (unreadable videos count as misses)."""

    def __init__(self) -> None:
        self.n = 0
        self.top1 = 0
        self.top5 = 0

    def update(self, scores: torch.Tensor, labels: torch.Tensor, failed: int = 0) -> None:
        hits = topk_hits(scores.detach().float().cpu(), labels.cpu(), (1, 5))
        self.n += int(labels.numel()) + failed
        self.top1 += int(hits[1].sum())
        self.top5 += int(hits[5].sum())

    def postfix(self) -> dict:
        if not self.n:
            return {"top1": "-", "top5": "-"}
        return {
            "top1": f"{100.0 * self.top1 / self.n:.2f}",
            "top5": f"{100.0 * self.top5 / self.n:.2f}",
        }
