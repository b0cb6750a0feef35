"""Named datasets and the :func:`build_dataset` factory."""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from pathlib import Path

from .datasets import (
    ClipDataset,
    FrameFolderDataset,
    ssv2_video_dataset,
    video_list_dataset,
)
from .dummy import RandomVideoDataset

__all__ = ["DATASETS", "DatasetInfo", "build_dataset", "find_ssv2_annotations"]


@dataclass(frozen=True)
class DatasetInfo:
    """Frame template and class count of a named frame-folder dataset (docs/spec.md §3.1)."""

    template: str
    num_classes: int


DATASETS: dict[str, DatasetInfo] = {
    "somethingv2": DatasetInfo("{:06d}.jpg", 174),
    "somethingv1": DatasetInfo("{:05d}.jpg", 174),
    "kinetics": DatasetInfo("img_{:05d}.jpg", 400),
    "ucf101": DatasetInfo("img_{:05d}.jpg", 101),
    "hmdb51": DatasetInfo("img_{:05d}.jpg", 51),
}
ALIASES = {
    "ssv2": "somethingv2",
    "sthv2": "somethingv2",
    "something-something-v2": "somethingv2",
    "ssv1": "somethingv1",
    "sthv1": "somethingv1",
    "k400": "kinetics",
    "kinetics400": "kinetics",
    "ucf": "ucf101",
    "hmdb": "hmdb51",
    "random": "dummy",
}
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_SSV2_SPLIT_FILES = {"train": "train", "val": "validation", "test": "test"}


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(set(SPLITS))}")
    return SPLITS[split]


def find_ssv2_annotations(split: str, *dirs: str | os.PathLike) -> tuple[Path, Path] | None:
    """Find ``(split_json, labels_json)`` in the first of ``dirs`` holding both.

    Accepts SSv2's names (``something-something-v2-validation.json``, ...) and the short
    ones (``validation.json``, ``labels.json``) that the synthetic generator writes.
    """
    stem = _SSV2_SPLIT_FILES[_split(split)]
    for d in dirs:
        d = Path(d)
        split_file = _first(d, [f"something-something-v2-{stem}.json", f"{stem}.json"])
        labels = _first(d, ["something-something-v2-labels.json", "labels.json"])
        if split_file and labels:
            return split_file, labels
    return None


def _first(d: Path, names: list[str]) -> Path | None:
    return next((d / n for n in names if (d / n).is_file()), None)


