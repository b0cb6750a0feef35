"""Decoding sampled frames straight from video files (``.webm``, ``.mp4``, ...) with PyAV.

:class:`VideoReader` demuxes the file once (packets only, no decoding) to learn the frame
count L and each frame's timestamp and keyframe flag, then decodes from the last keyframe
at or before the first wanted frame up to the last wanted frame, converting only the wanted
frames to RGB. Nothing is ever substituted: every problem raises :class:`DecodeError`
with a short reason (missing file, empty file, unreadable, no video stream, zero frames,
truncated, corrupt).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter
from PIL import Image

__all__ = ["DecodeError", "VideoReader", "count_frames", "read_frames"]


class DecodeError(Exception):
    """A video could not be read; ``str(err)`` is the short reason."""


def _ffmpeg_message(err: Exception) -> str:
    msg = getattr(err, "strerror", None) or str(err)
    return str(msg).split(":")[0].strip() or type(err).__name__


class _Reformatters(threading.local):
    """A frame converter per thread and process. PyAV's own is per thread only: a forked
    child (a DataLoader worker) inherits its parent's, whose scaler then waits forever for
    slice threads that exist only in the parent."""

    pid = -1
    reformatter: VideoReformatter | None = None
    inherited: list  # converters made before a fork: kept, since freeing one would join
    # threads this process does not have

    def __init__(self) -> None:
        self.inherited = []


_REFORMATTERS = _Reformatters()


def _rgb_image(frame: av.VideoFrame) -> Image.Image:
    """A decoded frame as a PIL RGB image, converted by this process's own scaler."""
    local, pid = _REFORMATTERS, os.getpid()
    if local.pid != pid:
        if local.reformatter is not None:
            local.inherited.append(local.reformatter)
        local.pid, local.reformatter = pid, VideoReformatter()
    # an rgb24 frame's to_image() converts nothing (PyAV returns it as it is)
    return local.reformatter.reformat(frame, format="rgb24").to_image()


