"""docs/spec.md §3.3 / §3.5 crop geometry against hand-computed TSM numbers."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rubiks_data.geometry import (
    center_crop_box,
    fixed_crop_offsets,
    multiscale_crop_candidates,
    multiscale_crop_sizes,
    resize_size,
    sample_multiscale_crop,
    three_crop_boxes,
)


def test_resize_size():
    assert resize_size(427, 240) == (455, 256)  # 256 * 427 / 240 = 455.47
    assert resize_size(240, 427) == (256, 455)
    assert resize_size(320, 240) == (341, 256)
    assert resize_size(64, 48) == (341, 256)
    assert resize_size(100, 100) == (256, 256)
    assert resize_size(455, 256) == (455, 256)  # already short side 256: untouched
    assert resize_size(256, 999) == (256, 999)
    assert resize_size(640, 480, short_side=128) == (170, 128)


@given(st.integers(1, 2000), st.integers(1, 2000), st.integers(1, 512))
def test_resize_size_rule(w, h, s):
    nw, nh = resize_size(w, h, s)
    assert min(nw, nh) == s or min(w, h) == s
    if min(w, h) != s:
        long_in, short_in = max(w, h), min(w, h)
        assert max(nw, nh) == int(s * long_in / short_in) or w == h


def test_center_crop_round_half_even():
    assert center_crop_box(455, 256, 224) == (116, 16, 224, 224)  # 115.5 -> 116
    assert center_crop_box(457, 256, 224) == (116, 16, 224, 224)  # 116.5 -> 116
    assert center_crop_box(459, 256, 224) == (118, 16, 224, 224)  # 117.5 -> 118
    assert center_crop_box(256, 341, 224) == (16, 58, 224, 224)  # 58.5 -> 58
    assert center_crop_box(224, 224, 224) == (0, 0, 224, 224)


def test_three_crops():
    # w_step = (455-224)//4 = 57, h_step = (256-224)//4 = 8
    assert three_crop_boxes(455, 256, 224) == [
        (0, 16, 224, 224),
        (228, 16, 224, 224),
        (114, 16, 224, 224),
    ]
    # TSM --full_res: c = 256, w_step = 49, h_step = 0
    assert three_crop_boxes(455, 256, 256) == [
        (0, 0, 256, 256),
        (196, 0, 256, 256),
        (98, 0, 256, 256),
    ]
    # portrait frames: still left / right / centre along x
    assert three_crop_boxes(256, 455, 224) == [
        (0, 114, 224, 224),
        (32, 114, 224, 224),
        (16, 114, 224, 224),
    ]


@pytest.mark.parametrize("fn", [center_crop_box, three_crop_boxes])
def test_crop_too_big(fn):
    with pytest.raises(ValueError, match="does not fit"):
        fn(200, 256, 224)


def test_multiscale_sizes_tsm():
    # short side 256: int(256 * s) = 256, 224, 192, 168; 224 snaps to input 224
    assert multiscale_crop_sizes(455, 256) == [
        (256, 256), (224, 256),
        (256, 224), (224, 224), (192, 224),
        (224, 192), (192, 192), (168, 192),
        (192, 168), (168, 168),
    ]  # fmt: skip
    # snapping: short side 255 -> 255, 223 (-> 224), 191, 168
    assert (224, 224) in multiscale_crop_sizes(300, 255)
    assert multiscale_crop_sizes(300, 255, max_distort=0) == [
        (255, 255),
        (224, 224),
        (191, 191),
        (168, 168),
    ]


def test_fixed_offsets_tsm():
    # 455x256, crop 224: w_step 57, h_step 8
    assert fixed_crop_offsets(455, 256, 224, 224) == [
        (0, 0), (228, 0), (0, 32), (228, 32), (114, 16),
        (0, 16), (228, 16), (114, 32), (114, 0),
        (57, 8), (171, 8), (57, 24), (171, 24),
    ]  # fmt: skip
    assert len(fixed_crop_offsets(455, 256, 168, 168, more_fix_crop=False)) == 5


def test_candidates_are_pair_major():
    boxes = multiscale_crop_candidates(455, 256)
    assert len(boxes) == 10 * 13
    assert boxes[0] == (0, 0, 256, 256)
    assert boxes[13 * 3 + 4] == (114, 16, 224, 224)  # pair (224, 224), centre offset
    for x, y, w, h in boxes:
        assert x >= 0 and x + w <= 455 and y >= 0 and y + h <= 256


def tsm_sample(rnd: random.Random, W: int, H: int):
    """TSM's GroupMultiScaleCrop._sample_crop_size (fix_crop, more_fix_crop), restated."""
    base = min(W, H)
    sizes = [int(base * s) for s in (1, 0.875, 0.75, 0.66)]
    hs = [224 if abs(s - 224) < 3 else s for s in sizes]
    ws = [224 if abs(s - 224) < 3 else s for s in sizes]
    pairs = [(w, h) for i, h in enumerate(hs) for j, w in enumerate(ws) if abs(i - j) <= 1]
    cw, ch = rnd.choice(pairs)
    a, b = (W - cw) // 4, (H - ch) // 4
    offs = [(0, 0), (4 * a, 0), (0, 4 * b), (4 * a, 4 * b), (2 * a, 2 * b), (0, 2 * b),
            (4 * a, 2 * b), (2 * a, 4 * b), (2 * a, 0), (a, b), (3 * a, b), (a, 3 * b),
            (3 * a, 3 * b)]  # fmt: skip
    x, y = rnd.choice(offs)
    return x, y, cw, ch


@given(st.integers(0, 10**6), st.integers(256, 700))
def test_sampling_matches_tsm_draw_for_draw(seed, W):
    r1, r2 = random.Random(seed), random.Random(seed)
    for _ in range(5):
        assert sample_multiscale_crop(W, 256, r1) == tsm_sample(r2, W, 256)


def test_numpy_sampling_distribution_uniform_over_candidates():
    rng = np.random.default_rng(0)
    counts = Counter(sample_multiscale_crop(455, 256, rng) for _ in range(13000))
    cand = Counter(multiscale_crop_candidates(455, 256))
    assert set(counts) == set(cand)
    for box, c in counts.items():  # expected 100 draws per candidate entry
        assert abs(c / cand[box] - 100) < 45


def test_free_offsets():
    rng = np.random.default_rng(1)
    for _ in range(50):
        x, y, w, h = sample_multiscale_crop(300, 256, rng, fix_crop=False)
        assert 0 <= x <= 300 - w and 0 <= y <= 256 - h
