"""Generating a synthetic temporal dataset on disk, in Something-Something-V2's layout.

Layout of ``out_dir``::

    labels.json                  class text -> index string (SSv2's labels format)
    train.json, validation.json  [{id, label, template, placeholders}] (SSv2's format)
    videos/<id>.webm|.mp4        encoded clips
    frames/<id>/000001.jpg ...   optional frame folders (template {:06d}.jpg)
    train_videofolder.txt, val_videofolder.txt, category.txt   optional TSM lists
    config.json                  the generator settings (written first)
    meta.json                    written last: the dataset is complete

Every clip is a function of (seed, split, index) only: runs are reproducible, can be
interrupted and resumed (finished files are skipped), and use several processes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import atomic_write_json, atomic_write_text, replace_dir, temp_dir_for
from ..lists import ssv2_class_name
from ..process_pool import process_pool
from .encode import FORMATS, encode_video
from .render import CLASSES, ClipSpec, make_spec, render_clip

__all__ = ["SynthConfig", "clip_spec", "generate", "split_labels"]

FORMAT_VERSION = 1
SPLITS = ("train", "validation")


@dataclass(frozen=True)
class SynthConfig:
    """Generator settings. ``num_frames`` is a count or an inclusive (min, max) range drawn
    per clip; ``classes`` a subset of :data:`~rubiks_data.synthetic.CLASSES` names (in
    that order; default all 12)."""

    num_train: int = 480
    num_val: int = 120
    width: int = 64
    height: int = 64
    num_frames: int | tuple[int, int] = 16
    fps: int = 12
    seed: int = 0
    format: str = "webm"
    frame_folders: bool = False
    classes: tuple[str, ...] | None = None
    crf: int = 20
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {self.format!r}")
        if self.width % 2 or self.height % 2 or self.width < 16 or self.height < 16:
            raise ValueError(
                f"width and height must be even and >= 16, got {self.width}x{self.height}"
            )
        lo, hi = self.frame_range
        if not 2 <= lo <= hi:
            raise ValueError(f"num_frames must be >= 2 (min <= max), got {self.num_frames}")
        if self.num_train < 0 or self.num_val < 0:
            raise ValueError("num_train and num_val must be >= 0")
        if self.fps < 1:
            raise ValueError(f"fps must be >= 1, got {self.fps}")
        max_crf = 63 if self.format == "webm" else 51  # libvpx-vp9 / libx264 ranges
        if not 0 <= self.crf <= max_crf:
            raise ValueError(f"crf must be in 0..{max_crf} for {self.format}, got {self.crf}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        self.class_defs()

    @property
    def frame_range(self) -> tuple[int, int]:
        if isinstance(self.num_frames, int):
            return self.num_frames, self.num_frames
        lo, hi = self.num_frames
        return int(lo), int(hi)

    def class_defs(self) -> list:
        """The chosen classes, in :data:`CLASSES` order: list of (global index, ClassDef)."""
        if self.classes is None:
            return list(enumerate(CLASSES))
        names = {c.name: i for i, c in enumerate(CLASSES)}
        unknown = [c for c in self.classes if c not in names]
        if unknown or not self.classes:
            raise ValueError(f"unknown classes {unknown}; choose from {list(names)}")
        return [(i, c) for i, c in enumerate(CLASSES) if c.name in self.classes]

    def to_json(self) -> dict:
        d = asdict(self)
        d["num_frames"] = list(self.frame_range)
        d["classes"] = [c.name for _, c in self.class_defs()]
        return d


def split_labels(config: SynthConfig, split: str) -> list[int]:
    """Balanced labels (indices into the chosen classes) of a split, shuffled by the seed."""
    n = config.num_train if split == "train" else config.num_val
    k = len(config.class_defs())
    rng = np.random.default_rng([config.seed, SPLITS.index(split), 1_000_003])
    return rng.permutation(np.arange(n) % k).tolist()


def _video_id(config: SynthConfig, split: str, index: int) -> str:
    return str(index + 1 if split == "train" else config.num_train + index + 1)


def clip_spec(config: SynthConfig, split: str, index: int, label: int) -> ClipSpec:
    """The spec of clip ``index`` of ``split`` (label = index into the chosen classes)."""
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
    lo, hi = config.frame_range
    frames = int(rng.integers(lo, hi + 1))
    global_label = config.class_defs()[label][0]
    spec = make_spec(global_label, rng, config.width, config.height, frames)
    return spec


def _job(args: tuple) -> dict:
    config, split, index, label, out = args
    out = Path(out)
    vid = _video_id(config, split, index)
    spec = clip_spec(config, split, index, label)
    video = out / "videos" / f"{vid}.{config.format}"
    folder = out / "frames" / vid
    need_video = not video.is_file()
    need_frames = config.frame_folders and not folder.is_dir()
    if need_video or need_frames:
        frames = render_clip(spec)
        if need_video:
            encode_video(video, frames, config.fps, config.crf)
        if need_frames:
            tmp = temp_dir_for(folder)
            for k, frame in enumerate(frames):
                Image.fromarray(frame).save(tmp / f"{k + 1:06d}.jpg", quality=config.jpeg_quality)
            replace_dir(tmp, folder)
    cls = CLASSES[spec.label]
    text = cls.template.replace("[something]", spec.placeholder)
    text = text.replace("[Something]", spec.placeholder.capitalize())
    return {
        "id": vid,
        "label": text,
        "template": cls.template,
        "placeholders": [spec.placeholder],
        "num_frames": spec.num_frames,
        "class": label,
    }


def generate(
    out_dir: str | os.PathLike,
    config: SynthConfig | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the dataset described by ``config`` into ``out_dir``; returns ``out_dir``.

    A folder already holding the same dataset (``meta.json``) is left as it is; a partial
    one with the same settings is completed; one with other settings, or a non-empty
    folder that holds no synthetic dataset, is an error unless ``overwrite`` (which first
    removes the files this function writes: ``videos/``, ``frames/``, the annotations).
    """
    config = config or SynthConfig()
    out = Path(out_dir)
    wanted = config.to_json()
    meta, cfg_file = out / "meta.json", out / "config.json"
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and not cfg_file.is_file() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} is a non-empty folder that holds no synthetic dataset; choose an "
                "empty or new folder, or overwrite (its videos/, frames/ and annotation "
                "files are replaced)"
            )
        _clean(out)  # a file of the user's must not pass for a generated one
    if cfg_file.is_file():
        existing = json.loads(cfg_file.read_text())
        if existing != wanted:
            if not overwrite:
                raise FileExistsError(
                    f"{out} holds a synthetic dataset with other settings ({cfg_file}); "
                    "choose another folder or overwrite"
                )
            _clean(out)
        elif meta.is_file():
            return out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_file, wanted)
    (out / "videos").mkdir(exist_ok=True)
    jobs = [
        (config, split, i, label, str(out))
        for split in SPLITS
        for i, label in enumerate(split_labels(config, split))
    ]
    entries = _run(jobs, workers, progress)
    _write_annotations(out, config, jobs, entries)
    atomic_write_json(
        meta,
        {
            "format_version": FORMAT_VERSION,
            "config": wanted,
            "counts": {s: sum(j[1] == s for j in jobs) for s in SPLITS},
        },
    )
    return out