def _list_file(root: Path, split: str, list_file: str | os.PathLike | None) -> Path:
    if list_file is not None:
        return Path(list_file)
    name = f"{_split(split)}_videofolder.txt"
    for candidate in (root / name, root.parent / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no list file {name} in {root} or {root.parent}; pass list_file")


def build_dataset(
    name: str,
    root: str | os.PathLike,
    split: str = "val",
    *,
    list_file: str | os.PathLike | None = None,
    annotations: str | os.PathLike | None = None,
    labels_file: str | os.PathLike | None = None,
    template: str | None = None,
    num_classes: int | None = None,
    video: bool | None = None,
    mode: str | None = None,
    **kwargs,
) -> ClipDataset:
    """Build a dataset by name.

    - ``somethingv2``/``ssv2``, ``somethingv1``, ``kinetics``, ``ucf101``, ``hmdb51``:
      frame folders under ``root`` with ``list_file`` (default
      ``<root or its parent>/<split>_videofolder.txt``); template from docs/spec.md §3.1 unless
      given. ``somethingv2`` reads the ``.webm`` videos under ``root`` with SSv2's JSON
      annotations instead when ``video=True``, or when ``video`` is None, no
      ``list_file`` is given and the JSON files are found (``annotations`` file or folder,
      else ``root``, ``root/labels``, ``root/..``, ``root/../labels``).
    - ``video-list``: a list/CSV of ``(path, label)`` (``list_file``), paths under ``root``.
    - ``dummy`` (alias ``random``): :class:`~rubiks_data.dummy.RandomVideoDataset`, random
      clips with random labels and no files (``root`` unused; ``num_videos`` default 32,
      ``num_classes`` default 10; both splits hold the same clips) for overfitting checks.
    - ``synthetic``: a folder written by :func:`rubiks_data.synthetic.generate`: videos
      (default) or, with ``video=False``, its frame folders.

    ``labels_file`` (alias ``class_names``): class names (SSv2 labels JSON, or one name per
    line); for frame folders it also sets the class count (default: the dataset's).
    ``mode`` defaults to ``"train"`` for the train split, else ``"test"``. Other keywords
    go to the dataset (``num_segments``, ``protocol``, ``crop_size``, ``scale_size``,
    ``strict``, ``seed``, ``transform``, ...).
    """
    if labels_file is None:
        labels_file = kwargs.pop("class_names", None)
    if num_classes is not None:
        num_classes = _class_count(num_classes)
    key = ALIASES.get(name.lower(), name.lower())
    root = Path(root)
    split = _split(split)
    kwargs["mode"] = mode or ("train" if split == "train" else "test")
    if key == "dummy":
        return _dummy(split, num_classes, kwargs)
    if key == "synthetic":
        if video is False:
            return FrameFolderDataset(
                root / "frames",
                _list_file(root, split, list_file),
                template or "{:06d}.jpg",
                class_names=labels_file or _first(root, ["category.txt"]),
                num_classes=num_classes,
                **kwargs,
            )
        return _ssv2_videos(
            root / "videos", split, annotations or root, labels_file, num_classes, kwargs
        )
    if key == "video-list":
        if list_file is None:
            raise ValueError("video-list needs list_file (a '<path> <label>' list or CSV)")
        return video_list_dataset(
            list_file, root, num_classes=num_classes, class_names=labels_file, **kwargs
        )
    if key not in DATASETS:
        names = sorted([*DATASETS, *ALIASES, "dummy", "synthetic", "video-list"])
        raise ValueError(f"unknown dataset {name!r}; choose from {names}")
    info = DATASETS[key]
    if key == "somethingv2" and video is not False and list_file is None:
        if annotations is not None:
            dirs = [Path(annotations)]
        else:
            dirs = [root, root / "labels", root.parent, root.parent / "labels"]
        has_json = dirs[0].is_file() or find_ssv2_annotations(split, *dirs) is not None
        if video or has_json:
            return _ssv2_videos(root, split, annotations, labels_file, num_classes, kwargs, dirs)
    if video:
        raise ValueError(f"{name}: videos are read for somethingv2 (JSON) or video-list only")
    return FrameFolderDataset(
        root,
        _list_file(root, split, list_file),
        template or info.template,
        num_classes=(num_classes if num_classes is not None or labels_file else info.num_classes),
        class_names=labels_file,
        **kwargs,
    )


def _class_count(num_classes: object) -> int:
    try:
        count = operator.index(num_classes)
    except TypeError:
        count = 0
    if count < 1 or isinstance(num_classes, bool):
        raise ValueError(f"num_classes must be an integer >= 1 (or None), got {num_classes!r}")
    return count


_DUMMY_KEYS = {"num_videos", "num_segments", "crop_size", "mode", "protocol", "seed"}
# options that have no meaning for tensors drawn at the crop size
_DUMMY_MOOT = {"scale_size", "strict"}


def _dummy(split: str, num_classes: int | None, kwargs: dict) -> RandomVideoDataset:
    unknown = set(kwargs) - _DUMMY_KEYS - _DUMMY_MOOT
    if unknown:
        raise ValueError(f"dataset 'dummy' does not take {sorted(unknown)}")
    args = {k: v for k, v in kwargs.items() if k in _DUMMY_KEYS}
    if args.get("seed") is None:
        args.pop("seed", None)
    return RandomVideoDataset(num_classes=10 if num_classes is None else num_classes, **args)


def _ssv2_videos(root, split, annotations, labels_file, num_classes, kwargs, dirs=None):
    annotations = Path(annotations) if annotations is not None else None
    if annotations is not None and annotations.is_file():
        split_file = annotations
        labels = (
            Path(labels_file)
            if labels_file
            else _first(annotations.parent, ["something-something-v2-labels.json", "labels.json"])
        )
        if labels is None:
            raise FileNotFoundError(f"no labels JSON next to {annotations}; pass labels_file")
    else:
        dirs = dirs or [annotations]
        found = find_ssv2_annotations(split, *dirs)
        if found is None:
            raise FileNotFoundError(
                f"no SSv2 {split} annotations (+ labels JSON) in {[str(d) for d in dirs]}"
            )
        split_file, labels = found
        labels = Path(labels_file) if labels_file else labels
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return ssv2_video_dataset(root, split_file, labels, allow_unlabeled=split == "test", **kwargs)
