"""rubiks-data: video datasets with TSM's exact sampling and crops, and synthetic videos.

Every dataset item is a :class:`VideoSample` ``(clip, label, video_id, error)``; see
:mod:`rubiks_data.sampling`, :mod:`rubiks_data.geometry`, :mod:`rubiks_data.transforms`,
:mod:`rubiks_data.datasets` and :mod:`rubiks_data.synthetic`.
"""

from .datasets import (
    ClipDataset,
    FrameFolderDataset,
    VideoFileDataset,
    ssv2_video_dataset,
    video_list_dataset,
)
from .dummy import RandomVideoDataset
from .lists import VideoRecord
from .registry import DATASETS, build_dataset
from .sample import (
    Batch,
    ListFileError,
    VideoReadError,
    VideoSample,
    check_batchable,
    collate_samples,
)
from .transforms import PROTOCOLS, TestTransform, TrainTransform, get_protocol
from .video import DecodeError, VideoReader

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "PROTOCOLS",
    "Batch",
    "ClipDataset",
    "DecodeError",
    "FrameFolderDataset",
    "ListFileError",
    "RandomVideoDataset",
    "TestTransform",
    "TrainTransform",
    "VideoFileDataset",
    "VideoReadError",
    "VideoReader",
    "VideoRecord",
    "VideoSample",
    "__version__",
    "build_dataset",
    "check_batchable",
    "collate_samples",
    "get_protocol",
    "ssv2_video_dataset",
    "video_list_dataset",
]
