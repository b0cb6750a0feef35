import pytest

from rubiks_eval.cache import cached_directory


def test_cached_directory_builds_once_and_atomically(tmp_path):
    calls = []

    def build(d):
        calls.append(d)
        (d / "x.txt").write_text("hi")

    p1, built1 = cached_directory(tmp_path, "syn", {"n": 3}, build)
    p2, built2 = cached_directory(tmp_path, "syn", {"n": 3}, build)
    assert p1 == p2 and built1 and not built2 and len(calls) == 1
    assert (p1 / "x.txt").read_text() == "hi"
    p3, _ = cached_directory(tmp_path, "syn", {"n": 4}, build)
    assert p3 != p1

    def crash(d):
        (d / "half").write_text("")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_directory(tmp_path, "syn", {"n": 5}, crash)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p1.name, p3.name])
