"""Video datasets returning :class:`~rubiks_data.VideoSample` items.

- :class:`FrameFolderDataset`: TSM frame folders ``<root>/<video_id>/<template>`` with a
  list file ``<video_id> <num_frames> <label>``.
- :class:`VideoFileDataset`: encoded videos decoded directly with PyAV (SSv2 JSON
  annotations via :func:`ssv2_video_dataset`, or a list/CSV of ``(path, label)``).

In test mode items are deterministic functions of the index. In training mode the random
draws (frame offsets, crop) come from ``numpy.random.default_rng((seed, epoch, index))``
when ``seed`` is set (call :meth:`ClipDataset.set_epoch`), else from one draw of torch's
global RNG (so a caller that seeds torch per item controls them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .lists import (
    VideoRecord,
    read_class_names,
    read_frame_list,
    read_ssv2_annotations,
    read_ssv2_labels,
    read_video_list,
)
from .sample import VideoReadError, VideoSample, item_index
from .transforms import TestTransform, TrainTransform, get_protocol
from .video import DecodeError, VideoReader

__all__ = [
    "ClipDataset",
    "FrameFolderDataset",
    "VideoFileDataset",
    "check_template",
    "ssv2_video_dataset",
    "video_list_dataset",
]

Pipeline = TestTransform | TrainTransform


def check_template(template: str) -> str:
    """Validate a frame-file template (``{:06d}.jpg`` or ``%06d.jpg``); returns it."""
    try:
        a, b = _format(template, 1), _format(template, 2)
    except (ValueError, IndexError, KeyError, TypeError) as err:
        raise ValueError(f"bad frame template {template!r}: {err}") from None
    if a == b:
        raise ValueError(f"bad frame template {template!r}: it has no frame-number field")
    if os.sep in a and Path(a).is_absolute():
        raise ValueError(f"bad frame template {template!r}: must be a relative file name")
    return template


def _format(template: str, number: int) -> str:
    if "{" not in template and "%" in template:
        return template % number
    return template.format(number)


class ClipDataset(torch.utils.data.Dataset):
    """Base class: records + a clip pipeline; subclasses load frames.

    ``mode``: ``"test"`` (a protocol, default ``1clip``) or ``"train"`` (TSM augmentation).
    ``transform`` overrides the pipeline built from ``protocol``/``crop_size``/``scale_size``.
    ``strict=True`` raises :class:`~rubiks_data.VideoReadError` instead of returning a
    sample whose clip is None.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        num_segments: int = 8,
        mode: str = "test",
        protocol: str | TestTransform = "1clip",
        crop_size: int = 224,
        scale_size: int | None = 256,
        transform: Pipeline | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        strict: bool = False,
        seed: int | None = None,
    ) -> None:
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        self.records = list(records)
        self.num_segments = num_segments
        self.mode = mode
        if transform is None:
            if mode == "train":
                transform = TrainTransform(input_size=crop_size, scale_size=scale_size)
            else:
                transform = get_protocol(protocol, crop_size, scale_size)
        self.transform = transform
        self.class_names = list(class_names) if class_names is not None else None
        if self.class_names is not None and len(set(self.class_names)) < len(self.class_names):
            again = [c for c in dict.fromkeys(self.class_names) if self.class_names.count(c) > 1]
            raise ValueError(f"class names given more than once: {again}")
        if self.class_names is not None and num_classes not in (None, len(self.class_names)):
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        if num_classes is None:
            if self.class_names is not None:
                num_classes = len(self.class_names)
            else:
                num_classes = max((r.label for r in self.records), default=-1) + 1
        self.num_classes = int(num_classes)
        self.strict = strict
        self.seed = seed
        self.epoch = 0

    @property
    def video_ids(self) -> list[str]:
        """Ids of the listed videos, in dataset order."""
        return [r.video_id for r in self.records]

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def num_views(self) -> int:
        return self.transform.num_views

    def set_epoch(self, epoch: int) -> None:
        """Select the training draws of this epoch (only used when ``seed`` is set)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng((self.seed, self.epoch, index))
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def __getitem__(self, index: int) -> VideoSample:
        index = item_index(index, len(self))
        rec = self.records[index]
        rng = self._rng(index) if self.mode == "train" else None
        try:
            clip = self._load(rec, rng)
        except DecodeError as err:
            if self.strict:
                raise VideoReadError(rec.video_id, str(err)) from None
            return VideoSample(None, rec.label, rec.video_id, str(err))
        return VideoSample(clip, rec.label, rec.video_id, None)

    def _load(self, rec: VideoRecord, rng: np.random.Generator | None) -> torch.Tensor:
        frames = self._read(rec, lambda n: self.transform.indices(n, self.num_segments, rng))
        try:
            return self.transform(frames, self.num_segments, rng)
        except ValueError as err:
            raise DecodeError(f"cannot transform frames ({err})") from None

    def _read(self, rec: VideoRecord, pick) -> list[Image.Image]:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} videos, {self.num_classes} classes, "
            f"mode={self.mode}, frames={self.num_segments}, transform={self.transform})"
        )


class FrameFolderDataset(ClipDataset):
    """Frame folders: frame k (1-based) of a video is ``<root>/<video_id>/<template % k>``.

    ``list_file`` lines are ``<video_id> <num_frames> <label>`` (labels checked against
    ``num_classes`` when given). ``class_names`` may be a list or a file (JSON or lines).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        list_file: str | os.PathLike,
        template: str = "{:06d}.jpg",
        *,
        num_classes: int | None = None,
        class_names: Sequence[str] | str | os.PathLike | None = None,
        **kwargs,
    ) -> None:
        self.root = Path(root)
        self.template = check_template(template)
        self.list_file = Path(list_file)
        if isinstance(class_names, (str, os.PathLike)):
            class_names = read_class_names(class_names)
        if num_classes is None and class_names is not None:
            num_classes = len(class_names)
        records = read_frame_list(self.list_file, num_classes)
        super().__init__(records, num_classes=num_classes, class_names=class_names, **kwargs)

    def frame_path(self, video_id: str, index: int) -> Path:
        """File of the 0-based frame ``index``."""
        return self.root / video_id / _format(self.template, index + 1)

    def _read(self, rec: VideoRecord, pick) -> list[Image.Image]:
        if not rec.num_frames:
            raise DecodeError("zero frames")
        indices = pick(rec.num_frames)
        loaded: dict[int, Image.Image] = {}
        for i in indices:
            if i not in loaded:
                loaded[i] = _load_image(self.frame_path(rec.video_id, i))
        return [loaded[i] for i in indices]


