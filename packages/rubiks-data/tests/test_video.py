"""PyAV decoding of sampled frames, and broken files reported by reason."""

from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rubiks_data.video import DecodeError, VideoReader, count_frames, read_frames


def decode_all(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("fmt", ["webm", "mp4"])
def test_counts_and_matches_full_decode(keyint_videos, fmt):
    path = keyint_videos[fmt]
    ref = decode_all(path)
    assert len(ref) == 30 and count_frames(path) == 30
    with VideoReader(path) as r:
        assert r.num_frames == 30 and r.size == (96, 64)
        got = r.frames([29, 0, 13, 13, 4])
        assert [
            np.array_equal(np.asarray(g), ref[i])
            for g, i in zip(got, [29, 0, 13, 13, 4], strict=True)
        ] == [True] * 5
        again = r.frames([7])  # a second call on the same reader
        assert np.array_equal(np.asarray(again[0]), ref[7])


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(["webm", "mp4"]), st.lists(st.integers(0, 29), min_size=1, max_size=8))
def test_random_index_sets_equal_full_decode(keyint_videos, fmt, indices):
    ref = _cached_reference(keyint_videos[fmt])
    got = read_frames(keyint_videos[fmt], indices)
    assert all(np.array_equal(np.asarray(g), ref[i]) for g, i in zip(got, indices, strict=True))


_REF: dict = {}


def _cached_reference(path):
    if path not in _REF:
        _REF[path] = decode_all(path)
    return _REF[path]


def test_out_of_range_index(keyint_videos):
    with VideoReader(keyint_videos["webm"]) as r, pytest.raises(IndexError):
        r.frames([30])


def test_iter_frames_all(keyint_videos):
    with VideoReader(keyint_videos["mp4"]) as r:
        assert len(list(r.iter_frames())) == 30


def _reason(path) -> str:
    with pytest.raises(DecodeError) as info:
        VideoReader(path)
    return str(info.value)


def test_broken_files(tmp_path, keyint_videos):
    assert "missing file" in _reason(tmp_path / "nope.webm")
    (tmp_path / "zero.webm").write_bytes(b"")
    assert _reason(tmp_path / "zero.webm") == "empty file (0 bytes)"
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 50)
    assert _reason(tmp_path / "junk.mp4").startswith("unreadable")
    data = keyint_videos["webm"].read_bytes()
    (tmp_path / "half.webm").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / "half.webm").startswith("truncated")
    reasons = set()
    for cut in range(50, 1200, 25):  # header only, or a first frame cut short
        (tmp_path / "head.webm").write_bytes(data[:cut])
        reasons.add(_reason(tmp_path / "head.webm").split(" (")[0])
    assert "truncated" in reasons and reasons <= {"zero frames", "unreadable", "truncated"}
    mp4 = keyint_videos["mp4"].read_bytes()
    (tmp_path / "half.mp4").write_bytes(mp4[: len(mp4) // 2])
    assert _reason(tmp_path / "half.mp4").startswith(("unreadable", "truncated"))


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "audio.webm"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libopus", rate=48000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 960), np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = 48000
        for _ in range(5):
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    assert _reason(path) == "no video stream"


@pytest.mark.parametrize("fmt", ["webm", "mp4"])
def test_decode_order_fallback_without_timestamps(keyint_videos, fmt):
    ref = _cached_reference(keyint_videos[fmt])
    with VideoReader(keyint_videos[fmt]) as r:
        r._has_pts = False  # as for a container without packet timestamps
        got = r.frames([5, 1, 29, 5])
    assert all(
        np.array_equal(np.asarray(g), ref[i]) for g, i in zip(got, [5, 1, 29, 5], strict=True)
    )


def _read_in_child(path, queue) -> None:
    queue.put(np.asarray(read_frames(path, [0, 5])[1]).sum())


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="needs fork")  # fmt: skip
def test_decodes_in_a_forked_child_after_the_parent_did(keyint_videos):
    """A forked child (a DataLoader worker) converts frames with a scaler of its own: with
    the parent's, inherited with slice threads the child does not have, it hung."""
    import multiprocessing

    path = keyint_videos["webm"]
    want = np.asarray(read_frames(path, [0, 5])[1]).sum()  # the parent's scaler exists now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(path, queue))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("a forked child hung converting frames")
    assert child.exitcode == 0
    assert queue.get(timeout=5) == want
