"""Eager training of a RubiksNet stage as two CUDA-graph replays.

Eager RubiksNet training is bound by the host: a step issues every block's kernels from
Python, and issuing them takes longer than the GPU takes to run them
(``packages/rubiks-models/BENCHMARKS.md``, *Eager training*). In training on CUDA a
:class:`~rubiks_models.rubiksnet.RubiksStage` therefore records its blocks' forward and
backward as two CUDA graphs, on the second consecutive call with the same signature, and
from then on runs as one autograd node whose forward replays the first graph and whose
backward replays the second: the same kernels in the same order, without the host's work
per kernel. Gradients reach the parameters through their autograd accumulators as
before, copied out of the graphs' buffers (they add up over backward calls); batch-norm
statistics are updated in place once per forward.

A stage runs its blocks directly instead (plain eager) in evaluation mode; without
gradient recording; on the CPU; in traced or transformed code (compiled code calls the
replays through :mod:`.stage_op`); as a ``nn.DataParallel`` replica; inside another
CUDA-graph capture (:class:`~rubiks_models.cuda_graphs.GraphedTrainStep`) or a backward
pass; under saved-tensor hooks (activation checkpointing, offloading); with hooks on any
of its modules; with a module type other than the blocks' own; with a batch norm whose
``momentum`` is None; on a signature's first call; and while the forward of its last
replay has not been backpropagated and can still be (two forwards before one backward).

A signature is the input's shape, strides, dtype, device and ``requires_grad``; the
autocast state and the TF32 switches; and every module, parameter and buffer of the stage:
which objects, their storage, ``requires_grad``, training mode, and each batch norm's
``momentum`` and ``eps``. Anything else a module reads when called is fixed at capture:
call ``RubiksNet.set_eager_graphs`` after changing such a setting in place.

Each forward is backpropagated once (as without ``retain_graph``): a second backward of a
replayed forward raises. A model's stages capture into one memory pool
(:class:`PoolSharing`), in their forward order: each graph keeps only its saved values
and its static tensors between replays, and what one graph uses while it runs is used by
the others too (what that costs: ``packages/rubiks-models/BENCHMARKS.md``, *Eager
training*). A graph may therefore overwrite the saved values of a stage captured after it,
so a stage runs its blocks directly while a stage captured after it in the same pool
holds a forward that can still be backpropagated, and a backward replay makes the
pending forwards of the stages captured after it in its pool unusable (their backward
raises). A stage keeps one signature's graphs: a new signature seen on two consecutive
calls replaces them, at most ``MAX_CAPTURES`` times per stage, and a stage that captures
again starts a new pool.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from rubiks_shift import kernels

from .graph_capture import own_cublas_workspaces, paused, pausing

__all__ = [
    "MAX_CAPTURES",
    "CapturedStage",
    "PoolSharing",
    "SharedPool",
    "StageGraphs",
    "copied",
    "graph_device",
    "paused",
    "swapped",
]

# a stage whose signature keeps changing (many input sizes) stops capturing after this
MAX_CAPTURES = 8

_GRAPH_DEVICES = ("cuda",)  # where stages capture (tests add the CPU, with a stand-in)


def graph_device(device_type: str) -> bool:
    """Whether stages replay graphs on devices of this type."""
    return device_type in _GRAPH_DEVICES


def global_hooks() -> bool:
    """Whether hooks are registered for every module (``nn.modules.module``'s globals)."""
    return bool(
        _module._global_forward_hooks
        or _module._global_forward_pre_hooks
        or _module._global_backward_hooks
        or _module._global_backward_pre_hooks
    )


def _may_graph(x: Tensor) -> bool:
    """Whether this call's context allows replays (see the module docstring)."""
    return (
        not pausing()
        and type(x) is Tensor
        and graph_device(x.device.type)
        and torch.is_grad_enabled()
        and kernels.plain_eager()
        and not (x.is_cuda and torch.cuda.is_current_stream_capturing())
        and torch._C._current_graph_task_id() == -1  # not inside a backward pass
        and torch._C._autograd._top_saved_tensors_default_hooks(True) is None
        and not global_hooks()
    )


def walk(blocks: nn.Module, allowed: frozenset) -> tuple[tuple, list, list] | None:
    """(the signature's part from ``blocks`` and every module under it, their parameters,
    their buffers), or None where a module is not of an ``allowed`` type, has hooks or is a
    batch norm without momentum. Module state is read from the modules' dicts (each
    attribute read through ``nn.Module.__getattr__`` costs about 0.6 µs)."""
    modules, states = [], []
    stack = [blocks]
    while stack:
        m = stack.pop()
        state = m.__dict__
        if (
            type(m) not in allowed
            or state["_forward_hooks"]
            or state["_forward_pre_hooks"]
            or state["_backward_hooks"]
            or state["_backward_pre_hooks"]
        ):
            return None
        modules.append(m)
        states.append(state)
        children = state["_modules"]
        if children:  # pushed last-first: modules (and so parameters) in nn.Module's order
            stack.extend([c for c in reversed(children.values()) if c is not None])
    norms = [s for m, s in zip(modules, states, strict=True) if type(m) is nn.BatchNorm2d]
    if any(s["momentum"] is None for s in norms):
        return None
    params = [
        p for s in states if s["_parameters"] for p in s["_parameters"].values() if p is not None
    ]
    buffers = [b for s in states if s["_buffers"] for b in s["_buffers"].values() if b is not None]
    key = (
        tuple(map(id, modules)),
        tuple(s["training"] for s in states),
        tuple((s["momentum"], s["eps"]) for s in norms),
        tuple(map(id, params)),
        tuple(map(Tensor.data_ptr, params)),
        tuple(p.requires_grad for p in params),
        tuple(map(id, buffers)),
        tuple(map(Tensor.data_ptr, buffers)),
    )
    return key, params, buffers


def _signature(x: Tensor, stage_key: tuple) -> tuple:
    return (
        x.shape,
        x.stride(),
        x.dtype,
        x.device,
        x.requires_grad,
        torch.is_autocast_enabled("cuda"),
        torch.get_autocast_dtype("cuda"),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        stage_key,
    )


def _uncached_autocast():
    """The caller's CUDA autocast without its cast cache: a cached cast made while warming
    up would be read, not recomputed, by the captured graph."""
    if torch.is_autocast_enabled("cuda"):
        return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
    return nullcontext()


@contextmanager
def swapped(blocks: nn.Module, tensors: dict[int, Tensor]) -> Iterator[None]:
    """Every parameter and buffer under ``blocks`` whose id is a key of ``tensors``
    replaced, in its module, by that key's value, and put back on exit."""
    replaced = []
    for m in blocks.modules():
        for table in (m._parameters, m._buffers):
            for name, t in table.items():
                if t is not None and id(t) in tensors:
                    replaced.append((table, name, t))
                    table[name] = tensors[id(t)]
    try:
        yield
    finally:
        for table, name, t in replaced:
            table[name] = t


@contextmanager
def _aliased(blocks: nn.Module, params: list[Tensor]) -> Iterator[list[Tensor]]:
    """``params`` replaced, in every module under ``blocks``, by fresh parameters on the
    same storage (yielded in the same order). Gradients are taken with respect to these:
    autograd would otherwise synchronise the capture with the stream on which the real
    parameters' gradient accumulators were made (by an earlier eager step whose graph the
    caller may still hold), which invalidates a capture."""
    aliases = {id(p): nn.Parameter(p.detach(), requires_grad=True) for p in params}
    with swapped(blocks, aliases):
        yield [aliases[id(p)] for p in params]


class SharedPool:
    """A CUDA-graph memory pool and the stream its captures run on, shared by the graphs
    of stages that capture into it in their forward order (``members``, weakly held)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.members: list[weakref.ref[StageGraphs]] = []
        self.last = -1  # the position of the last stage that captured into it
        self._cuda: tuple | None = None

    @property
    def handle(self) -> tuple:
        """The pool's handle for ``torch.cuda.graph``."""
        return self._cuda_state()[0]

    @property
    def stream(self) -> torch.cuda.Stream:
        """The stream every capture into the pool runs on: the caching allocator reuses
        a block only on the stream that freed it."""
        return self._cuda_state()[1]

    def _cuda_state(self) -> tuple:
        if self._cuda is None:
            self._cuda = (torch.cuda.graph_pool_handle(), torch.cuda.Stream(self.device))
        return self._cuda

    def later_busy(self, graphs: StageGraphs) -> list[StageGraphs]:
        """The members captured after ``graphs`` whose graphs are still this pool's and
        whose last replay's forward may still be backpropagated: data that a replay of
        ``graphs`` may overwrite."""
        found, busy = False, []
        for ref in self.members:
            member = ref()
            if member is graphs:
                found = True
            elif found and member is not None and member.pool is self and member._busy():
                busy.append(member)
        return busy


class PoolSharing:
    """Hands the stages of one model the :class:`SharedPool` they capture into: the
    current one while captures come in forward order (rising ``position``) on one device,
    a new one otherwise (a stage capturing again, another device). Copies and pickles
    start with no pool."""

    def __init__(self) -> None:
        self.current: SharedPool | None = None

    def pool_for(self, graphs: StageGraphs, position: int, device: torch.device) -> SharedPool:
        """The pool the stage at ``position`` captures into now, with it as the latest
        member."""
        pool = self.current
        if pool is None or pool.last >= position or pool.device != device:
            pool = self.current = SharedPool(device)
        pool.last = position
        pool.members.append(weakref.ref(graphs))
        return pool

    def __deepcopy__(self, memo: dict) -> PoolSharing:
        return PoolSharing()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class CapturedStage:
    """One signature's forward and backward graphs and their static tensors, captured
    into ``pool``.

    ``forward(x)`` copies x into the graphs' input, replays the forward and returns a
    copy of the output (the graph's own output is overwritten by the next replay);
    ``backward(grad)`` replays the backward and returns (x's gradient or None, the
    gradients of ``params``, None for the ones the blocks do not use), in the graphs'
    buffers. The forward's saved values are held between replays, so that the graphs
    captured after these into the pool cannot take their memory; the blocks' temporary
    memory goes back to the pool after each capture, for the pool's other graphs.
    """

    def __init__(
        self, blocks: nn.Module, x: Tensor, params: list, buffers: list, pool: SharedPool
    ) -> None:
        with _aliased(blocks, params) as aliases:
            self._capture(blocks, x, aliases, buffers, pool)

    def _capture(
        self, blocks: nn.Module, x: Tensor, params: list, buffers: list, pool: SharedPool
    ) -> None:
        device = x.device
        self.static_x = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=device)
        self.static_x.copy_(x.detach())
        self.static_x.requires_grad_(x.requires_grad)
        targets = ([self.static_x] if x.requires_grad else []) + params
        stream = pool.stream
        # warm up once on the capture's stream (lazy per-stream state); the blocks' state
        # (batch-norm statistics and counters) is put back after it
        saved = [b.clone() for b in buffers]
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            try:
                with _uncached_autocast():
                    out = blocks(self.static_x)
                torch.autograd.grad(out, targets, torch.zeros_like(out), allow_unused=True)
                del out
            finally:
                with torch.no_grad():
                    for buffer, value in zip(buffers, saved, strict=True):
                        buffer.copy_(value)
        torch.cuda.current_stream(device).wait_stream(stream)
        del saved
        self.forward_graph = torch.cuda.CUDAGraph()
        self.backward_graph = torch.cuda.CUDAGraph()
        graph_args = {"pool": pool.handle, "stream": stream, "capture_error_mode": "thread_local"}
        with own_cublas_workspaces():
            with torch.cuda.graph(self.forward_graph, **graph_args), _uncached_autocast():
                out = blocks(self.static_x)
            self.static_grad = torch.empty_like(out)
            with torch.cuda.graph(self.backward_graph, **graph_args):
                grads = torch.autograd.grad(
                    out, targets, self.static_grad, retain_graph=True, allow_unused=True
                )
        self.static_out = out.detach()
        self._recorded = out  # holds the forward's saved values (see the class docstring)
        del out
        grads = list(grads)
        self.grad_x = grads.pop(0) if x.requires_grad else None
        self.param_grads = grads

    def forward(self, x: Tensor) -> Tensor:
        self.static_x.copy_(x)
        self.forward_graph.replay()
        return self.static_out.clone()

    def backward(self, grad: Tensor) -> tuple:
        self.static_grad.copy_(grad)
        self.backward_graph.replay()
        return self.grad_x, self.param_grads


