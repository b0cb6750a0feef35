"""Compiled training through the stage ops: under torch.compile a training stage runs as
``rubiks_models::stage_forward`` (its replays inside), trains as the blocks do, and is
traced instead where the op does not apply.

On the CPU the replays are ``test_stage_graphs.StandIn``'s; the real graphs, Inductor's
CUDA code and the channel-major layouts are tested on a GPU (``requires_cuda``)."""

from __future__ import annotations

import copy
import gc

import pytest
import test_stage_graphs
import torch
import torch.nn.functional as F
from test_stage_graphs import (
    _assert_same_state,
    _clip,
    _counts,
    _target,
    _train,
    requires_cuda,
)

from rubiks_models import stage_graphs, stage_op

OP_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")
stand_in = test_stage_graphs.stand_in  # the fixture: replays on the CPU by a stand-in


def _model(*args):
    """``test_stage_graphs._model``, its stages compiled as the ops."""
    model = test_stage_graphs._model(*args)
    model.set_compiled_replays()
    return model


def _pair(*args):
    """``test_stage_graphs._pair``: the first one's stages compiled as the ops."""
    model, twin = test_stage_graphs._pair(*args)
    model.set_compiled_replays()
    return model, twin


def _op_calls(model, x, **compile_kwargs) -> int:
    """How many stage_forward calls Dynamo's graph of ``model(x)`` holds."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=backend, fullgraph=True, **compile_kwargs)
    compiled(x)
    op = torch.ops.rubiks_models.stage_forward
    return sum(n.target in (op, op.default) for g in graphs for n in g.graph.nodes)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_training_replays_and_trains_like_the_blocks(stand_in, backend):
    """Four compiled SGD steps: each stage runs as the op, whose forward runs the blocks
    on the signature's first call and replays from the second, as eager training does."""
    model, twin = _pair()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    # Inductor computes the stem and the head in an order of its own
    rtol, atol = (1e-5, 1e-7) if backend == "inductor" else (1e-9, 1e-12)
    for steps in ([0], [1, 2, 3]):
        _train(compiled, steps), _train(twin, steps)
        _assert_same_state(model, twin, rtol=rtol, atol=atol)
    stages = len(model.stages)
    assert _counts(stand_in) == {"capture": stages, "forward": 3 * stages, "backward": 3 * stages}
    assert stage_op._RUNS == {}


def test_op_calls_where_training_records_gradients(stand_in):
    model = test_stage_graphs._model()
    stages = len(model.stages)
    assert _op_calls(model, _clip(0)) == stages  # on by default
    model.set_compiled_replays(False)
    assert _op_calls(model, _clip(0)) == 0
    model.set_compiled_replays(True)
    model.set_eager_graphs(False)
    assert _op_calls(model, _clip(0)) == 0
    model.set_eager_graphs(True)
    with torch.no_grad():
        assert _op_calls(model, _clip(0)) == 0
    assert _op_calls(model.eval(), _clip(0)) == 0
    with pytest.raises(TypeError, match="must be a bool"):
        model.set_compiled_replays("yes")


def test_op_calls_only_on_devices_whose_stages_replay():
    assert _op_calls(_model(), _clip(0)) == 0  # the CPU replays only with the stand-in


def test_two_compiled_forwards_before_one_backward(stand_in):
    """The second forward runs the blocks inside the op: a replay would overwrite the
    first forward's saved values before its backward."""
    model, twin = _pair()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _train(compiled, [0, 1]), _train(twin, [0, 1])
    stand_in.clear()
    for m in (compiled, twin):
        loss = F.cross_entropy(m(_clip(2)), _target(2)) + F.cross_entropy(m(_clip(3)), _target(3))
        loss.backward()
    _assert_same_state(model, twin, rtol=1e-9, atol=1e-12)
    stages = len(model.stages)
    assert _counts(stand_in) == {"capture": 0, "forward": stages, "backward": stages}
    _train(compiled, [4]), _train(twin, [4])  # replays again after the backward
    assert _counts(stand_in)["forward"] == 2 * stages
    _assert_same_state(model, twin, rtol=1e-9, atol=1e-12)


def test_a_compiled_forward_dropped_without_backward_is_freed(stand_in):
    model = _model()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _train(compiled, [0, 1])
    stand_in.clear()
    compiled(_clip(2))  # its autograd graph, and with it the op's token, dropped at once
    assert stage_op._RUNS == {}
    _train(compiled, [3])
    assert _counts(stand_in)["forward"] == 2 * len(model.stages)


