"""A stage's eager training replays: from a signature's second call the stage runs as one
autograd node that replays its captured forward and backward, trains exactly as the
blocks run directly, and steps aside wherever a replay could differ.

On the CPU a stand-in takes the place of the CUDA graphs (``StandIn``: its "replays" run
the blocks with autograd), so the bookkeeping around them is tested everywhere; the real
graphs are tested on a GPU (``requires_cuda``)."""

from __future__ import annotations

import copy
import pickle
from typing import ClassVar

import pytest
import timm
import torch
import torch.nn.functional as F

import rubiks_models  # noqa: F401  (registers the models)
from rubiks_models import graph_capture, stage_graphs
from rubiks_models.cuda_graphs import GraphedTrainStep

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class StandIn:
    """A captured stage whose replays run its blocks with autograd (CPU tests)."""

    log: ClassVar[list[str]] = []
    pools: ClassVar[list] = []  # the pool of each capture
    fail = False

    def __init__(self, blocks, x, params, buffers, pool) -> None:
        if StandIn.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        StandIn.log.append("capture")
        StandIn.pools.append(pool)
        self.blocks, self.params, self.x_needs_grad = blocks, params, x.requires_grad

    def forward(self, x):
        StandIn.log.append("forward")
        self.x = x.detach().requires_grad_(self.x_needs_grad)
        with torch.enable_grad():
            self.out = self.blocks(self.x)
        return self.out.detach().clone()

    def backward(self, grad):
        """The gradients in buffers of its own that each backward overwrites, as the
        graphs' are."""
        StandIn.log.append("backward")
        targets = ([self.x] if self.x_needs_grad else []) + self.params
        grads = torch.autograd.grad(self.out, targets, grad, retain_graph=True, allow_unused=True)
        if not hasattr(self, "grads"):
            self.grads = [None if g is None else torch.empty_like(g) for g in grads]
        for static, g in zip(self.grads, grads, strict=True):
            if static is not None:
                static.copy_(g)
        grads = list(self.grads)
        return (grads.pop(0) if self.x_needs_grad else None), grads


@pytest.fixture
def stand_in(monkeypatch):
    StandIn.log, StandIn.pools, StandIn.fail = [], [], False
    monkeypatch.setattr(stage_graphs, "_GRAPH_DEVICES", ("cuda", "cpu"))
    return StandIn.log


def _model(name="rubiksnet_tiny", device="cpu", dtype=torch.float64, capture=StandIn):
    model = timm.create_model(name, num_classes=5).to(device, dtype).train()
    for stage in model.stages:
        stage._graphs.capture = capture
    return model


def _pair(name="rubiksnet_tiny", device="cpu", dtype=torch.float64, capture=StandIn):
    """(a model whose stages replay, a copy of it that runs its blocks directly)."""
    model = _model(name, device, dtype, capture)
    twin = copy.deepcopy(model)
    twin.set_eager_graphs(False)
    return model, twin


def _clip(seed: int, device="cpu", dtype=torch.float64, size=32, batch=2, frames=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 3, size, size, generator=g, dtype=dtype).to(device)


def _target(seed: int, device="cpu", batch=2):
    return torch.randint(0, 5, (batch,), generator=torch.Generator().manual_seed(seed)).to(device)


def _assert_same_state(model, twin, **tolerance) -> None:
    kwargs = tolerance or {"rtol": 0, "atol": 0}
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, **kwargs, msg=lambda m, n=name: f"{n}: {m}")
        if p.grad is None or q.grad is None:
            assert p.grad is None and q.grad is None, name
        else:
            torch.testing.assert_close(p.grad, q.grad, **kwargs, msg=lambda m, n=name: f"{n}: {m}")
    for (name, b), c in zip(model.named_buffers(), twin.buffers(), strict=True):
        torch.testing.assert_close(b, c, **kwargs, msg=lambda m, n=name: f"{n}: {m}")