class VideoReader:
    """One video file, demuxed; ``num_frames`` is L, ``frames(indices)`` decodes.

    ``threads``: decoder threads (0 = FFmpeg's choice; 1 suits DataLoader workers).
    ``truncation_tolerance``: a file whose container promises more frames (frame count or
    duration x rate) than it holds, by more than this fraction (at least 1 frame), is
    reported as truncated.
    """

    def __init__(
        self, path: str | os.PathLike, threads: int = 1, truncation_tolerance: float = 0.05
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DecodeError(f"missing file {self.path}")
        if self.path.stat().st_size == 0:
            raise DecodeError("empty file (0 bytes)")
        try:
            self._container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as err:
            raise DecodeError(f"unreadable ({_ffmpeg_message(err)})") from None
        try:
            self._setup(threads, truncation_tolerance)
        except BaseException:
            self.close()
            raise

    def _setup(self, threads: int, tolerance: float) -> None:
        if not self._container.streams.video:
            raise DecodeError("no video stream")
        stream = self._stream = self._container.streams.video[0]
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.codec_context.thread_count = threads
        packets = []
        try:
            for packet in self._container.demux(stream):
                if packet.size:
                    packets.append(packet)
        except (av.FFmpegError, OSError) as err:
            raise DecodeError(
                f"truncated or corrupt (demuxing stopped after {len(packets)} frames: "
                f"{_ffmpeg_message(err)})"
            ) from None
        self._packets = packets
        self.num_frames = len(packets)
        self.expected_frames = self._expected_frames()
        if not packets:
            if self.expected_frames:
                raise DecodeError(f"truncated (0 of {self.expected_frames} frames present)")
            raise DecodeError("zero frames")
        self._has_pts = all(p.pts is not None for p in packets)
        self._pts = sorted(p.pts for p in packets) if self._has_pts else []
        if self.expected_frames:
            slack = max(1, round(tolerance * self.expected_frames))
            if self.num_frames < self.expected_frames - slack:
                raise DecodeError(
                    f"truncated ({self.num_frames} of {self.expected_frames} frames present)"
                )
        self._decoded_once = False

    def _expected_frames(self) -> int | None:
        s = self._stream
        if s.frames:
            return int(s.frames)
        rate = s.average_rate or s.guessed_rate
        if s.duration and s.time_base and rate:
            return round(float(s.duration * s.time_base * rate))
        if self._container.duration and rate:
            return round(self._container.duration / 1_000_000 * float(rate))
        return None

    @property
    def size(self) -> tuple[int, int]:
        """Coded (width, height)."""
        return self._stream.codec_context.width, self._stream.codec_context.height

    def frames(self, indices: Sequence[int]) -> list[Image.Image]:
        """PIL RGB images of the 0-based frames ``indices`` (repeats allowed), in order."""
        if not indices:
            return []
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"frame {bad[0]} out of range for {self.num_frames} frames")
        codec = self._stream.codec_context
        if self._decoded_once:
            codec.flush_buffers()
        self._decoded_once = True
        if self._has_pts:
            return self._frames_by_pts(codec, indices)
        return self._frames_in_order(codec, indices)

    def _frames_by_pts(self, codec, indices: Sequence[int]) -> list[Image.Image]:
        wanted = {self._pts[i] for i in indices}
        first = min(wanted)
        start = 0
        for k, p in enumerate(self._packets):
            if p.is_keyframe and p.pts <= first:
                start = k
        got: dict[int, Image.Image] = {}

        def take(frames) -> None:
            for f in frames:
                if f.pts in wanted and f.pts not in got:
                    got[f.pts] = _rgb_image(f)

        try:
            for p in self._packets[start:]:
                take(codec.decode(p))
                if len(got) == len(wanted):
                    break
            else:
                take(codec.decode(None))
        except (av.FFmpegError, OSError) as err:
            raise DecodeError(f"corrupt (decoding failed: {_ffmpeg_message(err)})") from None
        missing = sorted(self._pts.index(t) for t in wanted - got.keys())
        if missing:
            raise DecodeError(f"truncated or corrupt (frame {missing[0]} could not be decoded)")
        return [got[self._pts[i]] for i in indices]

    def _frames_in_order(self, codec, indices: Sequence[int]) -> list[Image.Image]:
        wanted, last = set(indices), max(indices)
        got: dict[int, Image.Image] = {}
        n = 0
        try:
            for p in [*self._packets, None]:
                for f in codec.decode(p):
                    if n in wanted:
                        got[n] = _rgb_image(f)
                    n += 1
                if n > last:
                    break
        except (av.FFmpegError, OSError) as err:
            raise DecodeError(f"corrupt (decoding failed: {_ffmpeg_message(err)})") from None
        if len(got) < len(wanted):
            raise DecodeError(f"truncated or corrupt (only {n} frames could be decoded)")
        return [got[i] for i in indices]

    def iter_frames(self):
        """Yield every frame in presentation order as a PIL RGB image (for extraction)."""
        codec = self._stream.codec_context
        if self._decoded_once:
            codec.flush_buffers()
        self._decoded_once = True
        n = 0
        try:
            for p in [*self._packets, None]:
                for f in codec.decode(p):  # decoders emit presentation order
                    n += 1
                    yield _rgb_image(f)
        except (av.FFmpegError, OSError) as err:
            raise DecodeError(
                f"corrupt (decoding failed after {n} frames: {_ffmpeg_message(err)})"
            ) from None
        if n < self.num_frames:
            raise DecodeError(f"truncated or corrupt ({n} of {self.num_frames} frames decoded)")

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames (packets) of a video, without decoding."""
    with VideoReader(path) as reader:
        return reader.num_frames


def read_frames(path: str | os.PathLike, indices: Sequence[int], threads: int = 1) -> list:
    """Convenience: decode the 0-based ``indices`` of one video as PIL RGB images."""
    with VideoReader(path, threads=threads) as reader:
        return reader.frames(indices)