@pytest.mark.parametrize("replayed", [True, False])
def test_a_second_backward_of_a_compiled_forward_is_refused(stand_in, replayed):
    # compiled code refuses retain_graph=True itself unless its buffers are not donated
    with torch._functorch.config.patch(donated_buffer=False):
        _second_backward(replayed, stand_in)


def _second_backward(replayed: bool, stand_in: list) -> None:
    model = _model()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _train(compiled, [0, 1])
    stand_in.clear()
    size = 32 if replayed else 16  # the captured signature, or a new one (its first call)
    loss = F.cross_entropy(compiled(_clip(2, size=size)), _target(2))
    assert stand_in.count("forward") == (len(model.stages) if replayed else 0)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated already"):
        loss.backward()


def test_stage_ops_called_eagerly_give_the_blocks_gradients(stand_in):
    """Called directly (the blocks run, then capture and replays), the op's output and
    gradients are the blocks'; a gradient the blocks pass through unchanged comes back
    as a copy (an op's outputs may not alias its inputs)."""
    model = _model()
    stage = model.stages[0]
    twin = copy.deepcopy(stage)
    twin.eager_graphs = False
    op = torch.ops.rubiks_models.stage_forward.default
    for step in range(3):
        x = _clip(step, size=8).repeat(1, 1, stage.blocks[0].conv1.in_channels // 3 + 1, 1, 1)
        x = x[:, :, : stage.blocks[0].conv1.in_channels].clone()
        xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        out, _ = op(xs[0], stage_op.trainable_params(stage), stage._op_handle, True, None)
        expected = twin.blocks(xs[1])
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        out.sum().backward(), expected.sum().backward()
        torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=0, atol=0)
        for p, q in zip(stage.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    assert _counts(stand_in) == {"capture": 1, "forward": 2, "backward": 2}
    assert stage_op._RUNS == {}


def test_replayed_backward_copies_the_input_gradient(stand_in):
    """A replayed backward gives x's gradient as a copy laid out as x, never the graphs'
    own buffer: Inductor may reuse an op's returned buffer for a later result that
    outlives the backward, which the next replay would then overwrite."""
    model = _model()
    stage = model.stages[0]
    params = stage_op.trainable_params(stage)
    shape = (2, 2, stage.blocks[0].conv1.in_channels, 8, 8)
    for seed in range(2):  # the blocks run, then (the second call) capture and replay
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        args = (x.requires_grad_(), params, stage._op_handle, True, None)
        out, token = torch.ops.rubiks_models.stage_forward(*args)
    assert _counts(stand_in) == {"capture": 1, "forward": 1, "backward": 0}

    def backward(out, token, stride):
        grad = torch.ones_like(out)
        return torch.ops.rubiks_models.stage_backward(
            grad, token, params, list(shape), list(stride), x.dtype, True
        )

    channels_last = torch.empty(shape, dtype=x.dtype).permute(0, 1, 3, 4, 2).contiguous()
    channels_last = channels_last.permute(0, 1, 4, 2, 3)  # x's size, the channels innermost
    expected = None
    for layout in (x, channels_last):
        if expected is not None:
            out, token = torch.ops.rubiks_models.stage_forward(*args)
        grads = backward(out, token, layout.stride())
        buffers = {b.data_ptr() for b in stage._graphs.captured.grads if b is not None}
        assert not {g.data_ptr() for g in grads} & buffers
        assert grads[0].stride() == layout.stride()
        expected = expected or [g.clone() for g in grads]
        for g, e in zip(grads, expected, strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_stage_forward_op_checks(stand_in):
    """torch.library.opcheck: schema, autograd registration, and a fake implementation
    that gives the real output's shape, dtype and strides (AOT dispatch is tested by the
    compiled runs above: the token differs from call to call)."""
    model = _model()
    op = torch.ops.rubiks_models.stage_forward.default
    for _ in range(2):  # the blocks run, then (the signature's second call) capture and replay
        for stage in model.stages:
            x = torch.randn(2, 2, stage.blocks[0].conv1.in_channels, 8, 8, dtype=torch.float64)
            params = stage_op.trainable_params(stage)
            args = (x.requires_grad_(), params, stage._op_handle, True, None)
            torch.library.opcheck(op, args, test_utils=OP_CHECKS)
    assert stage_op._RUNS == {}


def test_handles_follow_the_stages(stand_in):
    model = _model()
    handles = [s._op_handle for s in model.stages]
    twin = copy.deepcopy(model)
    assert all(h not in handles for h in (s._op_handle for s in twin.stages))
    assert stage_op._stage(handles[0]) is model.stages[0]
    del model
    gc.collect()
    with pytest.raises(RuntimeError, match=f"no RubiksNet stage .* under handle {handles[0]}"):
        stage_op._stage(handles[0])


# ----------------------------------------------------------------------------- GPU


@requires_cuda
@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("rubiksnet_tiny", "default"),
        ("rubiksnet_tiny_aq", "default"),
        ("rubiksnet_tiny", "reduce-overhead"),
    ],
)
def test_compiled_training_replays_and_trains_like_the_blocks_cuda(name, mode):
    """The stages' CUDA graphs replayed inside the ops, in Inductor's default mode and
    with ``reduce-overhead`` (whose CUDA graphs record the stem and the head around the
    ops, clearing cuBLAS's workspaces as they record): four SGD steps in float64 as with
    the blocks run directly (Inductor's stem and head round differently)."""
    model, twin = _pair(name, "cuda", torch.float64, stage_graphs.CapturedStage)
    compiled = torch.compile(model, mode=mode, fullgraph=True)
    kw = {"device": "cuda", "dtype": torch.float64, "lr": 0.01}
    losses = [torch.stack(_train(m, range(4), **kw)) for m in (compiled, twin)]
    torch.testing.assert_close(*losses, rtol=1e-7, atol=0)
    # four steps of a tiny model on 32² clips amplify rounding: the batch norms of the
    # last stages see a few values per channel
    _assert_same_state(model, twin, rtol=1e-4, atol=1e-6)
    assert all(s._graphs.captured is not None and s._graphs.runs == 3 for s in model.stages)
    assert stage_op._RUNS == {}


