"""Random clips with random labels, for smoke tests and overfitting checks (no files).

Like the dummy-data mode of the reference's fine-tuning example: each video is a fixed
tensor of standard-normal pixels (already "normalised") drawn from ``(seed, index)``, and
its label a fixed random class. Nothing generalises, so a model can only memorise these
clips: a falling training loss shows that the whole training path (data, model,
optimizer, shift gradients) works. Both splits hold the same videos, so validation
measures the memorisation.
"""

from __future__ import annotations

import numpy as np
import torch

from .sample import VideoSample, item_index
from .transforms import get_protocol

__all__ = ["RandomVideoDataset"]


class RandomVideoDataset(torch.utils.data.Dataset):
    """``num_videos`` random clips of ``num_segments`` frames at ``crop_size``.

    Items are :class:`~rubiks_data.VideoSample` with clips ``(views, T, 3, crop, crop)``:
    one view in ``mode="train"``, the protocol's view count in ``mode="test"`` (every view
    of a video is the same tensor).
    """

    def __init__(
        self,
        num_videos: int = 32,
        num_classes: int = 10,
        *,
        num_segments: int = 8,
        crop_size: int = 224,
        mode: str = "train",
        protocol: str = "1clip",
        seed: int = 0,
    ) -> None:
        if num_videos < 1:
            raise ValueError(f"num_videos must be >= 1, got {num_videos}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if num_segments < 1 or crop_size < 1:
            raise ValueError(f"bad clip shape: {num_segments} frames at {crop_size} px")
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        self.num_videos, self.num_classes = int(num_videos), int(num_classes)
        self.num_segments, self.crop_size = int(num_segments), int(crop_size)
        self.mode = mode
        self.views = 1 if mode == "train" else get_protocol(protocol, crop_size, None).num_views
        self.seed = int(seed)
        rng = np.random.default_rng((self.seed, 0x6475))
        self._labels = rng.integers(0, self.num_classes, self.num_videos).tolist()
        self.class_names = [f"class{i:03d}" for i in range(self.num_classes)]

    @property
    def num_views(self) -> int:
        return self.views

    @property
    def labels(self) -> list[int]:
        return list(self._labels)

    @property
    def video_ids(self) -> list[str]:
        return [f"random{i:05d}" for i in range(self.num_videos)]

    def set_epoch(self, epoch: int) -> None:
        """Present for the dataset protocol; the clips do not change between epochs."""

    def __len__(self) -> int:
        return self.num_videos

    def __getitem__(self, index: int) -> VideoSample:
        index = item_index(index, self.num_videos)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        shape = (self.num_segments, 3, self.crop_size, self.crop_size)
        clip = torch.randn(shape, generator=g).unsqueeze(0).expand(self.views, *shape)
        return VideoSample(clip.contiguous(), self._labels[index], f"random{index:05d}", None)

    def __repr__(self) -> str:
        return (
            f"RandomVideoDataset({self.num_videos} videos, {self.num_classes} classes, "
            f"mode={self.mode}, frames={self.num_segments}, crop={self.crop_size})"
        )
