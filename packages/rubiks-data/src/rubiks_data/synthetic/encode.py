"""Writing frames as real encoded videos (VP9 ``.webm``, H.264 ``.mp4``) with PyAV."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..fileio import temp_path_for

__all__ = ["FORMATS", "encode_video"]

# container format -> (codec, encoder options)
FORMATS: dict[str, tuple[str, dict[str, str]]] = {
    "webm": ("libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "b:v": "0", "row-mt": "0"}),
    "mp4": ("libx264", {"preset": "veryfast", "tune": "zerolatency"}),
}


def encode_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: int = 12,
    crf: int = 20,
    threads: int = 1,
    keyint: int | None = None,
) -> None:
    """Encode uint8 RGB frames (F, H, W, 3) to ``path`` (``.webm`` or ``.mp4``), atomically.

    Width and height must be even (4:2:0 chroma). ``keyint``: maximum keyframe interval
    (None: the encoder's default).
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"unsupported video format {path.suffix!r}; use .webm or .mp4")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    n, h, w, _ = frames.shape
    if n < 1 or h % 2 or w % 2:
        raise ValueError(f"need >= 1 frame and even width/height, got {n} frames of {w}x{h}")
    codec, options = FORMATS[fmt]
    tmp = temp_path_for(path)
    try:
        with av.open(str(tmp), "w", format=fmt) as container:
            stream = container.add_stream(codec, rate=Fraction(fps))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.codec_context.thread_count = threads
            stream.options = {**options, "crf": str(crf)}
            if keyint is not None:
                stream.codec_context.gop_size = keyint
            for frame in frames:
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                container.mux(stream.encode(vf))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
