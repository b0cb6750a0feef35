"""The sample contract: what a dataset item is, and how a batch of them is collated."""

from __future__ import annotations

import operator
from typing import NamedTuple

import torch

__all__ = [
    "Batch",
    "ListFileError",
    "VideoReadError",
    "VideoSample",
    "check_batchable",
    "collate_samples",
]


class VideoSample(NamedTuple):
    """One dataset item.

    ``clip``: float32 tensor (views, T, 3, H, W), normalised; views = clips x crops in
    test mode (clip-major: view ``c * crops + k``), 1 in training mode. None when the video
    could not be read; then ``error`` is a short reason (otherwise None). ``label`` is the
    0-based class (-1 when the annotation has none).
    """

    clip: torch.Tensor | None
    label: int
    video_id: str
    error: str | None = None


class Batch(NamedTuple):
    """A collated list of samples: readable clips stacked, unreadable ones listed.

    ``clips`` (B, V, T, 3, H, W) or None when no sample was readable; ``labels`` and
    ``video_ids`` belong to the stacked clips; ``failures`` are ``(video_id, reason)``.
    """

    clips: torch.Tensor | None
    labels: torch.Tensor
    video_ids: list[str]
    failures: list[tuple[str, str]]


def item_index(index: object, length: int) -> int:
    """``index`` as a position in ``range(length)``, negative indices counting from the end
    as in a list; a non-integer (a slice, a float, a string) is a TypeError and an index
    out of range an IndexError, each saying so."""
    try:
        i = operator.index(index)
    except TypeError:
        raise TypeError(
            f"a dataset index must be an integer, not {type(index).__name__} ({index!r}); "
            "select several videos with torch.utils.data.Subset"
        ) from None
    if not -length <= i < length:
        raise IndexError(f"index {i} out of range for {length} videos")
    return i % length


class VideoReadError(RuntimeError):
    """A video (or one of its frame files) could not be read; raised in ``strict`` mode.

    Re-raised by a DataLoader from a worker process, it is rebuilt from the worker's
    message alone: then ``video_id`` is ``""`` and ``reason`` holds that whole message.
    """

    def __init__(self, video_id: str, reason: str | None = None) -> None:
        if reason is None:  # rebuilt from a message (torch's worker exception wrapper)
            super().__init__(video_id)
            self.video_id, self.reason = "", video_id
            return
        super().__init__(f"video {video_id!r}: {reason}")
        self.video_id = video_id
        self.reason = reason

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.video_id, self.reason))


class ListFileError(ValueError):
    """A list or annotation file is malformed; the message names the file and the line."""

    def __init__(self, path: object, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.detail = message

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.detail))


def check_batchable(clips: list[torch.Tensor], video_ids: list[str]) -> None:
    """Raise a ValueError naming the first video of each shape where ``clips`` (one per
    video id) differ in shape and so cannot be stacked into one batch."""
    first_of_shape: dict[tuple[int, ...], str] = {}
    for c, vid in zip(clips, video_ids, strict=True):
        first_of_shape.setdefault(tuple(c.shape), vid)
    if len(first_of_shape) > 1:
        listed = ", ".join(f"{vid}: {shape}" for shape, vid in first_of_shape.items())
        raise ValueError(
            f"clips of different shapes (views, T, 3, H, W) within one batch ({listed}); "
            "every video must follow one protocol and frame count"
        )


def collate_samples(samples: list[VideoSample]) -> Batch:
    """DataLoader ``collate_fn``: stack readable clips, keep failed samples by name.

    All readable clips must have the same shape (same protocol and frame count).
    """
    clips, labels, ids, failures = [], [], [], []
    for s in samples:
        if s.clip is None:
            failures.append((str(s.video_id), str(s.error or "unreadable")))
            continue
        clips.append(s.clip)
        labels.append(int(s.label))
        ids.append(str(s.video_id))
    check_batchable(clips, ids)
    stacked = torch.stack(clips) if clips else None
    return Batch(stacked, torch.tensor(labels, dtype=torch.long), ids, failures)