def _train(model, steps, device="cpu", dtype=torch.float64, autocast=None, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for step in steps:
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cuda", autocast) if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            loss = F.cross_entropy(model(_clip(step, device, dtype)), _target(step, device))
        loss.backward()
        losses.append(loss.detach())
        opt.step()
    return losses


def _counts(log) -> dict:
    return {k: log.count(k) for k in ("capture", "forward", "backward")}


# ----------------------------------------------------------------------------- CPU


def test_replays_from_the_second_call_and_trains_like_the_blocks(stand_in):
    model, twin = _pair()
    stages = len(model.stages)
    assert _train(model, [0]) == _train(twin, [0])
    assert stand_in == []  # a signature's first call runs the blocks
    for steps in ([1], [2, 3]):
        assert _train(model, steps) == _train(twin, steps)
        _assert_same_state(model, twin)
    assert _counts(stand_in) == {"capture": stages, "forward": 3 * stages, "backward": 3 * stages}


@pytest.mark.parametrize(
    "setup",
    [
        "eval",
        "no_grad",
        "hook",
        "pre_hook",
        "backward_hook",
        "backward_pre_hook",
        "momentum_none",
        "saved_hooks",
        "checkpointing",
        "paused",
        "off",
        "replica",
    ],
)
def test_stage_runs_its_blocks_where_a_replay_could_differ(stand_in, setup):
    model, twin = _pair()
    calls = []
    if setup == "eval":
        model.eval(), twin.eval()
    for stage in (*model.stages, *twin.stages):  # one module in each stage
        if setup == "hook":
            stage.blocks[-1].conv1.register_forward_hook(lambda *a: calls.append(1))
        if setup == "pre_hook":
            stage.blocks[-1].norm1.register_forward_pre_hook(lambda *a: None)
        if setup == "backward_hook":
            stage.blocks[-1].conv2.register_full_backward_hook(lambda *a: None)
        if setup == "backward_pre_hook":
            stage.blocks[-1].conv2.register_full_backward_pre_hook(lambda *a: None)
        if setup == "momentum_none":
            stage.blocks[-1].norm2.momentum = None
    if setup == "checkpointing":
        model.set_grad_checkpointing(), twin.set_grad_checkpointing()
    if setup == "off":
        model.set_eager_graphs(False)
    if setup == "replica":  # what nn.DataParallel's replicate marks its copies with
        for stage in model.stages:
            stage._is_replica = True
    for step in range(3):
        outs = []
        for m in (model, twin):
            x = _clip(step)
            if setup == "no_grad":
                with torch.no_grad():
                    outs.append(m(x))
            elif setup == "saved_hooks":
                with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
                    outs.append(m(x))
            elif setup == "paused":
                with stage_graphs.paused():
                    outs.append(m(x))
            else:
                outs.append(m(x))
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert stand_in == []
    if setup == "hook":
        assert len(calls) == 6 * len(model.stages)


def test_two_forwards_before_one_backward(stand_in):
    """The second forward runs the blocks: a replay would overwrite the first one's
    saved values before its backward."""
    model, twin = _pair()
    _train(model, [0, 1]), _train(twin, [0, 1])
    stand_in.clear()
    for m in (model, twin):
        loss = F.cross_entropy(m(_clip(2)), _target(2)) + F.cross_entropy(m(_clip(3)), _target(3))
        loss.backward()
    _assert_same_state(model, twin)
    stages = len(model.stages)
    assert _counts(stand_in) == {"capture": 0, "forward": stages, "backward": stages}
    assert _train(model, [4]) == _train(twin, [4])  # replays again after the backward
    assert _counts(stand_in)["forward"] == 2 * stages


def test_stages_capture_into_one_pool_in_forward_order(stand_in):
    """A model's stages capture into one pool, in their forward order; a stage capturing
    again starts a new one, and copies of the model share pools of their own."""
    model, _ = _pair()
    stages = len(model.stages)
    _train(model, [0, 1])
    first = StandIn.pools[0]
    assert StandIn.pools == [first] * stages
    assert [ref() for ref in first.members] == [s._graphs for s in model.stages]
    assert [s._graphs.position for s in model.stages] == list(range(stages))
    assert all(s._graphs.pool is first for s in model.stages)
    for step in (2, 3):
        F.cross_entropy(model(_clip(step, size=64)), _target(step)).backward()
    second = StandIn.pools[stages]
    assert second is not first and StandIn.pools[stages:] == [second] * stages
    model.stages[1].reset_graphs()
    for step in (4, 5):  # a lone stage capturing again: a pool of its own
        F.cross_entropy(model(_clip(step, size=64)), _target(step)).backward()
    assert StandIn.pools[-1] not in (first, second)
    assert model.stages[1]._graphs.pool is StandIn.pools[-1]
    assert all(model.stages[i]._graphs.pool is second for i in range(stages) if i != 1)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        sharing = {id(s._graphs.sharing) for s in other.stages}
        assert len(sharing) == 1 and id(model.stages[0]._graphs.sharing) not in sharing
        assert [s._graphs.position for s in other.stages] == list(range(stages))
    with pytest.raises(ValueError, match="position must be an int >= 0"):
        model.stages[0]._graphs.share(stage_graphs.PoolSharing(), -1)


def test_a_stage_runs_its_blocks_while_a_later_one_holds_a_forward(stand_in):
    """A replay may overwrite the saved values of the stages captured after it into its
    pool: while one of those holds a forward that can still be backpropagated, the stage
    runs its blocks. (Stage 0's output detached by a hook: its replay's node is gone at
    once while the later stages' are kept by the loss.)"""
    model, twin = _pair()
    for m in (model, twin):
        m.stages[0].register_forward_hook(lambda module, args, out: out.detach())
    _train(model, [0, 1]), _train(twin, [0, 1])
    stand_in.clear()
    losses = []
    for m in (model, twin):
        m.zero_grad(set_to_none=True)
        first = F.cross_entropy(m(_clip(2)), _target(2))
        forwards = stand_in.count("forward")
        second = F.cross_entropy(m(_clip(3)), _target(3))
        assert stand_in.count("forward") == forwards  # stage 0 as well as the busy ones
        losses.append(first + second)
        losses[-1].backward()
    _assert_same_state(model, twin)
    assert _counts(stand_in)["forward"] == len(model.stages)


def test_a_backward_replay_makes_later_pending_forwards_unusable(stand_in):
    """Backpropagating an earlier stage first (a loss on its output) may overwrite the
    saved values of the later stages' forwards: their backward then raises before
    replaying, rather than giving wrong gradients."""
    model, _ = _pair()
    features = []
    model.stages[1].register_forward_hook(lambda module, args, out: features.append(out))
    _train(model, [0, 1])
    stand_in.clear()
    loss = F.cross_entropy(model(_clip(2)), _target(2))
    features[-1].square().mean().backward(retain_graph=True)  # stages 1 and 0
    assert stand_in.count("backward") == 2
    with pytest.raises(RuntimeError, match="saved values are gone"):
        loss.backward()
    assert stand_in.count("backward") == 2  # the last stage raised before replaying
    _train(model, [3])  # and the next step replays again
    assert _counts(stand_in)["forward"] == 2 * len(model.stages)


def test_gradients_accumulate_over_backward_calls(stand_in):
    """Parameters' gradients are copies of the replay's buffers: two backward calls
    without zeroing add up, as in eager code."""
    model, twin = _pair()
    _train(model, [0, 1]), _train(twin, [0, 1])
    for m in (model, twin):
        m.zero_grad(set_to_none=True)
        for step in (2, 3):
            F.cross_entropy(m(_clip(step)), _target(step)).backward()
    _assert_same_state(model, twin)
    assert stand_in.count("backward") == 3 * len(model.stages)


def test_a_forward_dropped_without_backward_frees_the_replays(stand_in):
    model, _ = _pair()
    _train(model, [0, 1])
    stand_in.clear()
    model(_clip(2))  # its graph is dropped at once
    _train(model, [3])
    assert _counts(stand_in)["forward"] == 2 * len(model.stages)


def test_a_second_backward_of_a_replayed_forward_is_refused(stand_in):
    """A replayed forward is backpropagated once (as without retain_graph) and the next
    replay overwrites its saved values: a second backward of the same forward, or one
    after the next forward, is an error rather than wrong gradients."""
    model, _ = _pair()
    _train(model, [0, 1])
    loss = F.cross_entropy(model(_clip(2)), _target(2))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="saved values are gone"):
        loss.backward()
    model.set_eager_graphs(False)
    loss = F.cross_entropy(model(_clip(3)), _target(3))
    loss.backward(retain_graph=True)
    loss.backward()  # the blocks run directly: retain_graph works as everywhere


