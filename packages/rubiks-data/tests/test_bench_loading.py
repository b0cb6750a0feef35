"""The data-loading benchmark script (benchmarks/bench_loading.py, not installed) runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_loading.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_loading", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_loading_writes_one_row_per_source_protocol_and_worker_count(tmp_path, capsys):
    bench = _load_script()
    out = tmp_path / "bench.json"
    argv = ["--videos", "2", "--size", "64x48", "--frames", "10", "--num-segments", "4",
            "--workers", "0", "--repeats", "1", "--frame-folders",
            "--dir", str(tmp_path / "data"), "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    doc = json.loads(out.read_text())
    rows = {(r["source"], r["protocol"], r["workers"]): r for r in doc["rows"]}
    assert set(rows) == {(s, p, 0) for s in ("webm", "jpg") for p in ("1clip", "2clip")}
    for (source, protocol, _), row in rows.items():
        assert row["clips_per_s"] > 0
        views = 6 if protocol == "2clip" else 1  # 2 clips x 3 crops
        assert abs(row["views_per_s"] - views * row["clips_per_s"]) < 1e-6 * row["views_per_s"]
        assert (row["decode_only"] is None) == (source == "jpg")
    assert "| webm | 1clip | 0 |" in capsys.readouterr().out
