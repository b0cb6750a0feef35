"""A training stage as one op under torch.compile, so that compiled training replays the
stage's CUDA graphs as eager training does.

Traced through its blocks, a RubiksNet training step compiled in torch's default mode
issues Inductor's kernels one by one from the host, and the host takes longer than the
GPU (``packages/rubiks-models/BENCHMARKS.md``, *torch.compile*). A training
:class:`~rubiks_models.rubiksnet.RubiksStage` on CUDA therefore calls
``rubiks_models::stage_forward`` under torch.compile (unless
``RubiksNet.set_compiled_replays(False)``): an op whose
implementation is the stage's eager forward, which replays the stage's graphs from a
signature's second call (:mod:`.stage_graphs`). Its autograd formula is a second op,
``rubiks_models::stage_backward``, which backpropagates that forward. The batch norms'
running statistics are updated inside the forward, as in eager training, and hidden from
the compiler: an op that declares mutated arguments cannot have an autograd formula, and
nothing else in the compiled graph reads them. The ops are tagged unsafe for Inductor's
CUDA graphs: with ``mode="reduce-overhead"`` those record the stem and the head, and the
ops replay the stages between them (slower than the stages traced into Inductor's graphs;
``set_compiled_replays(False)`` suits that mode).

The forward returns, beside the stage's output, a token (a CPU int64 scalar) that names
the autograd graph the forward recorded; the backward frees it, and so does the token's
end (a forward whose backward never runs). Each forward is backpropagated once.

The ops find their stage through a handle that stays valid while the stage lives; copies
and unpickled stages get handles of their own. A handle means nothing in another process,
so ``torch.export`` traces the blocks instead.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn

from .stage_graphs import CapturedStage, StageGraphs, copied, graph_device, swapped
from .tracing import exporting

__all__ = [
    "call_stage_op",
    "op_applies",
    "register_stage",
    "stage_backward",
    "stage_forward",
    "trainable_params",
]


class _Stage(Protocol):
    blocks: nn.Module
    _graphs: StageGraphs


class _Run(NamedTuple):
    """What a forward's backward needs: the graphs it replayed and the run's number, or
    (``captured`` None) the autograd graph it recorded."""

    graphs: StageGraphs
    captured: CapturedStage | None
    run: int
    out: Tensor | None  # the blocks' output, with the recorded graph
    leaf: Tensor | None  # the forward's input, as a leaf of that graph
    params: list[Tensor]  # the recorded graph's trainable parameters, in the ops' order


_STAGES: weakref.WeakValueDictionary[int, _Stage] = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)
_RUNS: dict[int, _Run] = {}
_TOKENS = itertools.count(1)
# the dispatch-key sets of code outside any op: the op's implementation runs below
# autograd's keys, and records the blocks' graph with these restored
_OUTSIDE = (torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set())


def register_stage(stage: _Stage) -> int:
    """A new handle under which the ops find ``stage`` (while it lives)."""
    handle = next(_HANDLES)
    _STAGES[handle] = stage
    return handle


def _stage(handle: int) -> _Stage:
    stage = _STAGES.get(handle)
    if stage is None:
        raise RuntimeError(
            f"no RubiksNet stage is registered under handle {handle}: the model this "
            "compiled code was traced from no longer exists"
        )
    return stage


def trainable_params(stage: _Stage) -> list[Tensor]:
    """The stage's parameters that need gradients, in the order the ops take them."""
    return [p for p in stage.blocks.parameters() if p.requires_grad]


def op_applies(x: Tensor, params: list[Tensor]) -> bool:
    """Whether compiled training of a stage on ``x`` calls the op (see the module
    docstring): on a device whose stages replay, recording gradients of something, not
    while exporting."""
    return (
        graph_device(x.device.type)
        and torch.is_grad_enabled()
        and (x.requires_grad or bool(params))
        and not exporting()
    )


def call_stage_op(handle: int, x: Tensor, params: list[Tensor]) -> Tensor:
    """The stage's output on ``x`` through ``rubiks_models::stage_forward`` (compiled code)."""
    device_type = x.device.type
    autocast = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type) if autocast else None
    out, _ = stage_forward(x, params, handle, x.requires_grad, dtype)
    return out


def _autocast(device_type: str, dtype: torch.dtype | None):
    """Autocast on ``device_type`` in ``dtype``, or off where ``dtype`` is None."""
    if dtype is not None:
        return torch.autocast(device_type, dtype=dtype)
    if device_type in ("cuda", "cpu"):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


@contextmanager
def _recording(device_type: str, autocast_dtype: torch.dtype | None) -> Iterator[None]:
    """Autograd on, as outside any op, under the caller's autocast (None: off)."""
    with (
        torch._C._ForceDispatchKeyGuard(*_OUTSIDE),
        torch.enable_grad(),
        _autocast(device_type, autocast_dtype),
    ):
        yield


# the ops replay CUDA graphs of their own and keep state between calls: Inductor's CUDA
# graphs (mode="reduce-overhead") must not record them
_TAGS = (torch.Tag.cudagraph_unsafe,)