def test_signatures(stand_in):
    """A signature is captured on its second consecutive call; one that alternates with
    the captured one runs the blocks; changed parameter storage is a new signature."""
    model, _ = _pair()
    stage = model.stages[0]

    def call(size: int) -> None:
        F.cross_entropy(model(_clip(0, size=size)), _target(0)).backward()

    for size in (32, 32, 64, 32, 64, 32):
        call(size)
    assert stand_in.count("capture") == len(model.stages)
    first = stage._graphs.captured
    call(64), call(64)
    assert stage._graphs.captured is not first  # the new size, repeated, replaces it
    with torch.no_grad():
        conv = model.stages[0].blocks[0].conv1
        conv.weight.data = conv.weight.data.clone()
    stand_in.clear()
    call(64)  # stage 0 runs its blocks, the others replay
    n = len(model.stages)
    assert _counts(stand_in) == {"capture": 0, "forward": n - 1, "backward": n - 1}
    stand_in.clear()
    call(64)
    assert _counts(stand_in) == {"capture": 1, "forward": n, "backward": n}


def test_replayed_gradients_leave_the_buffers_in_one_copy_per_stage(stand_in):
    """A replayed backward copies its parameter gradients out of the graphs' buffers with
    one foreach call per stage, and autograd keeps those copies as ``.grad`` (instead of
    copying each one itself)."""
    model, twin = _pair()
    _train(model, [0, 1]), _train(twin, [0, 1])
    model.zero_grad(set_to_none=True), twin.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(_clip(2)), _target(2))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss.backward()
    F.cross_entropy(twin(_clip(2)), _target(2)).backward()
    _assert_same_state(model, twin)
    events = prof.events()
    assert sum(e.name == "aten::_foreach_copy_" for e in events) == len(model.stages)
    accumulated = [
        e for e in events if e.cpu_parent and e.cpu_parent.name.endswith("AccumulateGrad")
    ]
    assert accumulated and not any("copy" in e.name or "empty" in e.name for e in accumulated)
    buffers = {
        g.data_ptr() for s in model.stages for g in s._graphs.captured.grads if g is not None
    }
    assert not buffers & {p.grad.data_ptr() for p in model.parameters()}


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill its memory without gaps or overlaps, in any order."""
    expected = 1
    dims = zip(t.stride(), t.shape, strict=True)
    for stride, size in sorted((st, sz) for st, sz in dims if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _fused_route(dsts: list, srcs: list) -> bool:
    """Whether CUDA's ``_foreach_copy_`` copies these lists by its multi-tensor kernels
    rather than one copy per pair: one dtype and device throughout, every tensor
    non-overlapping and dense, each pair of equal size and strides."""
    first = srcs[0]
    return all(
        t.dtype == first.dtype and t.device == first.device and _dense(t) for t in (*dsts, *srcs)
    ) and all(
        d.shape == s.shape and d.stride() == s.stride() for d, s in zip(dsts, srcs, strict=True)
    )


def test_copied_gives_fresh_copies_in_the_fused_route(monkeypatch):
    """``copied`` keeps None, lays each copy out as asked, and copies by foreach calls
    that CUDA runs fused: one per pair of dtypes (a bfloat16 input gradient beside float32
    parameter gradients), with strides that differ only where a size is 1 (a 1x1
    convolution's weight against its gradient) flattened away, and a change of layout
    apart from the rest."""
    calls = []
    foreach_copy = torch._foreach_copy_
    monkeypatch.setattr(
        torch, "_foreach_copy_", lambda d, s: calls.append((d, s)) or foreach_copy(d, s)
    )
    g = torch.Generator().manual_seed(0)
    grad_x = torch.randn(2, 8, 4, 3, 3, generator=g).to(torch.bfloat16)
    weight = torch.randn(8, 6, 1, 1, generator=g).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(8, generator=g)
    plane = torch.randn(2, 3, 5, 5, generator=g).contiguous(memory_format=torch.channels_last)
    tensors = [grad_x, None, weight, bias, plane]
    layouts = [
        (grad_x.shape, grad_x.stride(), grad_x.dtype),
        ((4,), (1,), torch.float32),
        (weight.shape, (6, 1, 1, 1), weight.dtype),  # its parameter's (contiguous) strides
        (bias.shape, bias.stride(), bias.dtype),
        (plane.shape, plane.contiguous().stride(), plane.dtype),  # a real change of layout
    ]
    out = stage_graphs.copied(tensors, layouts)
    assert out[1] is None
    for o, t, (size, stride, dtype) in zip(out, tensors, layouts, strict=True):
        if t is not None:
            assert (o.shape, o.stride(), o.dtype) == (size, stride, dtype)
            assert torch.equal(o, t) and o.data_ptr() != t.data_ptr()
    fused = [c for c in calls if _fused_route(*c)]
    assert len(calls) == 3 and len(fused) == 2  # bfloat16; float32; the relayout
    assert sorted(len(d) for d, _ in fused) == [1, 2]
    calls.clear()
    again = stage_graphs.copied(tensors)
    assert [c is None for c in again] == [t is None for t in tensors]
    assert len(calls) == 2 and all(_fused_route(*c) for c in calls)


def test_captures_are_limited_per_stage(stand_in):
    model, _ = _pair()
    for size in range(16, 16 + 4 * (stage_graphs.MAX_CAPTURES + 2), 4):
        for _ in range(2):
            F.cross_entropy(model(_clip(0, size=size)), _target(0)).backward()
    graphs = model.stages[0]._graphs
    assert graphs.captures == stage_graphs.MAX_CAPTURES
    last = 16 + 4 * (stage_graphs.MAX_CAPTURES - 1)  # the last size captured
    assert graphs.key[0][-1] == last // 2  # stage 0's input: the stem halves the plane


def test_a_failed_capture_warns_and_the_blocks_run(stand_in):
    model, twin = _pair()
    StandIn.fail = True
    with pytest.warns(RuntimeWarning, match="could not be captured"):
        _train(model, [0, 1])
    StandIn.fail = False
    _train(model, [2, 3]), _train(twin, [0, 1]), _train(twin, [2, 3])
    _assert_same_state(model, twin)
    assert stand_in == []


def test_captures_drop_cublas_workspaces_before_and_after(monkeypatch):
    """A capture makes its cuBLAS workspace in its own pool, and leaves none behind for
    later work on its stream, a failed capture too."""
    calls = []
    monkeypatch.setattr(graph_capture, "_clear", lambda: calls.append("clear"))
    with pytest.raises(RuntimeError, match="capture failed"), graph_capture.own_cublas_workspaces():
        calls.append("capture")
        raise RuntimeError("capture failed")
    assert calls == ["clear", "capture", "clear"]


def test_copies_start_without_graphs_and_settings_drop_them(stand_in):
    model, _ = _pair()
    _train(model, [0, 1])
    assert all(s._graphs.captured is not None for s in model.stages)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert all(s._graphs.captured is None and s._graphs.last_key is None for s in other.stages)
        assert all(s._graphs.capture is StandIn for s in other.stages)
    model.set_channel_major_plane(0)
    assert all(s._graphs.captured is None for s in model.stages)
    _train(model, [0, 1])
    model.set_eager_graphs(True)
    assert all(s._graphs.captured is None and s.eager_graphs for s in model.stages)
    with pytest.raises(TypeError, match="must be a bool"):
        model.set_eager_graphs(1)


# ----------------------------------------------------------------------------- GPU

CUDA_CASES = [
    ("rubiksnet_tiny", torch.bfloat16),
    ("rubiksnet_tiny", None),
    ("rubiksnet_large", torch.bfloat16),
    ("rubiksnet_large", None),
    ("rubiksnet_tiny_aq", torch.bfloat16),
]


@pytest.fixture
def deterministic_cudnn(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


@requires_cuda
@pytest.mark.parametrize(("name", "autocast"), CUDA_CASES)
def test_graphed_stages_train_like_the_blocks_cuda(name, autocast, deterministic_cudnn):
    """Four SGD steps in one loop (the capture runs while the step before it is still
    referenced, as in a user's loop): the replayed stages train bit for bit as the blocks
    run directly (the same kernels; cuDNN's deterministic algorithms on both sides)."""
    model, twin = _pair(name, "cuda", torch.float32, stage_graphs.CapturedStage)
    kw = {"device": "cuda", "dtype": torch.float32, "autocast": autocast, "lr": 0.01}
    for chunk in ([0, 1], [2, 3]):
        losses = [torch.stack(_train(m, chunk, **kw)) for m in (model, twin)]
        assert torch.equal(*losses)
        _assert_same_state(model, twin)
    assert all(s._graphs.captured is not None and s._graphs.runs == 3 for s in model.stages)


@requires_cuda
def test_replays_outlive_cleared_cublas_workspaces_cuda(deterministic_cudnn):
    """cuBLAS's workspaces cleared and the cache emptied after the capture (as
    torch.compile's CUDA graphs do around theirs): the bf16 stages, whose small-plane
    blocks are matrix products, replay on memory of their own and still train as the
    blocks do."""
    model, twin = _pair("rubiksnet_tiny", "cuda", torch.float32, stage_graphs.CapturedStage)
    kw = {"device": "cuda", "dtype": torch.float32, "autocast": torch.bfloat16, "lr": 0.01}
    losses = [torch.stack(_train(m, [0, 1], **kw)) for m in (model, twin)]
    assert all(s._graphs.captured is not None for s in model.stages)
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    losses += [torch.stack(_train(m, [2, 3], **kw)) for m in (model, twin)]
    torch.cuda.synchronize()
    assert torch.equal(losses[0], losses[1]) and torch.equal(losses[2], losses[3])
    _assert_same_state(model, twin)
    assert all(s._graphs.runs == 3 for s in model.stages)


@requires_cuda
def test_two_forwards_before_one_backward_cuda(deterministic_cudnn):
    model, twin = _pair("rubiksnet_tiny", "cuda", torch.float32, stage_graphs.CapturedStage)
    kw = {"device": "cuda", "dtype": torch.float32, "autocast": torch.bfloat16}
    _train(model, [0, 1], **kw), _train(twin, [0, 1], **kw)
    losses = []
    for m in (model, twin):
        m.zero_grad()
        with torch.autocast("cuda", torch.bfloat16):
            y1, y2 = m(_clip(2, "cuda", torch.float32)), m(_clip(3, "cuda", torch.float32))
        loss = F.cross_entropy(y1, _target(2, "cuda")) + F.cross_entropy(y2, _target(3, "cuda"))
        loss.backward(retain_graph=True)
        losses.append(loss)
    _assert_same_state(model, twin)
    assert all(s._graphs.runs == 2 for s in model.stages)  # the second forward ran directly
    with pytest.raises(RuntimeError, match="saved values are gone"):
        losses[0].backward()


@requires_cuda
def test_graphed_train_step_captures_no_stage_graphs_cuda():
    model = _model("rubiksnet_tiny", "cuda", torch.float32, stage_graphs.CapturedStage)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, target = _clip(0, "cuda", torch.float32), _target(0, "cuda")
    step = GraphedTrainStep(model, opt, F.cross_entropy, x, target)
    assert torch.isfinite(step.step(x, target))
    assert all(s._graphs.captured is None for s in model.stages)


@requires_cuda
def test_gradients_accumulate_over_backward_calls_cuda(deterministic_cudnn):
    model, twin = _pair("rubiksnet_tiny", "cuda", torch.float32, stage_graphs.CapturedStage)
    kw = {"device": "cuda", "dtype": torch.float32, "autocast": torch.bfloat16}
    _train(model, [0, 1], **kw), _train(twin, [0, 1], **kw)
    for m in (model, twin):
        m.zero_grad(set_to_none=True)
        for step in (2, 3):
            with torch.autocast("cuda", torch.bfloat16):
                loss = F.cross_entropy(m(_clip(step, "cuda", torch.float32)), _target(step, "cuda"))
            loss.backward()
    _assert_same_state(model, twin)
    assert all(s._graphs.runs == 3 for s in model.stages)


@requires_cuda
def test_distributed_data_parallel_of_one_cuda(deterministic_cudnn, tmp_path):
    """DistributedDataParallel (one rank) over a model whose stages replay trains as over
    one whose stages run their blocks."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model, twin = _pair("rubiksnet_tiny", "cuda", torch.float32, stage_graphs.CapturedStage)
        wrapped = [DistributedDataParallel(m, device_ids=[0]) for m in (model, twin)]
        kw = {"device": "cuda", "dtype": torch.float32, "autocast": torch.bfloat16}
        for chunk in ([0, 1], [2, 3]):
            losses = [torch.stack(_train(m, chunk, **kw)) for m in wrapped]
            assert torch.equal(*losses)
            _assert_same_state(model, twin)
        assert all(s._graphs.captured is not None and s._graphs.runs == 3 for s in model.stages)
    finally:
        dist.destroy_process_group()
