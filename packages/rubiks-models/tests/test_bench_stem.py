"""benchmarks/bench_stem.py: its forms of the stem compute the stem's convolution, and the
script runs on a CPU."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F


def test_space_to_depth_weight_places_each_tap_once(benchmark_script):
    bench = benchmark_script("bench_stem")
    w = torch.arange(2 * 3 * 9, dtype=torch.float64).view(2, 3, 3, 3) + 1
    s2d = bench.space_to_depth_weight(w)
    assert s2d.shape == (2, 12, 2, 2)
    assert sorted(s2d[s2d != 0].tolist()) == sorted(w.flatten().tolist())
    x = torch.randn(1, 3, 8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(bench.space_to_depth(x, s2d), F.conv2d(x, w, stride=2, padding=1))


def test_script_checks_and_times_every_form_on_cpu(benchmark_script, tmp_path):
    bench = benchmark_script("bench_stem")
    out = tmp_path / "stem.json"
    argv = ["--tier", "tiny", "--dtypes", "float32", "--batch", "1", "--frames", "1"]
    assert bench.main([*argv, "--size", "16", "--device", "cpu", "--json", str(out)]) == 0
    forms = json.loads(out.read_text())["forms"]["float32"]
    assert set(forms) == {
        "write", "conv2d", "conv2d channels-last", "conv2d channels-last, 8 channels",
        "unfold + matmul", "space-to-depth 2x2",
    }  # fmt: skip
    assert all(v["us"] > 0 for v in forms.values())
    training = json.loads(out.read_text())["training"]["float32"]
    assert set(training) == {
        "weight grad, cuDNN", "weight grad, unfold + bmm", "step, conv2d", "step, node",
    }  # fmt: skip
    assert all(v["us"] > 0 for v in training.values())
