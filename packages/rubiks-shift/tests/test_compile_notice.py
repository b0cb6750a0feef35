"""The first-call compile notice: logged once per kernel when the call is slow."""

import logging
import time

import pytest
import torch

from rubiks_shift import _compile_notice, _cpu, rubiks_shift3d


@pytest.fixture
def quick_notice(monkeypatch):
    monkeypatch.setattr(_compile_notice, "DELAY_S", 0.05)
    monkeypatch.setattr(_compile_notice, "_finished", set())


def _notices(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "rubiks_shift"]


def test_slow_first_call_logs_once_per_key(quick_notice, caplog):
    caplog.set_level(logging.WARNING, logger="rubiks_shift")
    with _compile_notice.compile_notice("kernel A", "a"):
        time.sleep(1.0)  # far past the delay, even on a loaded machine
    with _compile_notice.compile_notice("kernel A", "a"):
        time.sleep(1.0)  # far past the delay, even on a loaded machine
    assert _notices(caplog) == ["rubiks-shift: compiling kernel A with Numba (first use) ..."]


def test_fast_call_logs_nothing(quick_notice, caplog):
    caplog.set_level(logging.WARNING, logger="rubiks_shift")
    with _compile_notice.compile_notice("kernel B", "b"):
        pass
    time.sleep(0.15)  # past the delay: a timer left running would have fired by now
    assert _notices(caplog) == []


def test_a_failed_call_is_not_marked_finished(quick_notice, caplog):
    caplog.set_level(logging.WARNING, logger="rubiks_shift")
    with pytest.raises(ValueError), _compile_notice.compile_notice("kernel C", "c"):
        raise ValueError("boom")
    assert "c" not in _compile_notice._finished
    time.sleep(0.15)
    assert _notices(caplog) == []


def test_cpu_forward_and_backward_announce_their_kernels(quick_notice, caplog, monkeypatch):
    """The CPU backend wraps its kernel calls (made slow here) in the notice."""
    for name in ("forward", "backward"):
        real = getattr(_cpu._kernels, name)

        def slow(*args, _real=real):
            time.sleep(1.0)  # far past the delay, even on a loaded machine
            return _real(*args)

        monkeypatch.setattr(_cpu._kernels, name, slow)
    caplog.set_level(logging.WARNING, logger="rubiks_shift")
    x = torch.randn(1, 2, 3, 4, 4, requires_grad=True)
    shift = torch.full((3, 3), 0.25, requires_grad=True)
    rubiks_shift3d(x, shift).sum().backward()
    got = _notices(caplog)
    assert len(got) == 2
    assert "the CPU forward kernel for float32" in got[0]
    assert "the CPU backward kernel for float32" in got[1]


def test_cuda_launcher_announces_a_slow_compile_with_its_label(quick_notice, caplog, monkeypatch):
    """The CUDA launch path's one-time compile (a stand-in dispatcher here: no GPU needed)
    runs inside the notice, labelled with the step and the storage dtypes."""
    pytest.importorskip("numba.cuda")
    from types import SimpleNamespace

    from numba import types as nt

    from rubiks_shift import _cuda_launch
    from rubiks_shift._cuda_plan import Step

    class SlowDispatcher:
        def compile(self, signature):
            time.sleep(1.0)  # far past the delay, even on a loaded machine
            cufunc = SimpleNamespace(handle=1234)
            library = SimpleNamespace(get_cufunc=lambda: cufunc)
            return SimpleNamespace(argument_types=signature, _codelibrary=library)

    monkeypatch.setattr(_cuda_launch, "_function_handle", lambda handle: handle)
    monkeypatch.setattr(_cuda_launch, "_cu_launch_kernel", lambda: None)
    monkeypatch.setattr(_cuda_launch, "_ensure_context", lambda index: None)
    for name, value in (("functions", {}), ("entries", {}), ("cu_launch", None)):
        monkeypatch.setattr(_cuda_launch._Launcher, name, value)  # restored after the test
    kernels = SimpleNamespace(
        storage="bfloat16", shift_storage="float32", gather=SlowDispatcher(),
        gather_sig=(nt.CPointer(nt.int16), nt.int64, nt.float64),
    )  # fmt: skip
    step = Step("gather", (1, 1, 1), (32, 1, 1), (7, 0.5))  # waves 0: no occupancy query
    caplog.set_level(logging.WARNING, logger="rubiks_shift")
    entry = _cuda_launch._Launcher.prepare(kernels, step, 1, 0)
    assert entry.handle == 1234 and entry.step is step
    assert _notices(caplog) == [
        "rubiks-shift: compiling the CUDA gather kernel for bfloat16 (shift float32) for "
        "device 0 with Numba (once per process and dtype) ..."
    ]