def _load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DecodeError(f"missing frame file {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DecodeError(f"unreadable frame file {path} ({err})") from None


class VideoFileDataset(ClipDataset):
    """Encoded videos (any container/codec FFmpeg reads), decoded with PyAV.

    Each record's ``path`` is absolute or relative to ``root``. ``decode_threads`` is the
    number of decoder threads per video (1 suits DataLoader workers; 0 = automatic).
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        records: Sequence[VideoRecord],
        *,
        decode_threads: int = 1,
        truncation_tolerance: float = 0.05,
        **kwargs,
    ) -> None:
        self.root = Path(root) if root is not None else None
        self.decode_threads = decode_threads
        self.truncation_tolerance = truncation_tolerance
        super().__init__(records, **kwargs)

    def video_path(self, rec: VideoRecord) -> Path:
        path = Path(rec.path if rec.path is not None else rec.video_id)
        return path if path.is_absolute() or self.root is None else self.root / path

    def _read(self, rec: VideoRecord, pick) -> list[Image.Image]:
        with VideoReader(
            self.video_path(rec), self.decode_threads, self.truncation_tolerance
        ) as reader:
            return reader.frames(pick(reader.num_frames))


def ssv2_video_dataset(
    video_root: str | os.PathLike,
    annotation_file: str | os.PathLike,
    labels_file: str | os.PathLike,
    *,
    extensions: Sequence[str] = (".webm", ".mp4"),
    allow_unlabeled: bool = False,
    **kwargs,
) -> VideoFileDataset:
    """Something-Something-V2 from its own JSON annotations; videos ``<root>/<id>.webm``.

    For each id the first existing ``<id><ext>`` of ``extensions`` is used (a missing video
    is reported when loaded, under the first extension's name).
    """
    video_root = Path(video_root)
    labels = read_ssv2_labels(labels_file)
    names = sorted(labels, key=labels.__getitem__)
    records = []
    for rec in read_ssv2_annotations(annotation_file, labels, allow_unlabeled):
        candidates = [video_root / f"{rec.video_id}{ext}" for ext in extensions]
        path = next((p for p in candidates if p.is_file()), candidates[0])
        # relative to video_root, which the dataset joins in front (a relative root
        # must not be joined twice)
        records.append(VideoRecord(rec.video_id, rec.label, path=path.name))
    kwargs.setdefault("num_classes", len(names))
    return VideoFileDataset(video_root, records, class_names=names, **kwargs)


def video_list_dataset(
    list_file: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | str | os.PathLike | None = None,
    **kwargs,
) -> VideoFileDataset:
    """Videos from a list (``<path> <label>`` lines) or CSV (``path,label``); relative paths
    are resolved against ``root`` (default: the list file's folder)."""
    list_file = Path(list_file)
    if isinstance(class_names, (str, os.PathLike)):
        class_names = read_class_names(class_names)
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    records = read_video_list(list_file, num_classes)
    root = Path(root) if root is not None else list_file.parent
    return VideoFileDataset(
        root, records, num_classes=num_classes, class_names=class_names, **kwargs
    )
