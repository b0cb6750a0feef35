import json

from rubiks_eval.checkpoint import weights_metadata
from rubiks_eval.demo import DEFAULT_CHECKPOINT, main


def test_bundled_checkpoint_is_small_and_described():
    assert DEFAULT_CHECKPOINT.stat().st_size < 5 * 2**20
    meta = weights_metadata(DEFAULT_CHECKPOINT)
    assert json.loads(meta["synthetic"])["classes"] and json.loads(meta["eval"])["crop_size"]


def test_demo_runs_on_a_small_generated_sample(tmp_path, capsys):
    sample = ["--cache-dir", str(tmp_path / "cache"), "--num-val", "8", "--protocols", "1clip"]
    sample += ["--no-progress", "-j", "0"]
    rc = main([*sample, "--output", str(tmp_path / "out"), "--min-top1", "0"])
    assert rc == 0
    assert "| 1clip |" in capsys.readouterr().out
    doc = json.loads((tmp_path / "out" / "results-1clip.json").read_text())
    assert doc["metrics"]["num_videos"] == 8
    # the second run reuses the cached videos
    assert main(sample) == 0
    assert "(cached" in capsys.readouterr().out


def test_demo_refuses_bad_options_before_work(tmp_path, capsys):
    import pytest

    out = tmp_path / "out"
    out.mkdir()
    (out / "results-1clip.json").write_text("keep")
    for argv, message in (
        (["--device", "gpu9"], "is not a device"),
        (["-b", "0"], "--batch-size must be >= 1"),
        (["--output", str(out), "--protocols", "1clip"], "exists; pass --overwrite"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["--cache-dir", str(tmp_path / "cache"), *argv])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "error: " in err and message in err
    assert (out / "results-1clip.json").read_text() == "keep"
    assert not (tmp_path / "cache").exists()  # nothing was generated
