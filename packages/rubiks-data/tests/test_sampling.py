"""docs/spec.md §3.2 temporal sampling, checked against worked examples and TSM's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rubiks_data.sampling import dense_indices, test_indices, train_indices


def tsm_test_offsets(L: int, n: int, twice: bool) -> list[int]:
    """TSM's _get_test_indices (1-based), restated independently."""
    tick = (L - 1 + 1) / float(n)
    offs = [int(tick / 2.0 + tick * x) for x in range(n)]
    if twice:
        offs += [int(tick * x) for x in range(n)]
    return [o + 1 for o in offs]


def tsm_dense_offsets(L: int, n: int) -> list[int]:
    pos = max(1, 1 + L - 64)
    stride = 64 // n
    out = []
    for start in np.linspace(0, pos - 1, num=10, dtype=int).tolist():
        out += [(i * stride + start) % L for i in range(n)]
    return [o + 1 for o in out]


def test_worked_example_short_video():
    # docs/spec.md §3.2: L=3, n=8 -> frames 1,1,1,2,2,3,3,3 (1-based)
    assert [i + 1 for i in test_indices(3, 8)] == [1, 1, 1, 2, 2, 3, 3, 3]


def test_hand_computed_centres_and_starts():
    # tick = 50/8 = 6.25: centres floor(3.125 + 6.25 i), starts floor(6.25 i)
    assert test_indices(50, 8) == [3, 9, 15, 21, 28, 34, 40, 46]
    assert test_indices(50, 8, twice=True)[8:] == [0, 6, 12, 18, 25, 31, 37, 43]
    assert test_indices(3, 8, twice=True)[8:] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert test_indices(8, 8) == list(range(8))
    assert test_indices(1, 4, twice=True) == [0] * 8


@given(st.integers(1, 600), st.integers(1, 32), st.booleans())
def test_test_indices_match_tsm(L, n, twice):
    got = test_indices(L, n, twice)
    assert [i + 1 for i in got] == tsm_test_offsets(L, n, twice)
    assert len(got) == n * (2 if twice else 1)
    assert all(0 <= i < L for i in got)
    assert got[:n] == sorted(got[:n])


def test_dense_hand_computed():
    # L=100: S = 37, stride 8, starts linspace(0, 36, 10) -> 0, 4, ..., 36
    idx = dense_indices(100, 8)
    assert len(idx) == 80
    assert idx[:8] == [0, 8, 16, 24, 32, 40, 48, 56]
    assert [idx[8 * k] for k in range(10)] == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]
    # L=30 (< 64): every clip starts at 0 and wraps around mod L
    assert dense_indices(30, 8)[:8] == [0, 8, 16, 24, 2, 10, 18, 26]
    assert dense_indices(30, 8, num_clips=2) == dense_indices(30, 8)[:16]


@given(st.integers(1, 600), st.integers(1, 32))
def test_dense_matches_tsm_and_spec(L, n):
    got = dense_indices(L, n)
    assert [i + 1 for i in got] == tsm_dense_offsets(L, n)
    S = max(1, L - 63)
    starts = [k * (S - 1) // 9 for k in range(10)]  # docs/spec.md §3.2: floor(k (S-1) / 9)
    assert got == [((i * (64 // n)) + s) % L for s in starts for i in range(n)]


@settings(max_examples=200)
@given(st.integers(1, 400), st.integers(1, 16), st.integers(0, 2**32 - 1))
def test_train_indices_rule(L, n, seed):
    idx = train_indices(L, n, np.random.default_rng(seed))
    assert len(idx) == n
    d = L // n
    if d >= 1:
        for i, f in enumerate(idx):
            assert i * d <= f < (i + 1) * d
    else:  # L < n: the test rule (ours), not TSM's repeated frame 1
        assert idx == test_indices(L, n)
    assert idx == train_indices(L, n, seed)  # seeds reproduce


def test_train_indices_cover_every_offset():
    rng = np.random.default_rng(0)
    seen = {tuple(train_indices(24, 8, rng)) for _ in range(300)}
    flat = {f for s in seen for f in s}
    assert flat == set(range(24))  # d = 3: every frame reachable


@pytest.mark.parametrize("fn", [test_indices, train_indices, dense_indices])
@pytest.mark.parametrize("args", [(0, 8), (5, 0), (-1, 3), (2.5, 2)])
def test_bad_arguments(fn, args):
    with pytest.raises(ValueError, match="must be a positive integer"):
        fn(*args)


def test_dense_sampling_refuses_more_than_64_frames_per_clip():
    assert len(dense_indices(300, 64)) == 640
    with pytest.raises(ValueError, match="at most 64 frames per clip"):
        dense_indices(300, 65)
