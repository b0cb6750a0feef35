"""Smoke tests of the scripts in tools/ (run from a checkout; the packages installed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.parametrize("arch", ["rubiksnet_tiny", "rubiksnet_tiny_aq"])
def test_plot_shifts_draws_every_stage_and_axis(tmp_path, arch):
    import timm

    from rubiks_models.deploy import quantize_model
    from rubiks_models.weights import save_weights

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=5)
    if arch.endswith("_aq"):
        model = quantize_model(model)  # the deployed form stores integer temporal shifts
    save_weights(model, tmp_path / "m.safetensors")
    out = tmp_path / "plots" / "shifts.png"
    proc = _run(str(TOOLS / "plot_shifts.py"), str(tmp_path / "m.safetensors"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(out.with_suffix(".json").read_text())
    stages = [k for k in summary if k.isdigit()]
    assert len(stages) == 5 and all(set(summary[s]) == {"T", "H", "W"} for s in stages)
    if arch.endswith("_aq"):  # hard temporal shifts are integers in {-1, 0, 1}
        assert all(summary[s]["T"]["min"] >= -1 and summary[s]["T"]["max"] <= 1 for s in stages)


def test_plot_shifts_refuses_a_missing_checkpoint(tmp_path):
    proc = _run(str(TOOLS / "plot_shifts.py"), str(tmp_path / "nope.safetensors"))
    assert proc.returncode != 0 and "nope.safetensors" in proc.stderr


def test_shift_ablation_quick_run_writes_every_variant(tmp_path):
    proc = _run(
        str(TOOLS / "shift_ablation.py"),
        "--out",
        str(tmp_path),
        "--quick",
        "--workers",
        "1",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert set(doc["variants"]) == {"full", "frozen", "aq"}
    assert doc["variants"]["frozen"]["max_abs_temporal_shift"] == 0.0
    aq = doc["variants"]["aq"]
    assert aq["aq_hard_shifted_fraction"] <= aq["aq_budget"]
    assert 0 <= aq["hardened_val_top1"] <= 100
    lines = (tmp_path / "full.jsonl").read_text().splitlines()
    assert len(lines) == doc["settings"]["epochs"]


def test_plot_shifts_never_replaces_a_file(tmp_path):
    from rubiks_models import RubiksNet
    from rubiks_models.weights import save_weights

    ckpt = tmp_path / "m.safetensors"
    save_weights(RubiksNet("tiny", 3), ckpt)
    before = ckpt.read_bytes()
    taken = tmp_path / "old.png"
    taken.write_bytes(b"mine")
    cases = [
        (["-o", str(ckpt)], "name a .png file"),
        (["-o", str(taken)], "exists; pass --overwrite"),
        (["-o", str(tmp_path / "p.png"), "--limit", "0"], "--limit must be > 0"),
    ]
    for extra, message in cases:
        proc = _run(str(TOOLS / "plot_shifts.py"), str(ckpt), *extra)
        assert proc.returncode == 2 and "plot_shifts.py: error: " in proc.stderr
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr
    assert ckpt.read_bytes() == before and taken.read_bytes() == b"mine"


def test_shift_ablation_checks_settings_and_an_earlier_run_first(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    cases = [
        (["--variants", "full,sideways"], "unknown ['sideways']"),
        (["--crop", "99"], "--crop must be in 1..--size"),
        (["--device", "gpu9"], "is not a device"),
        ([], "holds a previous run (results.json"),
    ]
    for extra, message in cases:
        proc = _run(str(TOOLS / "shift_ablation.py"), "--out", str(tmp_path), *extra)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert (tmp_path / "results.json").read_text() == "{}"


def test_train_demo_help_lists_its_own_options():
    proc = _run(str(TOOLS / "train_demo.py"), "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: train_demo.py")
    for flag in ("--export", "--data", "--classes", "--num-train", "--num-val", "--overwrite"):
        assert flag in proc.stdout
    assert "tools/train.py" in proc.stdout and "--lr 0.02" in proc.stdout
