"""Clip pipelines: which frames to read (indices) and how to turn them into a tensor.

A pipeline has ``indices(num_frames, num_segments, rng)`` (0-based, clip after clip),
``num_views`` and ``__call__(frames, num_segments, rng) -> (views, T, 3, H, W)`` float32,
normalised with the ImageNet mean/std (RGB in [0, 1]). Frames are PIL RGB images.

- :class:`TestTransform`: a test protocol (docs/spec.md §3.3): resize the short side to
  ``scale_size`` with PIL bilinear (frames already at that size are untouched), then a
  centre crop (``1clip``) or three crops (``2clip``) per clip. Named presets: :data:`PROTOCOLS`.
- :class:`TrainTransform`: TSM's training augmentation (docs/spec.md §3.5): same resize, one
  multi-scale crop per clip resized to ``input_size`` (PIL bilinear), flip off by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from . import geometry, sampling

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PROTOCOLS",
    "TestTransform",
    "TrainTransform",
    "get_protocol",
    "normalize",
    "resize_frame",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN_NP = np.array(IMAGENET_MEAN, np.float32).reshape(3, 1, 1)
_STD_NP = np.array(IMAGENET_STD, np.float32).reshape(3, 1, 1)


def resize_frame(img: Image.Image, short_side: int | None) -> Image.Image:
    """Resize so the short side is ``short_side`` (PIL bilinear); None or equal: unchanged."""
    if short_side is None:
        return img
    size = geometry.resize_size(img.width, img.height, short_side)
    if size == img.size:
        return img
    return img.resize(size, Image.BILINEAR)


def normalize(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W): ``(x / 255 - mean) / std``.

    The same float32 arithmetic as torchvision's ``ToTensor`` followed by ``Normalize``
    (bit-identical), done in numpy: single-threaded, so it never competes with the model
    for torch's thread pool.
    """
    a = pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    if a.dtype != np.uint8 or a.ndim < 3 or a.shape[-1] != 3:
        raise ValueError(f"expected uint8 (..., H, W, 3) pixels, got {a.dtype} {a.shape}")
    x = np.ascontiguousarray(np.moveaxis(a, -1, -3)).astype(np.float32)
    x /= np.float32(255.0)
    x -= _MEAN_NP
    x /= _STD_NP
    return torch.from_numpy(x)


def _stack(frames: Sequence[Image.Image], short_side: int | None) -> np.ndarray:
    resized = [resize_frame(f.convert("RGB") if f.mode != "RGB" else f, short_side) for f in frames]
    sizes = {im.size for im in resized}
    if len(sizes) != 1:
        raise ValueError(f"frames of one video differ in size: {sorted(sizes)}")
    return np.stack([np.asarray(im) for im in resized])


def _check_frames(frames: Sequence[Image.Image], expected: int) -> None:
    if len(frames) != expected:
        raise ValueError(f"expected {expected} frames, got {len(frames)}")


@dataclass(frozen=True)
class TestTransform:
    """A test protocol: ``num_clips`` clips x ``num_crops`` crops of ``crop_size``.

    ``sampling`` is ``"uniform"`` (segment centres; with 2 clips also the segment starts,
    docs/spec.md §3.2) or ``"dense"`` (I3D-style, :func:`rubiks_data.sampling.dense_indices`).
    ``num_crops`` is 1 (centre crop, round half to even) or 3 (left, right, centre).
    Views are clip-major: view ``c * num_crops + k`` is crop k of clip c.
    """

    __test__ = False  # not a pytest class

    name: str = "1clip"
    num_clips: int = 1
    num_crops: int = 1
    crop_size: int = 224
    scale_size: int | None = 256
    sampling: str = "uniform"

    def __post_init__(self) -> None:
        if self.num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {self.num_crops}")
        if self.sampling == "uniform" and self.num_clips not in (1, 2):
            raise ValueError(f"uniform sampling has 1 or 2 clips, got {self.num_clips}")
        if self.sampling not in ("uniform", "dense"):
            raise ValueError(f"sampling must be 'uniform' or 'dense', got {self.sampling!r}")
        if self.crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if self.scale_size is not None and self.crop_size > self.scale_size:
            raise ValueError(
                f"crop_size {self.crop_size} is larger than scale_size {self.scale_size} "
                "(the short side after resizing): no crop fits"
            )

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    def indices(self, num_frames: int, num_segments: int, rng: object = None) -> list[int]:
        """0-based frame indices, clip after clip (deterministic; ``rng`` is ignored)."""
        if self.sampling == "dense":
            return sampling.dense_indices(num_frames, num_segments, self.num_clips)
        return sampling.test_indices(num_frames, num_segments, twice=self.num_clips == 2)

    def boxes(self, width: int, height: int) -> list[geometry.Box]:
        """Crop boxes on a frame of the resized size."""
        if self.num_crops == 1:
            return [geometry.center_crop_box(width, height, self.crop_size)]
        return geometry.three_crop_boxes(width, height, self.crop_size)

    def __call__(
        self, frames: Sequence[Image.Image], num_segments: int, rng: object = None
    ) -> torch.Tensor:
        _check_frames(frames, self.num_clips * num_segments)
        arr = _stack(frames, self.scale_size)
        h, w = arr.shape[1:3]
        views = [
            arr[c * num_segments : (c + 1) * num_segments, y : y + bh, x : x + bw]
            for c in range(self.num_clips)
            for x, y, bw, bh in self.boxes(w, h)
        ]
        return normalize(np.stack(views))