@requires_cuda
@pytest.mark.parametrize(
    ("name", "mode", "steps"),
    [("rubiksnet_large", "default", 3), ("rubiksnet_tiny", "reduce-overhead", 4)],
)
def test_compiled_bf16_training_replays_cuda(name, mode, steps):
    """bf16 autocast, the small-plane stages channel-major (matrix products, whose cuBLAS
    workspace ``reduce-overhead``'s CUDA graphs clear as they record): the ops replay,
    and the first step's loss is the blocks' to bf16 rounding (the shift-gradient
    normalisation turns rounding into whole steps later on: float64 checks the values
    above; the fake implementation's layouts are checked against the real ones below)."""
    model, twin = _pair(name, "cuda", torch.float32, stage_graphs.CapturedStage)
    compiled = torch.compile(model, mode=mode, fullgraph=True)
    kw = {"device": "cuda", "dtype": torch.float32, "autocast": torch.bfloat16, "lr": 0.01}
    losses = [torch.stack(_train(m, range(steps), **kw)) for m in (compiled, twin)]
    torch.testing.assert_close(losses[0][0], losses[1][0], rtol=2e-2, atol=0)
    assert torch.isfinite(losses[0]).all()
    runs = steps - 1  # the first step runs the blocks
    assert all(s._graphs.captured is not None and s._graphs.runs == runs for s in model.stages)
    assert stage_op._RUNS == {}


@requires_cuda
@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_stage_forward_op_checks_cuda(autocast):
    """The fake implementation's strides are the real ones, channel-major stages (bf16)
    included."""
    model = _model("rubiksnet_large", "cuda", torch.float32, stage_graphs.CapturedStage)
    op = torch.ops.rubiks_models.stage_forward.default
    x = torch.randn(2, 2, model.stages[0].blocks[0].conv1.in_channels, 56, 56, device="cuda")
    for stage in model.stages:
        params = stage_op.trainable_params(stage)
        args = (x.requires_grad_(), params, stage._op_handle, True, autocast)
        for _ in range(2):  # the blocks run, then capture and replay
            torch.library.opcheck(op, args, test_utils=OP_CHECKS)
        x = op(*args)[0].detach()  # the next stage's input, in the layout it gets
    assert all(s._graphs.captured is not None for s in model.stages)
    assert stage_op._RUNS == {}
