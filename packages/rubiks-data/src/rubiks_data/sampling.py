"""Temporal sampling rules of TSM (docs/spec.md §3.2), as pure functions.

All functions return **0-based** frame indices as a list of ints, clip after clip (add 1 for
the 1-based frame numbers of frame folders). ``num_frames`` is L, the number of frames in
the video; ``num_segments`` is n, the frames per clip. Videos shorter than n frames are
sampled by the same rules (frames repeat); they are never dropped.

The floating-point expressions are the ones TSM evaluates (``tick = L / n`` in double
precision, ``int()`` truncation), so the indices agree with TSM's bit for bit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dense_indices", "test_indices", "train_indices"]

RngLike = np.random.Generator | int | None


def _check(num_frames: int, num_segments: int) -> None:
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")
    if int(num_segments) != num_segments or num_segments < 1:
        raise ValueError(f"num_segments must be a positive integer, got {num_segments!r}")


def _rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def test_indices(num_frames: int, num_segments: int, twice: bool = False) -> list[int]:
    """Test-time indices: segment centres ``floor(tick/2 + tick*i)`` with ``tick = L/n``,
    in double precision as TSM computes them (docs/spec.md §3.2 on where that differs from
    exact arithmetic).

    With ``twice=True`` (the "2-clip" protocol) the segment starts ``floor(tick*i)`` follow
    as a second clip, so 2n indices are returned. Example: L=3, n=8 gives 0,0,0,1,1,2,2,2.
    """
    _check(num_frames, num_segments)
    tick = num_frames / float(num_segments)
    idx = [int(tick / 2.0 + tick * i) for i in range(num_segments)]
    if twice:
        idx += [int(tick * i) for i in range(num_segments)]
    return idx


test_indices.__test__ = False  # not a pytest test despite the name


def train_indices(num_frames: int, num_segments: int, rng: RngLike = None) -> list[int]:
    """Training indices: ``i*d + u_i`` with ``d = floor(L/n)``, ``u_i ~ U{0..d-1}``.

    For L < n (d = 0) the test rule (segment centres) is used instead of TSM's repetition
    of frame 1 (ours, docs/spec.md §3.2). ``rng`` is a ``numpy.random.Generator``, a seed or None.
    """
    _check(num_frames, num_segments)
    d = num_frames // num_segments
    if d < 1:
        return test_indices(num_frames, num_segments)
    offsets = _rng(rng).integers(0, d, size=num_segments)
    return [i * d + int(u) for i, u in enumerate(offsets)]


def dense_indices(num_frames: int, num_segments: int, num_clips: int = 10) -> list[int]:
    """I3D-style dense test indices: ``num_clips`` clips of n frames at stride ``64 // n``.

    ``S = max(1, L - 63)``; clip k starts at ``floor(k*(S-1)/(num_clips-1))`` (computed as
    ``numpy.linspace(0, S-1, num_clips)`` truncated, as TSM does) and takes frames
    ``(i*stride + start) mod L``.
    """
    _check(num_frames, num_segments)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if num_segments > 64:  # the stride 64 // n would be 0: every frame of a clip the same
        raise ValueError(f"dense sampling takes at most 64 frames per clip, got {num_segments}")
    span = max(1, num_frames - 63)
    stride = 64 // num_segments
    starts = np.linspace(0, span - 1, num=num_clips, dtype=int).tolist()
    return [(i * stride + s) % num_frames for s in starts for i in range(num_segments)]
