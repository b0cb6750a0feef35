import json

import pytest

from rubiks_eval.io import atomic_write, atomic_write_json


def test_atomic_write_json_replaces_and_cleans(tmp_path):
    path = tmp_path / "sub" / "r.json"
    atomic_write_json(path, {"a": float("nan"), "b": [1.5]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5]}

    def boom(tmp):
        with open(tmp, "w") as fh:
            fh.write("partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert json.loads(path.read_text())["b"] == [1.5]  # old content intact
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left