def copied(tensors: list[Tensor | None], layouts: list[tuple] | None = None) -> list:
    """Copies of ``tensors`` in memory of their own (None stays None), each laid out as
    its ``layouts`` entry (size, strides, dtype) or as itself, copied by a foreach call
    per pair of dtypes: a stage's hundreds of parameter gradients cost a few launches
    instead of one copy each (autograd keeps a fresh gradient as ``.grad`` without
    cloning it)."""
    if layouts is None:
        out = [None if t is None else torch.empty_like(t) for t in tensors]
    else:
        out = [
            None if t is None else torch.empty_strided(size, stride, dtype=dtype, device=t.device)
            for t, (size, stride, dtype) in zip(tensors, layouts, strict=True)
        ]
    # CUDA's foreach copy runs fused (multi-tensor kernels, not a copy per pair) only on
    # lists of one dtype whose pairs have equal strides: the pairs are grouped so, and a
    # contiguous pair whose strides differ where a size is 1 (a 1x1 convolution's weight
    # and its gradient) is copied as flat views
    groups: dict[tuple, tuple[list, list]] = {}
    for o, t in zip(out, tensors, strict=True):
        if t is None:
            continue
        same = o.stride() == t.stride()
        if not same and o.is_contiguous() and t.is_contiguous():
            o, t, same = o.view(-1), t.view(-1), True
        dsts, srcs = groups.setdefault((o.dtype, t.dtype, same), ([], []))
        dsts.append(o)
        srcs.append(t)
    for dsts, srcs in groups.values():
        torch._foreach_copy_(dsts, srcs)
    return out