def _run(jobs: Sequence[tuple], workers: int, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="synthetic clips", unit="clip", disable=not progress)
    results: list[dict] = []
    try:
        if workers > 1 and len(jobs) > 1:
            with process_pool(workers) as pool:
                for r in pool.map(_job, jobs, chunksize=8):
                    results.append(r)
                    bar.update()
        else:
            for job in jobs:
                results.append(_job(job))
                bar.update()
    finally:
        bar.close()
    return results


def _write_annotations(out: Path, config: SynthConfig, jobs, entries: list[dict]) -> None:
    classes = [c for _, c in config.class_defs()]
    atomic_write_json(
        out / "labels.json", {ssv2_class_name(c.template): str(i) for i, c in enumerate(classes)}
    )
    keys = ("id", "label", "template", "placeholders")
    for split in SPLITS:
        rows = [e for j, e in zip(jobs, entries, strict=True) if j[1] == split]
        atomic_write_json(out / f"{split}.json", [{k: e[k] for k in keys} for e in rows])
        if config.frame_folders:
            name = "train" if split == "train" else "val"
            lines = "".join(f"{e['id']} {e['num_frames']} {e['class']}\n" for e in rows)
            atomic_write_text(out / f"{name}_videofolder.txt", lines)
    if config.frame_folders:
        atomic_write_text(
            out / "category.txt", "".join(ssv2_class_name(c.template) + "\n" for c in classes)
        )


def _clean(out: Path) -> None:
    for sub in ("videos", "frames"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name in (
        "meta.json",
        "config.json",
        "labels.json",
        "train.json",
        "validation.json",
        "train_videofolder.txt",
        "val_videofolder.txt",
        "category.txt",
    ):
        (out / name).unlink(missing_ok=True)
