"""benchmarks/bench_models.py: with --profile every timing runs before any profile (a
trace slows the host-bound timings after it), and the profiles land beside the times."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest


def test_profiles_run_after_every_timing(benchmark_script, monkeypatch, tmp_path):
    bench = benchmark_script("bench_models")
    calls = []

    def fake_run_mode(name, mode, args, profile=0):
        calls.append((name, mode, profile))
        if name == "broken":
            raise RuntimeError("no such model")
        return {"profile": {"gpu_ms_per_call": 1.0}} if profile else {"ms": 2.0}

    monkeypatch.setattr(bench, "run_mode", fake_run_mode)
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda *a: "test device")
    out = tmp_path / "r.json"
    models = ["tsm_r50", "rubiksnet_tiny", "broken"]
    argv = ["--models", *models, "--modes", "infer_fp32", "infer_bf16", "--profile", "2"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    timed = [c for c in calls if c[2] == 0]
    profiled = [c for c in calls if c[2] == 2]
    assert len(timed) == 6 and calls[:6] == timed
    assert {c[:2] for c in profiled} == {c[:2] for c in timed if c[0] != "broken"}
    saved = json.loads(out.read_text())
    host = saved["info"]["host"]  # the host's CPU and load, at the start and the end
    assert host["cpus_usable"] >= 1 and host["cpu"]
    assert len(host["load_start"]) == len(host["load_end"]) == 3
    results = saved["results"]
    assert results["rubiksnet_tiny"]["infer_bf16"] == {
        "ms": 2.0, "profile": {"gpu_ms_per_call": 1.0}
    }  # fmt: skip
    assert "error" in results["broken"]["infer_fp32"]
    assert "profile" not in results["broken"]["infer_fp32"]


def test_without_profile_each_run_is_timed_once(benchmark_script, monkeypatch):
    bench = benchmark_script("bench_models")
    calls = []
    monkeypatch.setattr(
        bench, "run_mode", lambda name, mode, args, profile=0: calls.append(profile) or {"ms": 1}
    )
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda *a: "test device")
    assert bench.main(["--models", "tsm_r50", "--modes", "infer_fp32", "train_fp32"]) == 0
    assert calls == [0, 0]


def test_matmul_precision_holds_for_every_run_and_is_recorded(
    benchmark_script, monkeypatch, tmp_path
):
    bench = benchmark_script("bench_models")
    seen = []

    def fake_run_mode(name, mode, args, profile=0):
        seen.append(bench.torch.get_float32_matmul_precision())
        return {"ms": 1.0}

    monkeypatch.setattr(bench, "run_mode", fake_run_mode)
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda *a: "test device")
    before = bench.torch.get_float32_matmul_precision()
    out = tmp_path / "r.json"
    argv = ["--models", "tsm_r50", "rubiksnet_tiny", "--modes", "infer_fp32"]
    try:
        assert bench.main([*argv, "--matmul-precision", "high", "--json", str(out)]) == 0
    finally:
        bench.torch.set_float32_matmul_precision(before)
    assert seen == ["high", "high"]
    assert json.loads(out.read_text())["info"]["float32_matmul_precision"] == "high"


def test_profiler_cost_times_every_run_before_and_after_one_trace(
    benchmark_script, monkeypatch, capsys
):
    bench = benchmark_script("bench_profiler_cost")
    calls = []

    def fake_run_mode(name, mode, args, profile=0):
        calls.append((name, mode, profile))
        return {"profile": {}} if profile else {"ms": 2.0 if calls[-1] in calls[:-1] else 1.0}

    monkeypatch.setattr(bench.bench_models, "run_mode", fake_run_mode)
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda *a: "test device")
    assert bench.main(["--models", "a", "b", "--modes", "infer_fp32"]) == 0
    assert calls == [
        ("a", "infer_fp32", 0), ("b", "infer_fp32", 0), ("a", "infer_fp32", 2),
        ("a", "infer_fp32", 0), ("b", "infer_fp32", 0),
    ]  # fmt: skip
    assert "| infer_fp32 b | 1.00 | 2.00 | 2.00x |" in capsys.readouterr().out


def test_profiler_cost_refuses_compiled_modes(benchmark_script, monkeypatch):
    bench = benchmark_script("bench_profiler_cost")
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit):
        bench.main(["--modes", "infer_compile_bf16"])


def test_issue_time_is_the_median_host_time_of_one_call(benchmark_script, monkeypatch):
    bench = benchmark_script("bench_models")
    syncs = []
    monkeypatch.setattr(bench.torch.cuda, "synchronize", lambda: syncs.append(1))
    clock = iter([0.0, 0.001, 1.0, 1.005, 2.0, 2.002])  # calls of 1, 5 and 2 ms
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    assert bench.issue_time(lambda: None, 3) == pytest.approx(2.0)
    assert len(syncs) == 4  # before each call, and once after


def test_table_gives_ratio_host_time_and_memory(benchmark_script):
    bench = benchmark_script("bench_models")
    results = {
        "tsm_r50": {"train_fp32": {"ms": 40.0, "host_ms": 12.0, "peak_gib": 7.2}},
        "rubiksnet_large": {
            "train_fp32": {"ms": 20.0, "host_ms": 18.5, "peak_gib": 7.0, "reserved_gib": 7.5}
        },
        "rubiksnet_tiny": {"train_fp32": {"error": "RuntimeError: x"}},
    }
    lines = bench.table(results, list(results), ["train_fp32"]).splitlines()
    assert lines[-1] == (
        "| train_fp32 | 40.00, host 12.00, 7.2 GiB "
        "| 20.00 (0.50x), host 18.50, 7.0 GiB (reserved 7.5) | error |"
    )


def test_host_profile_names_the_functions_that_take_the_time(benchmark_script, monkeypatch):
    bench = benchmark_script("bench_models")
    monkeypatch.setattr(bench.torch.cuda, "synchronize", lambda *a: None)

    def busy_block():
        return sum(i * i for i in range(20000))

    def forward():
        for _ in range(3):
            busy_block()

    args = SimpleNamespace(profile_host=True)
    out = bench._measure(forward, args, 4, {})["profile"]
    assert out["profiled_ms_per_call"] > 0
    rows = {r["function"].split("(")[-1].rstrip(")"): r for r in out["top_functions"]}
    assert rows["busy_block"]["calls"] == 3.0  # per profiled call
    assert rows["busy_block"]["with_callees_us_per_call"] >= rows["busy_block"]["own_us_per_call"]


def test_host_profile_needs_profile(benchmark_script, monkeypatch, capsys):
    bench = benchmark_script("bench_models")
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit):
        bench.main(["--models", "tsm_r50", "--profile-host"])
    assert "--profile-host needs --profile N" in capsys.readouterr().err


def test_rounds_time_every_run_once_per_round_and_report_the_median(
    benchmark_script, monkeypatch, tmp_path
):
    bench = benchmark_script("bench_models")
    calls = []
    times = {"tsm_r50": iter([10.0, 12.0, 11.0]), "rubiksnet_tiny": iter([3.0, 9.0, 4.0])}
    flaky = iter(
        [{"error": "RuntimeError: once"}, {"ms": 5.0, "host_ms": 1.0}, {"skipped": "budget"}]
    )

    def fake_run_mode(name, mode, args, profile=0):
        calls.append(name)
        if name == "flaky":
            return next(flaky)
        ms = next(times[name])
        return {"ms": ms, "host_ms": ms / 2, "peak_gib": ms / 10, "reserved_gib": ms / 5}

    monkeypatch.setattr(bench, "run_mode", fake_run_mode)
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda *a: "test device")
    out = tmp_path / "r.json"
    argv = ["--models", "tsm_r50", "rubiksnet_tiny", "flaky", "--modes", "train_fp32"]
    assert bench.main([*argv, "--rounds", "3", "--json", str(out)]) == 0
    assert calls == ["tsm_r50", "rubiksnet_tiny", "flaky"] * 3  # round after round
    results = json.loads(out.read_text())["results"]
    tiny = results["rubiksnet_tiny"]["train_fp32"]
    assert tiny["rounds"] == [3.0, 9.0, 4.0] and tiny["ms"] == 4.0
    assert tiny["host_rounds"] == [1.5, 4.5, 2.0] and tiny["host_ms"] == 2.0
    assert tiny["peak_gib"] == 0.9 and tiny["reserved_gib"] == 1.8
    flaky_entry = results["flaky"]["train_fp32"]
    assert flaky_entry["ms"] == 5.0
    assert flaky_entry["round_errors"] == ["RuntimeError: once", "budget"]
    row = bench.table(results, ["tsm_r50", "rubiksnet_tiny"], ["train_fp32"]).splitlines()[-1]
    assert row.startswith(
        "| train_fp32 | 11.00 [10.00-12.00], host 5.50, 1.2 GiB (reserved 2.4) "
        "| 4.00 [3.00-9.00] (0.36x)"
    )


def test_fused_compile_forms_are_built_and_checked(benchmark_script):
    bench = benchmark_script("bench_models")
    for suffix, expected in (("", "auto"), (":traced", "traced"), (":one_op", "one_op")):
        model, trains = bench.build(f"rubiksnet_tiny:fused{suffix}", 5, 2, device="cpu")
        assert model.compile_as == expected and not trains
    for name in ("rubiksnet_tiny:traced", "rubiksnet_tiny:fused:traced:one_op"):
        with pytest.raises(ValueError, match="one form of a fused model"):
            bench.build(name, 5, 2, device="cpu")


def test_fused_epilogue_forms_are_built_and_checked(benchmark_script):
    bench = benchmark_script("bench_models")
    for suffix, expected in (("", "auto"), (":epilogue-on", "on"), (":epilogue-off", "off")):
        model, _ = bench.build(f"rubiksnet_tiny:fused{suffix}", 5, 2, device="cpu")
        assert {block.conv1_epilogue for block in model.blocks} == {expected}
    for name in ("rubiksnet_tiny:epilogue-on", "rubiksnet_tiny:fused:epilogue-on:epilogue-off"):
        with pytest.raises(ValueError, match="one form of a fused model"):
            bench.build(name, 5, 2, device="cpu")


def test_fused_replay_off_form_is_built_and_checked(benchmark_script):
    bench = benchmark_script("bench_models")
    model, _ = bench.build("rubiksnet_tiny:fused", 5, 2, device="cpu")
    assert any(block.replays_forward for block in model.blocks)
    model, _ = bench.build("rubiksnet_tiny:fused:replay-off", 5, 2, device="cpu")
    assert not any(block.replays_forward for block in model.blocks)
    with pytest.raises(ValueError, match="one form of a fused model"):
        bench.build("rubiksnet_tiny:replay-off", 5, 2, device="cpu")


def test_graphs_off_form_turns_either_models_graphs_off(benchmark_script):
    bench = benchmark_script("bench_models")
    model, _ = bench.build("rubiksnet_tiny:graphs-off", 5, 2, device="cpu")
    assert not any(stage.eager_graphs for stage in model.stages)
    model, _ = bench.build("rubiksnet_tiny:fused", 5, 2, device="cpu")
    assert model.eager_graphs
    model, _ = bench.build("rubiksnet_tiny:fused:graphs-off", 5, 2, device="cpu")
    assert not model.eager_graphs


@pytest.mark.parametrize(
    ("form", "setting", "value"),
    [
        ("compiled-replays", "compiled_replays", True),
        ("traced-stages", "compiled_replays", False),
    ],
)
def test_unfused_training_forms_are_built_and_checked(benchmark_script, form, setting, value):
    """Each form sets its setting (the two stage-op forms set opposite values, so one of
    them differs from the default)."""
    bench = benchmark_script("bench_models")
    model, _ = bench.build(f"rubiksnet_tiny:{form}", 5, 2, device="cpu")
    assert all(getattr(stage, setting) is value for stage in model.stages)
    with pytest.raises(ValueError, match="form of an unfused model"):
        bench.build(f"rubiksnet_tiny:fused:{form}", 5, 2, device="cpu")
    with pytest.raises(ValueError, match="exclude each other"):
        bench.build("rubiksnet_tiny:compiled-replays:traced-stages", 5, 2, device="cpu")


def test_keep_activations_form_turns_recomputation_off(benchmark_script):
    bench = benchmark_script("bench_models")
    model, _ = bench.build("rubiksnet_tiny", 5, 2, device="cpu")
    blocks = [m for m in model.modules() if hasattr(m, "recompute_activations")]
    assert blocks and all(b.recompute_activations for b in blocks)
    model, _ = bench.build("rubiksnet_tiny:keep-activations", 5, 2, device="cpu")
    blocks = [m for m in model.modules() if hasattr(m, "recompute_activations")]
    assert blocks and not any(b.recompute_activations for b in blocks)
    with pytest.raises(ValueError, match="form of an unfused model"):
        bench.build("rubiksnet_tiny:fused:keep-activations", 5, 2, device="cpu")


def test_bench_tuning_alternates_default_and_changed_tuning(benchmark_script, monkeypatch, capsys):
    """bench_tuning.py: each (model, mode) runs under the default tuning, then the changed
    one, round after round; a kernel-defining field or an unknown one is refused before
    any model is built."""
    from rubiks_shift import _cuda
    from rubiks_shift._cuda_tuning import TUNING

    bench = benchmark_script("bench_tuning")
    seen = []

    def fake_run_mode(name, mode, args):
        seen.append((name, mode, _cuda._tuning.pixel_walk_affine_plane))
        return {"ms": 2.0 if _cuda._tuning == TUNING else 3.0}

    monkeypatch.setattr(bench, "run_mode", fake_run_mode)
    argv = ["--set", "pixel_walk_affine_plane=0", "--models", "m", "--modes", "a", "b"]
    assert bench.main([*argv, "--rounds", "2"]) == 0
    plane = TUNING.pixel_walk_affine_plane
    assert seen == [("m", "a", plane), ("m", "a", 0), ("m", "b", plane), ("m", "b", 0)] * 2
    assert "| m | a | 2.00 / 2.00 | 3.00 / 3.00 (1.500x) |" in capsys.readouterr().out
    assert _cuda._tuning == TUNING  # restored
    with pytest.raises(ValueError, match="compile-time values"):
        bench.main(["--set", "pixel_walk_rows=1", "--models", "m"])
    with pytest.raises(SystemExit):
        bench.main(["--set", "no_such_field=1"])
    assert len(seen) == 8


def test_reserved_memory_is_split_by_where_it_can_be_reused(benchmark_script):
    bench = benchmark_script("bench_models")
    gib = 2**30
    segments = [
        {"stream": 7, "segment_pool_id": (0, 0), "total_size": 2 * gib, "allocated_size": gib},
        {"stream": 7, "segment_pool_id": (0, 0), "total_size": gib, "allocated_size": 0},
        {"stream": 9, "segment_pool_id": (0, 0), "total_size": gib // 2, "allocated_size": 0},
        {"stream": 9, "segment_pool_id": (1, 3), "total_size": gib, "allocated_size": gib // 4},
        {"stream": 7, "segment_pool_id": (2, 1), "total_size": gib, "allocated_size": 0},
    ]
    assert bench.reserved_by_pool(segments, stream=7) == {
        "CUDA graph pools": {"reserved_gib": 2.0, "allocated_gib": 0.25},
        "default pool, other streams": {"reserved_gib": 0.5, "allocated_gib": 0.0},
        "default pool, this stream": {"reserved_gib": 3.0, "allocated_gib": 1.0},
    }
    assert bench.reserved_by_pool([], stream=7) == {}


def test_profile_keeps_the_kernels_asked_for(benchmark_script, monkeypatch):
    """``--profile-kernels K`` reaches the kernel profile (0: every kernel); a negative
    K is a usage error."""
    bench = benchmark_script("bench_models")
    seen = []
    fake = lambda fn, iters, top=12: seen.append((iters, top)) or {"top_kernels": []}
    monkeypatch.setattr(bench, "profile_kernels", fake)
    result = bench._measure(lambda: None, SimpleNamespace(profile_kernels=0), 3, {})
    assert seen == [(3, 0)] and result == {"profile": {"top_kernels": []}}
    with pytest.raises(SystemExit):
        bench.main(["--models", "tsm_r50", "--modes", "infer_fp32", "--profile-kernels", "-1"])