PROTOCOLS: dict[str, dict] = {
    "1clip": {"num_clips": 1, "num_crops": 1, "sampling": "uniform"},
    "2clip": {"num_clips": 2, "num_crops": 3, "sampling": "uniform"},
    "dense": {"num_clips": 10, "num_crops": 3, "sampling": "dense"},
}


def get_protocol(
    name: str | TestTransform, crop_size: int = 224, scale_size: int | None = 256
) -> TestTransform:
    """A named test protocol: ``1clip`` (centre crop), ``2clip`` (2 clips x 3 crops) or
    ``dense`` (10 dense clips x 3 crops, TSM's Kinetics test). A TestTransform passes through.
    """
    if isinstance(name, TestTransform):
        return name
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {sorted(PROTOCOLS)}")
    return TestTransform(name=name, crop_size=crop_size, scale_size=scale_size, **PROTOCOLS[name])


@dataclass(frozen=True)
class TrainTransform:
    """TSM training augmentation: multi-scale crop (fixed offsets) resized to ``input_size``.

    One crop box (and flip decision) per clip, shared by all its frames. ``flip`` is off by
    default: Something-Something labels distinguish left from right.
    """

    input_size: int = 224
    scale_size: int | None = 256
    scales: tuple[float, ...] = geometry.DEFAULT_SCALES
    max_distort: int = 1
    more_fix_crop: bool = True
    flip: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int):
            raise TypeError(f"input_size must be an int, got {self.input_size!r}")
        if self.input_size < 1:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if self.scale_size is not None and self.scale_size < 1:
            raise ValueError(f"scale_size must be positive or None, got {self.scale_size}")
        if not self.scales or not all(0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be fractions in (0, 1], at least one: {self.scales!r}")
        if self.max_distort < 0:
            raise ValueError(f"max_distort must be >= 0, got {self.max_distort}")

    @property
    def num_views(self) -> int:
        return 1

    def indices(self, num_frames: int, num_segments: int, rng: np.random.Generator) -> list[int]:
        """Random TSM training indices (:func:`rubiks_data.sampling.train_indices`)."""
        return sampling.train_indices(num_frames, num_segments, rng)

    def __call__(
        self, frames: Sequence[Image.Image], num_segments: int, rng: np.random.Generator
    ) -> torch.Tensor:
        _check_frames(frames, num_segments)
        resized = [resize_frame(f.convert("RGB"), self.scale_size) for f in frames]
        if len({im.size for im in resized}) != 1:
            raise ValueError("frames of one video differ in size")
        w, h = resized[0].size
        x, y, cw, ch = geometry.sample_multiscale_crop(
            w, h, rng, self.input_size, self.scales, self.max_distort, True, self.more_fix_crop
        )
        size = (self.input_size, self.input_size)
        arr = np.stack(
            [
                np.asarray(im.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR))
                for im in resized
            ]
        )
        if self.flip and rng.random() < 0.5:
            arr = arr[:, :, ::-1]
        return normalize(arr[None])
