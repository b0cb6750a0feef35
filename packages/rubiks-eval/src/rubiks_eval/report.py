"""Printing and saving evaluation results: summary text, results JSON, scores, confusion PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .evaluate import EvalResult
from .io import atomic_write, atomic_write_json
from .metrics import confusion_matrix

__all__ = ["format_summary", "format_table", "results_dict", "save_confusion_png", "save_scores"]


def format_summary(result: EvalResult, title: str = "") -> str:
    """Human-readable summary, naming every unreadable video and its reason."""
    m = result.metrics
    lines = []
    if title:
        lines.append(title)
    views = "view" if result.num_views == 1 else "views"
    lines += [
        f"videos listed:        {m.num_videos}",
        f"videos evaluated:     {m.num_evaluated}  ({result.num_views} {views} each)",
        f"unreadable videos:    {m.num_failed}  (counted as misses)",
        f"top-1:                {m.top1:.2f} %  (of {m.num_videos - m.num_unlabelled} "
        f"listed videos{' with a label' if m.num_unlabelled else ''})",
        f"top-5:                {m.top5:.2f} %",
        f"mean class accuracy:  {m.mean_class_accuracy:.2f} %",
    ]
    if m.num_unlabelled:
        lines.append(
            f"without a label:      {m.num_unlabelled} videos (label -1: scored, outside the "
            "accuracies)"
        )
    if m.num_nonfinite:
        lines.append(
            f"non-finite scores:    {m.num_nonfinite} videos with a NaN or infinite score "
            "(counted as misses: the model's outputs overflowed or diverged)"
        )
    if m.num_failed:
        lines.append(
            f"top-1 / top-5 over the {m.num_evaluated} readable videos: "
            f"{m.top1_readable:.2f} / {m.top5_readable:.2f} %"
        )
        lines.append("unreadable videos:")
        lines += [f"  {f['video_id']}: {f['reason']}" for f in m.failures]
    rate = m.num_videos / result.seconds if result.seconds > 0 else float("nan")
    lines.append(
        f"time:                 {result.seconds:.1f} s ({rate:.1f} videos/s, "
        f"{result.world_size} process{'es' if result.world_size > 1 else ''})"
    )
    return "\n".join(lines)


def format_table(rows: list[tuple[str, EvalResult]]) -> str:
    """A Markdown table of several evaluations (e.g. 1-clip and 2-clip)."""
    out = [
        "| protocol | views | videos | unreadable | top-1 % | top-5 % | mean class acc % "
        "| time s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        m = r.metrics
        out.append(
            f"| {name} | {r.num_views} | {m.num_videos} | {m.num_failed} | {m.top1:.2f} | "
            f"{m.top5:.2f} | {m.mean_class_accuracy:.2f} | {r.seconds:.1f} |"
        )
    return "\n".join(out)


def results_dict(result: EvalResult, config: dict[str, Any], per_video: bool = False) -> dict:
    """The JSON document written by ``--output``."""
    doc: dict[str, Any] = {
        "metrics": result.metrics.as_dict(),
        "num_views": result.num_views,
        "seconds": result.seconds,
        "world_size": result.world_size,
        "config": config,
    }
    if per_video:
        preds = result.predictions.tolist()
        top5 = (
            result.scores.topk(min(5, result.scores.shape[1]), dim=1).indices.tolist()
            if result.scores.numel()
            else []
        )
        doc["videos"] = [
            {"video_id": vid, "label": int(lab), "prediction": p, "top5": t}
            for vid, lab, p, t in zip(
                result.video_ids, result.labels.tolist(), preds, top5, strict=True
            )
        ]
    return doc


def save_results(
    path: str | os.PathLike, result: EvalResult, config: dict, per_video: bool
) -> Path:
    """Atomically write the results JSON."""
    return atomic_write_json(path, results_dict(result, config, per_video))


def save_scores(path: str | os.PathLike, result: EvalResult) -> Path:
    """Atomically write per-video scores (mean logits over views) as ``.npz``.

    Arrays: ``video_ids`` (str), ``labels`` (int64), ``scores`` (float32, N x K),
    ``failed_video_ids``, ``failed_reasons``.
    """

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                video_ids=np.array(result.video_ids, dtype=str),
                labels=result.labels.numpy(),
                scores=result.scores.float().numpy(),
                failed_video_ids=np.array([f["video_id"] for f in result.failures], dtype=str),
                failed_reasons=np.array([f["reason"] for f in result.failures], dtype=str),
            )

    return atomic_write(path, write)


def save_confusion_png(
    path: str | os.PathLike, result: EvalResult, class_names: list[str] | None = None
) -> Path:
    """Draw the row-normalised confusion matrix (needs the ``plot`` extra: matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--confusion needs matplotlib: pip install 'rubiks-eval[plot]'") from exc
    k = result.metrics.num_classes
    cm = confusion_matrix(result.predictions, result.labels, k).double()
    norm = cm / cm.sum(dim=1, keepdim=True).clamp_min(1)
    size = min(4 + 0.25 * k, 40)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm.numpy(), cmap="viridis", vmin=0, vmax=1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion (top-1 {result.metrics.top1:.2f} %)")
    if class_names is not None and k <= 60:
        ax.set_xticks(range(k), [str(c) for c in class_names[:k]], rotation=90, fontsize=6)
        ax.set_yticks(range(k), [str(c) for c in class_names[:k]], fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=100)

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)


def confusion_counts(result: EvalResult) -> torch.Tensor:
    """Confusion matrix (true x predicted) of the readable videos."""
    return confusion_matrix(result.predictions, result.labels, result.metrics.num_classes)
