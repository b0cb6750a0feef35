"""A fused model's eager forward replayed as one CUDA graph: from a signature's second
consecutive call the model replays its captured forward, computes what its blocks compute,
and steps aside wherever a replay could differ.

On the CPU a stand-in takes the place of the CUDA graph (``StandIn``: its "replays" run
the captured forward on a static input of its own), so the bookkeeping around it is
tested everywhere; the real graphs are tested on a GPU (``requires_cuda``)."""

from __future__ import annotations

import copy
import pickle
from typing import ClassVar

import pytest
import timm
import torch

import rubiks_models  # noqa: F401  (registers the models)
from rubiks_models import inference_graphs
from rubiks_models.cuda_graphs import GraphedInference
from rubiks_models.fused import fuse_model

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class StandIn:
    """A captured forward whose replays run it on a static input of its own (CPU tests)."""

    log: ClassVar[list[str]] = []
    fail = False

    def __init__(self, forward, x, dtype) -> None:
        if StandIn.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        StandIn.log.append("capture")
        self.forward, self.static_x = forward, x.to(dtype, copy=True)

    def __call__(self, x):
        StandIn.log.append("replay")
        self.static_x.copy_(x)
        return self.forward(self.static_x).clone()


@pytest.fixture
def stand_in(monkeypatch):
    StandIn.log, StandIn.fail = [], False
    monkeypatch.setattr(inference_graphs, "_GRAPH_DEVICES", ("cuda", "cpu"))
    return StandIn.log


def _trained_looking(name: str = "rubiksnet_tiny", device: str = "cpu") -> torch.nn.Module:
    model = timm.create_model(name, num_classes=5).to(device).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _fused(name: str = "rubiksnet_tiny", device: str = "cpu", capture=StandIn, **kwargs):
    fused = fuse_model(_trained_looking(name, device), **kwargs)
    fused._graphs.capture = capture
    return fused


def _pair(**kwargs):
    """(a fused model that replays, a copy of it that runs its blocks directly)."""
    model = _fused(**kwargs)
    twin = copy.deepcopy(model)
    twin.set_eager_graphs(False)
    return model, twin


def _clip(seed: int, batch: int = 2, device: str = "cpu", dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, 3, 32, 32, generator=g, dtype=dtype).to(device)


# ----------------------------------------------------------------------------- CPU


def test_replays_from_the_second_call_and_computes_what_the_blocks_compute(stand_in):
    model, twin = _pair()
    model.double(), twin.double()
    with torch.no_grad():
        for seed in range(4):
            x = _clip(seed)
            got = model(x)
            assert torch.equal(got, twin(x))
            assert stand_in == ["capture", "replay"] * (seed >= 1) + ["replay"] * max(0, seed - 1)


def test_a_signature_captures_on_its_second_consecutive_call(stand_in):
    model, twin = _pair()
    with torch.no_grad():
        for batch in (2, 1, 2, 1):  # alternating signatures: never two in a row
            x = _clip(batch, batch, dtype=torch.float32)
            assert torch.equal(model(x), twin(x))
        assert stand_in == []
        model(_clip(0, 1, dtype=torch.float32))
        assert stand_in == ["capture", "replay"]
        model(_clip(0, 2, dtype=torch.float32))  # a new signature's first call: the blocks
        assert stand_in == ["capture", "replay"]
        model(_clip(0, 2, dtype=torch.float32))
        assert stand_in.count("capture") == 2
        captures = model._graphs.captures
        for _ in range(inference_graphs.MAX_CAPTURES - captures):
            for batch in (3, 3, 4, 4):
                model(_clip(0, batch, dtype=torch.float32))
        before = list(stand_in)
        model(_clip(0, 5, dtype=torch.float32))
        model(_clip(0, 5, dtype=torch.float32))  # past MAX_CAPTURES: the blocks
        assert stand_in == before


def test_the_compute_dtype_and_inference_mode_are_part_of_the_signature(stand_in):
    model, twin = _pair()
    x = _clip(0, dtype=torch.float32)
    with torch.no_grad():
        model(x), model(x)
    assert stand_in == ["capture", "replay"]
    with torch.inference_mode():
        got = model(x)  # another signature: the blocks
    assert stand_in == ["capture", "replay"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x), model(x)  # float32 input, bfloat16 compute: captured apart
        assert torch.equal(model(x), twin(x))
    assert stand_in == ["capture", "replay", "capture", "replay", "replay"]
    with torch.no_grad():
        assert torch.equal(got, twin(x))


