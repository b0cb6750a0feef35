"""Shared fixtures: small generated datasets (real encoded videos and frame folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from rubiks_data.synthetic import SynthConfig, generate
from rubiks_data.synthetic.encode import encode_video

# deterministic runs: hypothesis derives its examples from the test, not a random seed
settings.register_profile("rubiks-data", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("rubiks-data")


@pytest.fixture(scope="session")
def synth_webm(tmp_path_factory) -> Path:
    """24 train + 12 val webm clips of 16 frames at 64x48, with frame folders and lists."""
    out = tmp_path_factory.mktemp("synth_webm")
    cfg = SynthConfig(num_train=24, num_val=12, width=64, height=48, frame_folders=True, seed=3)
    return generate(out, cfg, progress=False)


@pytest.fixture(scope="session")
def synth_mp4(tmp_path_factory) -> Path:
    """12 train + 12 val mp4 clips with 6..20 frames (some shorter than 8)."""
    out = tmp_path_factory.mktemp("synth_mp4")
    cfg = SynthConfig(num_train=12, num_val=12, num_frames=(6, 20), format="mp4", seed=5)
    return generate(out, cfg, progress=False)


def ramp_frames(n: int = 30, w: int = 96, h: int = 64) -> np.ndarray:
    """Frames whose content identifies the frame number (a moving bar + brightness)."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for k in range(n):
        frames[k, :, :, 0] = (k * 8) % 256
        frames[k, :, (k * 3) % w : (k * 3) % w + 6, 1] = 255
        frames[k, 10:20, 10:20, 2] = 200
    return frames


@pytest.fixture(scope="session")
def keyint_videos(tmp_path_factory) -> dict[str, Path]:
    """A webm and an mp4 of 30 frames with a keyframe every 4 frames (exercises seeking)."""
    out = tmp_path_factory.mktemp("keyint")
    frames = ramp_frames()
    paths = {}
    for fmt in ("webm", "mp4"):
        paths[fmt] = out / f"ramp.{fmt}"
        encode_video(paths[fmt], frames, fps=12, crf=10, keyint=4)
    return paths