@torch.library.custom_op("rubiks_models::stage_forward", mutates_args=(), tags=_TAGS)
def stage_forward(
    x: Tensor,
    params: list[Tensor],
    handle: int,
    x_needs_grad: bool,
    autocast_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor]:
    """(the stage's output on ``x``, the forward's token), computed eagerly, replaying the
    stage's graphs where it can; ``params``: :func:`trainable_params`'s, the tensors whose
    gradients (after x's, where ``x_needs_grad``) the backward gives."""
    stage = _stage(handle)
    graphs = stage._graphs
    with _recording(x.device.type, autocast_dtype):
        got = graphs.replayable(stage.blocks, x.detach().requires_grad_(x_needs_grad))
        if got is not None:
            captured, _ = got  # its backward gives the gradients in the ops' order
            graphs.runs += 1
            run = _Run(graphs, captured, graphs.runs, None, None, [])
            with torch.no_grad():  # the graphs' input is a leaf that requires grad
                returned = captured.forward(x)  # a copy: the graphs' output is theirs
        else:
            # the recorded graph keeps its input and output: copies of its own, since the
            # compiled code may write over tensors it no longer needs
            leaf = x.detach().clone().requires_grad_(x_needs_grad)
            out = stage.blocks(leaf)
            run = _Run(graphs, None, 0, out, leaf, trainable_params(stage))
            returned = out.detach().clone()
    token = next(_TOKENS)
    _RUNS[token] = run
    token_tensor = torch.tensor(token, dtype=torch.int64)
    weakref.finalize(token_tensor, _RUNS.pop, token, None)
    if run.captured is not None:
        graphs.pending = weakref.ref(token_tensor)  # busy until the token's end
    return returned, token_tensor


@stage_forward.register_fake
def _(x, params, handle, x_needs_grad, autocast_dtype):
    # the output's shape, dtype and strides: the blocks run on fake tensors
    stage = _stage(handle)
    mode = torch._guards.detect_fake_mode(x)
    if mode is None:
        raise RuntimeError("rubiks_models::stage_forward's fake implementation needs fake input")
    stand_ins = {
        id(t): mode.from_tensor(t, static_shapes=True)
        for t in itertools.chain(stage.blocks.parameters(), stage.blocks.buffers())
    }
    with swapped(stage.blocks, stand_ins), _autocast(x.device.type, autocast_dtype):
        out = stage.blocks(x)
    return torch.empty_strided(out.shape, out.stride(), dtype=out.dtype, device=out.device), (
        torch.empty((), dtype=torch.int64)
    )


@torch.library.custom_op("rubiks_models::stage_backward", mutates_args=(), tags=_TAGS)
def stage_backward(
    grad: Tensor,
    token: Tensor,
    params: list[Tensor],
    x_size: list[int],
    x_stride: list[int],
    x_dtype: torch.dtype,
    x_needs_grad: bool,
) -> list[Tensor]:
    """The gradients of a forward (named by its ``token``) with respect to its input
    (first, where ``x_needs_grad``; of the given size, strides and dtype) and ``params``."""
    run = _RUNS.pop(int(token), None)
    if run is None:
        raise RuntimeError(
            "this compiled RubiksNet stage's forward was backpropagated already (or its "
            "saved state is gone): backpropagate each forward once"
        )
    if run.captured is not None:
        run.graphs.claim(run.captured, run.run)
        # the graphs' buffers, which the next replay overwrites: all copied below, x's
        # gradient too (unlike the eager replay's): Inductor may reuse an op's returned
        # buffer for a later result, one the backward returns (a parameter's gradient)
        # among them
        grad_x, grads = run.captured.backward(grad)
        grads = [grad_x, *grads] if x_needs_grad else list(grads)
    else:
        targets = ([run.leaf] if x_needs_grad else []) + run.params
        with _recording(grad.device.type, None):
            grads = list(torch.autograd.grad(run.out, targets, grad, allow_unused=True))
    metas = ([(x_size, x_stride, x_dtype)] if x_needs_grad else []) + [
        (p.shape, p.stride(), p.dtype) for p in params
    ]
    if run.captured is not None:  # the graphs' buffers, which the next replay overwrites
        return [
            _laid_out(None, *meta, grad.device, False) if c is None else c
            for c, meta in zip(copied(grads, metas), metas, strict=True)
        ]
    # copied: any gradient on the storage of the incoming one or of another (a recorded
    # graph may pass a gradient through; an op's outputs may not alias its inputs or one
    # another)
    taken = {grad.untyped_storage().data_ptr()}
    result = []
    for g, (size, stride, dtype) in zip(grads, metas, strict=True):
        copy = False
        if g is not None:
            storage = g.untyped_storage().data_ptr()
            copy = storage in taken
            taken.add(storage)
        result.append(_laid_out(g, size, stride, dtype, grad.device, copy))
    return result


@stage_backward.register_fake
def _(grad, token, params, x_size, x_stride, x_dtype, x_needs_grad):
    x_grad = [grad.new_empty_strided(x_size, x_stride, dtype=x_dtype)] if x_needs_grad else []
    return x_grad + [torch.empty_like(p) for p in params]


def _laid_out(
    g: Tensor | None, size, stride, dtype: torch.dtype, device: torch.device, copy: bool
) -> Tensor:
    """``g`` with the given size, strides and dtype (zeros for None); a copy where
    ``copy`` (its storage taken by another output) or where it is laid out otherwise."""
    if g is None:
        return torch.empty_strided(size, stride, dtype=dtype, device=device).zero_()
    if not copy and tuple(g.stride()) == tuple(stride) and g.dtype == dtype:
        return g
    return torch.empty_strided(size, stride, dtype=dtype, device=g.device).copy_(g)


def _setup_context(ctx, inputs, output) -> None:
    x, params, _handle, x_needs_grad, _dtype = inputs
    ctx.x_meta = (list(x.shape), list(x.stride()), x.dtype, x_needs_grad)
    ctx.save_for_backward(output[1], *params)


def _backward(ctx, grad: Tensor, _token_grad) -> tuple:
    token, *params = ctx.saved_tensors
    size, stride, dtype, x_needs_grad = ctx.x_meta
    grads = stage_backward(grad, token, params, size, stride, dtype, x_needs_grad)
    grad_x = grads.pop(0) if x_needs_grad else None
    return grad_x, grads, None, None, None


stage_forward.register_autograd(_backward, setup_context=_setup_context)