class _Replay(torch.autograd.Function):
    """``forward(graphs, run, x, *params)``: the captured stage's output; its backward
    replays the captured backward (``run``: which forward this node recorded)."""

    @staticmethod
    def forward(ctx, graphs: StageGraphs, run: int, x: Tensor, *params: Tensor) -> Tensor:
        ctx.graphs, ctx.captured, ctx.run = graphs, graphs.captured, run
        return graphs.captured.forward(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple:
        ctx.graphs.claim(ctx.captured, ctx.run)
        grad_x, param_grads = ctx.captured.backward(grad)  # grad_x: None where x needs none
        # the graphs' buffers, which the pool's next replays overwrite (those of earlier
        # stages, in this backward, among them): autograd would clone each gradient it keeps
        return (None, None, *copied([grad_x, *param_grads]))


class StageGraphs:
    """A stage's captured graphs and the signatures it has seen (process-local: copies
    and pickles of the model start without them). ``capture(blocks, x, params, buffers,
    pool)`` makes the :class:`CapturedStage` of a signature; ``sharing`` hands it the
    pool, ``position`` is the stage's place in its model's forward order."""

    captured: CapturedStage | None
    pool: SharedPool | None  # the pool ``captured`` was captured into
    key: tuple | None  # the captured signature
    last_key: tuple | None  # the signature of the last call
    pending: weakref.ref | None  # what the last replay's backward needs, until it runs

    def __init__(
        self,
        allowed: frozenset,
        capture: Callable = CapturedStage,
        sharing: PoolSharing | None = None,
        position: int = 0,
    ) -> None:
        self.allowed = allowed
        self.capture = capture
        self.share(PoolSharing() if sharing is None else sharing, position)
        self.reset()

    def share(self, sharing: PoolSharing, position: int) -> None:
        """Capture into ``sharing``'s pools, as the stage at ``position`` (from 0) of its
        model's forward; drops the graphs captured so far."""
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise ValueError(f"position must be an int >= 0, got {position!r}")
        self.sharing, self.position = sharing, position
        self._drop()

    def reset(self) -> None:
        """Drop the captured graphs (and their memory) and the signatures seen."""
        self._drop()
        self.last_key = None
        self.captures = 0
        self.runs = 0

    def _drop(self) -> None:
        self.captured = None
        self.pool = None
        self.key = None
        self.pending = None
        self.done = 0  # the last run backpropagated

    def __deepcopy__(self, memo: dict) -> StageGraphs:
        sharing = copy.deepcopy(self.sharing, memo)  # one new sharing per copied model
        return StageGraphs(self.allowed, self.capture, sharing, self.position)

    def __getstate__(self) -> dict:
        return {
            "allowed": self.allowed,
            "capture": self.capture,
            "sharing": self.sharing,
            "position": self.position,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["allowed"], state["capture"], state["sharing"], state["position"])

    def claim(self, captured: CapturedStage, run: int) -> None:
        """Mark forward ``run`` of ``captured`` as backpropagated; raise where its saved
        values are gone (backpropagated already, or overwritten by a later replay). The
        pending forwards of the stages captured after this one into its pool become
        unusable: this backward's replay may overwrite their saved values."""
        if captured is not self.captured or run != self.runs or self.done == run:
            raise RuntimeError(
                "this forward's saved values are gone: a stage replaying CUDA graphs "
                "backpropagates each forward once, its next replay overwrites them, and "
                "so may the backward of an earlier stage of the same model. Backpropagate "
                "each forward once, through the whole model, before its next forward, or "
                "turn the replays off with RubiksNet.set_eager_graphs(False)"
            )
        self.pending, self.done = None, run
        if self.pool is not None:
            for member in self.pool.later_busy(self):
                member.pending, member.done = None, member.runs

    def _busy(self) -> bool:
        """Whether the last replay's forward may still be backpropagated."""
        return self.pending is not None and self.pending() is not None

    def run(self, blocks: nn.Module, x: Tensor) -> Tensor | None:
        """``blocks(x)`` (``blocks``: the stage's sequence of blocks) by replaying,
        capturing first where this is the signature's second consecutive call; None
        where the caller runs the blocks itself."""
        got = self.replayable(blocks, x)
        if got is None:
            return None
        _, trainable = got
        self.runs += 1
        out = _Replay.apply(self, self.runs, x, *trainable)
        self.pending = weakref.ref(out.grad_fn)
        return out

    def replayable(self, blocks: nn.Module, x: Tensor) -> tuple[CapturedStage, list] | None:
        """(the captured graphs that replay ``blocks(x)``, capturing them first where this
        is the signature's second consecutive call; the trainable parameters, in
        ``blocks.parameters()``'s order), or None where the caller runs the blocks itself.
        The caller counts the run (``runs``) and sets ``pending``."""
        if not _may_graph(x):
            return None
        walked = walk(blocks, self.allowed)
        if walked is None:
            return None
        stage_key, params, buffers = walked
        trainable = [p for p in params if p.requires_grad]
        if not (x.requires_grad or trainable):
            return None
        key = _signature(x, stage_key)
        last, self.last_key = self.last_key, key
        if self._busy():
            return None
        if key != self.key:
            if key != last or self.captures >= MAX_CAPTURES:
                return None
            self._drop()
            self.captures += 1
            pool = self.sharing.pool_for(self, self.position, x.device)
            try:
                self.captured = self.capture(blocks, x, trainable, buffers, pool)
                self.pool = pool
            except Exception as err:  # any failure: this stage runs its blocks from now on
                self.captures = MAX_CAPTURES
                warnings.warn(
                    f"a RubiksNet stage could not be captured as CUDA graphs ({err!r}); it "
                    "runs its blocks directly from now on",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return None
            self.key = key
        elif self.pool is not None and self.pool.later_busy(self):
            return None  # a replay could overwrite their saved values
        return self.captured, trainable