@pytest.mark.parametrize(
    "setup",
    [
        "grad_input",
        "module_hook",
        "global_hook",
        "paused",
        "graphs_off",
        "foreign_module",
        "replica",
    ],
)
def test_the_model_runs_its_blocks_where_a_replay_could_differ(stand_in, setup):
    model, twin = _pair()
    x = _clip(0, dtype=torch.float32)
    handles = []
    if setup == "module_hook":
        handles.append(model.blocks[1].register_forward_hook(lambda m, i, o: None))
    elif setup == "global_hook":
        handles.append(torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: None))
    elif setup == "graphs_off":
        model.set_eager_graphs(False)
    elif setup == "foreign_module":
        model.blocks.append(torch.nn.Identity())
    elif setup == "replica":  # as nn.DataParallel marks the copies its threads run
        model = model._replicate_for_data_parallel()
    context = {"paused": inference_graphs.paused(), "grad_input": torch.enable_grad()}.get(
        setup, torch.no_grad()
    )
    try:
        with context:
            for _ in range(3):
                if setup == "grad_input":  # refused by the ops, as without graphs
                    with pytest.raises(RuntimeError, match="has no gradient"):
                        model(x.clone().requires_grad_())
                got = model(x) if setup != "grad_input" else twin(x)
    finally:
        for h in handles:
            h.remove()
    assert stand_in == []
    with torch.no_grad():
        assert torch.equal(got, twin(x))


def test_new_buffers_are_a_new_signature(stand_in):
    model, twin = _pair()
    x = _clip(0, dtype=torch.float32)
    with torch.no_grad():
        model(x), model(x)
        other = _fused()
        other.blocks[0].b1.add_(0.5)
        model.load_state_dict(other.state_dict())  # the half copies refreshed: new buffers
        twin.load_state_dict(other.state_dict())
        assert torch.equal(model(x), twin(x))
        assert stand_in == ["capture", "replay"]
        model(x)
        assert stand_in == ["capture", "replay", "capture", "replay"]
        model.double()  # new buffers: the graph is dropped
        assert model._graphs.captured is None


def test_copies_and_pickles_start_without_graphs(stand_in):
    model = _fused()
    x = _clip(0, dtype=torch.float32)
    with torch.no_grad():
        model(x), model(x)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert other._graphs is not model._graphs
        assert other._graphs.entry is None and other._graphs.last_key is None
        assert other._graphs.capture is StandIn and other.eager_graphs
    assert model._graphs.captured is not None


def test_a_failed_capture_warns_and_the_blocks_run_from_then_on(stand_in):
    model, twin = _pair()
    x = _clip(0, dtype=torch.float32)
    StandIn.fail = True
    with torch.no_grad():
        model(x)
        with pytest.warns(RuntimeWarning, match="could not be captured as a CUDA graph"):
            got = model(x)
        StandIn.fail = False
        model(x), model(x)
        assert torch.equal(got, twin(x))
    assert stand_in == []


def test_set_eager_graphs_checks_its_argument():
    with pytest.raises(TypeError, match="enable must be a bool"):
        _fused().set_eager_graphs(1)


# ----------------------------------------------------------------------------- GPU


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["rubiksnet_tiny", "rubiksnet_large"])
def test_cuda_replays_equal_the_blocks(name, dtype):
    """Bit for bit where the graph runs the eager kernels (bn2's bias + ReLU kept in the
    shift); "auto" takes conv1's epilogue in the captured bfloat16 forward, as
    GraphedInference does, bit for bit that runner's values."""
    for epilogue in ("off", "auto"):
        model = _fused(name, "cuda", inference_graphs.CapturedForward, conv1_epilogue=epilogue)
        twin = copy.deepcopy(model)
        twin.set_eager_graphs(False)
        half = dtype != torch.float32
        x0 = torch.randn(2, 4, 3, 64, 64, device="cuda")
        runner = GraphedInference(twin, x0, autocast_dtype=dtype if half else None)
        for seed in range(4):
            g = torch.Generator("cuda").manual_seed(seed)
            x = torch.randn(x0.shape, device="cuda", generator=g)
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=half):
                got, eager = model(x), twin(x)
            assert (model._graphs.captured is not None) == (seed >= 1)
            if seed >= 1 and epilogue == "auto":
                assert torch.equal(got, runner(x))
            else:
                assert torch.equal(got, eager)


@requires_cuda
def test_cuda_compiled_one_op_replays_and_runners_capture_alone():
    """Compiled as one op (torch's default mode) the forward replays its graph; under
    GraphedInference the model captures none of its own."""
    model = _fused("rubiksnet_tiny", "cuda", inference_graphs.CapturedForward)
    x = torch.randn(2, 4, 3, 64, 64, device="cuda")
    with torch.inference_mode():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True)
        for _ in range(3):
            assert torch.equal(compiled(x), expected)
    assert model._graphs.captured is not None
    model.set_eager_graphs(True)
    GraphedInference(model, x)
    assert model._graphs.captured is None and model._graphs.last_key is None
