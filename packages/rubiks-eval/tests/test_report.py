import numpy as np
import pytest

from rubiks_eval.evaluate import evaluate
from rubiks_eval.report import (
    format_summary,
    format_table,
    results_dict,
    save_confusion_png,
    save_scores,
)
from rubiks_eval.testing import FakeVideoDataset, FakeVideoModel


@pytest.fixture(scope="module")
def result():
    ds = FakeVideoDataset(n=9, num_classes=4, views=2, broken=(3,))
    return evaluate(FakeVideoModel(4), ds, batch_size=4, progress=False)


def test_summary_names_failures_and_denominator(result):
    text = format_summary(result, "== t ==")
    assert "of 9 listed videos" in text and "video0003: corrupt stream (fake)" in text
    assert "| t |" in format_table([("t", result)])


def test_results_and_scores(result, tmp_path):
    doc = results_dict(result, {"x": 1}, per_video=True)
    assert doc["metrics"]["num_failed"] == 1 and len(doc["videos"]) == 8
    save_scores(tmp_path / "s.npz", result)
    z = np.load(tmp_path / "s.npz")
    assert z["scores"].shape == (8, 4) and list(z["failed_video_ids"]) == ["video0003"]


def test_confusion_png(result, tmp_path):
    pytest.importorskip("matplotlib")
    path = save_confusion_png(tmp_path / "cm.png", result, ["a", "b", "c", "d"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
