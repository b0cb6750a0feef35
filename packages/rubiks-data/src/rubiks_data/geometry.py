"""Spatial geometry of TSM's pipeline (docs/spec.md §3.3, §3.5), as pure functions.

Sizes are ``(width, height)`` and boxes ``(x, y, w, h)`` with (x, y) the top-left corner,
in pixels of the (already resized) frame, as PIL's ``Image.crop((x, y, x + w, y + h))``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

__all__ = [
    "DEFAULT_SCALES",
    "Box",
    "center_crop_box",
    "fixed_crop_offsets",
    "multiscale_crop_candidates",
    "multiscale_crop_sizes",
    "resize_size",
    "sample_multiscale_crop",
    "three_crop_boxes",
]

Box = tuple[int, int, int, int]
DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")


def _check_crop(width: int, height: int, crop_w: int, crop_h: int) -> None:
    _check_size(width, height)
    if crop_w < 1 or crop_h < 1:
        raise ValueError(f"crop size must be positive, got {crop_w}x{crop_h}")
    if crop_w > width or crop_h > height:
        raise ValueError(f"crop {crop_w}x{crop_h} does not fit in a {width}x{height} image")


def resize_size(width: int, height: int, short_side: int = 256) -> tuple[int, int]:
    """Size after resizing the short side to ``short_side``: long side ``floor(s*long/short)``.

    A frame whose short side already equals ``short_side`` keeps its size (it is left
    untouched). Example: 427x240 -> (455, 256); 256x340 -> (256, 340).
    """
    _check_size(width, height)
    if short_side < 1:
        raise ValueError(f"short_side must be positive, got {short_side}")
    if min(width, height) == short_side:
        return width, height
    if width < height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def center_crop_box(width: int, height: int, crop: int) -> Box:
    """Centre crop: ``x = round((W-c)/2)``, ``y = round((H-c)/2)``, round half to even.

    Example: 455x256, c=224 -> (116, 16, 224, 224) ((455-224)/2 = 115.5 rounds to 116).
    """
    _check_crop(width, height, crop, crop)
    return round((width - crop) / 2), round((height - crop) / 2), crop, crop


def three_crop_boxes(width: int, height: int, crop: int) -> list[Box]:
    """TSM's 3-crop test boxes (GroupFullResSample): left, right, centre, in that order.

    ``w_step = (W-c)//4``, ``h_step = (H-c)//4``; offsets (0, 2h), (4w, 2h), (2w, 2h).
    Example: 455x256, c=224 -> x = 0, 228, 114 and y = 16.
    """
    _check_crop(width, height, crop, crop)
    w_step, h_step = (width - crop) // 4, (height - crop) // 4
    return [
        (0, 2 * h_step, crop, crop),
        (4 * w_step, 2 * h_step, crop, crop),
        (2 * w_step, 2 * h_step, crop, crop),
    ]


def multiscale_crop_sizes(
    width: int,
    height: int,
    input_size: int = 224,
    scales: Sequence[float] = DEFAULT_SCALES,
    max_distort: int = 1,
) -> list[tuple[int, int]]:
    """Candidate ``(crop_w, crop_h)`` pairs of TSM's GroupMultiScaleCrop, in TSM's order.

    Sizes are ``int(short * scale)``; a size within 2 px of ``input_size`` snaps to it; a
    pair (i for height, j for width) is kept when ``|i - j| <= max_distort``.
    """
    _check_size(width, height)
    base = min(width, height)
    sizes = [int(base * s) for s in scales]
    snapped = [input_size if abs(s - input_size) < 3 else s for s in sizes]
    return [
        (w, h)
        for i, h in enumerate(snapped)
        for j, w in enumerate(snapped)
        if abs(i - j) <= max_distort
    ]


def fixed_crop_offsets(
    width: int, height: int, crop_w: int, crop_h: int, more_fix_crop: bool = True
) -> list[tuple[int, int]]:
    """TSM's fixed crop offsets ``(x, y)``: 5 (corners, centre) or 13 with ``more_fix_crop``.

    Steps are ``(W - crop_w)//4`` and ``(H - crop_h)//4``; duplicates are kept (TSM draws
    uniformly from this list).
    """
    _check_crop(width, height, crop_w, crop_h)
    ws, hs = (width - crop_w) // 4, (height - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
    if more_fix_crop:
        grid += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(a * ws, b * hs) for a, b in grid]


def multiscale_crop_candidates(
    width: int,
    height: int,
    input_size: int = 224,
    scales: Sequence[float] = DEFAULT_SCALES,
    max_distort: int = 1,
    more_fix_crop: bool = True,
) -> list[Box]:
    """Every box TSM's multi-scale crop (``fix_crop=True``) can pick, duplicates kept.

    Pair-major: for each pair of :func:`multiscale_crop_sizes`, its
    :func:`fixed_crop_offsets`. Every pair has the same number of offsets, so a uniform
    draw from this list has exactly TSM's distribution (uniform pair, then uniform offset).
    The chosen box is then resized to ``input_size`` x ``input_size``.
    """
    boxes = []
    for cw, ch in multiscale_crop_sizes(width, height, input_size, scales, max_distort):
        boxes += [
            (x, y, cw, ch) for x, y in fixed_crop_offsets(width, height, cw, ch, more_fix_crop)
        ]
    return boxes


def sample_multiscale_crop(
    width: int,
    height: int,
    rng: np.random.Generator | random.Random,
    input_size: int = 224,
    scales: Sequence[float] = DEFAULT_SCALES,
    max_distort: int = 1,
    fix_crop: bool = True,
    more_fix_crop: bool = True,
) -> Box:
    """Draw one multi-scale crop box: a uniform pair, then a uniform fixed offset (or, with
    ``fix_crop=False``, a uniform position)."""

    def choice(n: int) -> int:
        if isinstance(rng, random.Random):
            return rng.randrange(n)
        return int(rng.integers(0, n))

    pairs = multiscale_crop_sizes(width, height, input_size, scales, max_distort)
    cw, ch = pairs[choice(len(pairs))]
    if fix_crop:
        offsets = fixed_crop_offsets(width, height, cw, ch, more_fix_crop)
        x, y = offsets[choice(len(offsets))]
    else:
        _check_crop(width, height, cw, ch)
        x, y = choice(width - cw + 1), choice(height - ch + 1)
    return x, y, cw, ch
