"""benchmarks/bench_cpu.py runs every model form it names on a small clip and reports
each against TSM-R50."""

from __future__ import annotations

import json

import pytest


def test_script_times_models_round_by_round(benchmark_script, tmp_path, capsys):
    bench = benchmark_script("bench_cpu")
    out = tmp_path / "cpu.json"
    models = ["tsm_r50", "rubiksnet_tiny", "rubiksnet_tiny:fused"]
    argv = ["--models", *models, "--frames", "2", "--size", "32", "--rounds", "2", "--iters", "1"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| rubiksnet_tiny:fused |" in table and "x |" in table
    result = json.loads(out.read_text())
    assert result["clip"] == [1, 2, 3, 32, 32] and list(result["ms"]) == models
    assert all(len(times) == 2 for times in result["ms"].values())


@pytest.mark.parametrize(
    "argv,message",
    [(["--models", "rubiksnet_tiny:fast"], "unknown model form"), (["--rounds", "0"], ">= 1")],
)
def test_script_refuses_bad_arguments(benchmark_script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmark_script("bench_cpu").main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_compiled_forms_run_in_the_same_rounds(benchmark_script, monkeypatch, tmp_path, capsys):
    bench = benchmark_script("bench_cpu")
    compiled = []

    def fake_compile(model, **kwargs):  # the script's logic, not Inductor (tested elsewhere)
        compiled.append(kwargs)
        return lambda clip: model(clip)

    monkeypatch.setattr(bench.torch, "compile", fake_compile)
    out = tmp_path / "cpu.json"
    argv = ["--models", "tsm_r50", "rubiksnet_tiny:fused", "--frames", "2", "--size", "32"]
    argv += ["--rounds", "2", "--iters", "1", "--compile"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    assert compiled == [{"fullgraph": True}] * 2
    result = json.loads(out.read_text())
    assert list(result["ms"]) == [
        "tsm_r50", "tsm_r50 compiled", "rubiksnet_tiny:fused", "rubiksnet_tiny:fused compiled"
    ]  # fmt: skip
    assert set(result["compile_s"]) == {"tsm_r50", "rubiksnet_tiny:fused"}
    rows = {line.split(" | ")[0]: line for line in capsys.readouterr().out.splitlines()}
    ratio = (
        result["median_ms"]["rubiksnet_tiny:fused compiled"]
        / result["median_ms"]["tsm_r50 compiled"]
    )
    assert rows["| rubiksnet_tiny:fused compiled"].endswith(f"| {ratio:.2f}x |")
    assert rows["| tsm_r50 compiled"].endswith("| - |")
