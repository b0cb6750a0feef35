"""Eager inference of a fused RubiksNet as one CUDA-graph replay.

The fused form's eager forward on CUDA issues a few hundred kernels from Python, and on
most hosts issuing them takes longer than the GPU takes to run them
(``packages/rubiks-models/BENCHMARKS.md``, *Eager inference*). A
:class:`~rubiks_models.fused.FusedRubiksNet` therefore records its eager CUDA forward as
a CUDA graph on the second consecutive call with the same signature, and from then on
replays it: the input copied into the graph's own, one replay, the graph's output copied
out (the next replay overwrites it). Compiled code that calls the fused forward as one op
(``compile_as="one_op"``, torch's default mode) takes the same replays.

A forward runs its blocks directly instead on the CPU; on a signature's first call; where
the input needs a gradient; in traced or transformed code; inside another CUDA-graph
capture (:class:`~rubiks_models.cuda_graphs.GraphedInference`, torch.compile's
``mode="reduce-overhead"``) or :func:`paused`; with hooks on any of its modules or
global module hooks; with a module type other than the model's own; as a
``nn.DataParallel`` replica; and after ``FusedRubiksNet.set_eager_graphs(False)``.

A signature is the input's shape, strides, dtype and device and the dtype the forward
computes in; inference mode; the TF32 and reduced-precision switches of the products and
cuDNN's algorithm switches; the current stream and host thread; and every module and
buffer of the model: which objects and their storage. Anything else the model reads when
called (a block's settings, the kernels' tuning) is fixed at capture: call
``set_eager_graphs`` after changing such a setting in place.

The graph keeps its memory pool, what one forward uses at once, while its signature
lasts; a model keeps one signature's graph, replaced when a new signature is seen on two
consecutive calls, at most :data:`MAX_CAPTURES` times.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from rubiks_shift import kernels

from .graph_capture import own_cublas_workspaces, paused, pausing
from .stage_graphs import global_hooks, walk

__all__ = ["MAX_CAPTURES", "CapturedForward", "ForwardGraphs", "paused"]

# a model whose signature keeps changing (many input sizes) stops capturing after this
MAX_CAPTURES = 8

_GRAPH_DEVICES = ("cuda",)  # where forwards capture (tests add the CPU, with a stand-in)


def _may_graph(x: Tensor) -> bool:
    """Whether this call's context allows a replay (see the module docstring)."""
    return (
        not pausing()
        and type(x) is Tensor
        and x.device.type in _GRAPH_DEVICES
        and not (x.requires_grad and torch.is_grad_enabled())
        and kernels.plain_eager()
        and not (x.is_cuda and torch.cuda.is_current_stream_capturing())
        and not global_hooks()
    )


def _stream(x: Tensor) -> int | None:
    return torch._C._cuda_getCurrentRawStream(x.get_device()) if x.is_cuda else None


def _signature(x: Tensor, dtype: torch.dtype, model_key: tuple) -> tuple:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    return (
        x.shape,
        x.stride(),
        x.dtype,
        x.device,
        dtype,
        torch.is_inference_mode_enabled(),
        matmul.allow_tf32,
        matmul.allow_bf16_reduced_precision_reduction,
        matmul.allow_fp16_reduced_precision_reduction,
        cudnn.allow_tf32,
        cudnn.benchmark,
        cudnn.deterministic,
        _stream(x),
        threading.get_ident(),
        model_key,
    )


class CapturedForward:
    """``forward(x)`` captured as one CUDA graph for x's signature, its input x cast to
    ``dtype``; calling it copies a new x into the graph's input (the cast and the copy one
    kernel), replays, and returns a copy of the output."""

    def __init__(self, forward: Callable[[Tensor], Tensor], x: Tensor, dtype: torch.dtype) -> None:
        device = x.device
        self.static_x = torch.empty_like(x, dtype=dtype).copy_(x)  # x's strides where dense
        stream = torch.cuda.Stream(device)
        current = torch.cuda.current_stream(device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):  # warm up on the capture's stream (lazy state)
            forward(self.static_x)
        current.wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        graph_args = {"stream": stream, "capture_error_mode": "thread_local"}
        with own_cublas_workspaces(), torch.cuda.graph(self.graph, **graph_args):
            self.static_out = forward(self.static_x)

    def __call__(self, x: Tensor) -> Tensor:
        self.static_x.copy_(x)
        self.graph.replay()
        return self.static_out.clone()


class ForwardGraphs:
    """A model's captured forward and the signatures it has seen (one per model).

    ``allowed``: the module types a captured model may hold; ``capture``: what records a
    forward (:class:`CapturedForward`; tests pass a stand-in). The forward is called
    with its input in the dtype it computes in."""

    def __init__(self, allowed: frozenset, capture: Callable = CapturedForward) -> None:
        self.allowed = allowed
        self.capture = capture
        self.reset()

    def reset(self) -> None:
        """Drop the captured graph (and its memory) and the signatures seen."""
        # (signature, captured forward), replaced as a whole: a thread that read it
        # replays the graph of the signature it compared (signatures name the thread)
        self.entry: tuple | None = None
        self.last_key = None
        self.captures = 0

    @property
    def captured(self) -> Callable[[Tensor], Tensor] | None:
        """The captured forward, or None."""
        entry = self.entry
        return None if entry is None else entry[1]

    def __deepcopy__(self, memo: dict) -> ForwardGraphs:
        return ForwardGraphs(self.allowed, self.capture)  # graphs are this model's

    def __getstate__(self) -> dict:
        return {"allowed": self.allowed, "capture": self.capture}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["allowed"], state["capture"])

    def run(
        self,
        model: nn.Module,
        compute: Callable[[Tensor, torch.dtype], Tensor],
        x: Tensor,
        dtype: torch.dtype,
    ) -> Tensor | None:
        """``compute(x, dtype)`` (``model``'s forward) by a replay, capturing first where
        this is the signature's second consecutive call; None where the caller computes
        it itself."""
        if not _may_graph(x):
            return None
        walked = walk(model, self.allowed)
        if walked is None:
            return None
        key = _signature(x, dtype, walked[0])
        last, self.last_key = self.last_key, key
        entry = self.entry
        if entry is None or key != entry[0]:
            if key != last or self.captures >= MAX_CAPTURES:
                return None
            self.entry = entry = None  # the old graph's memory goes first
            self.captures += 1
            try:
                captured = self.capture(lambda inp: compute(inp, dtype), x, dtype)
            except Exception as err:  # any failure: the model runs its blocks from now on
                self.captures = MAX_CAPTURES
                warnings.warn(
                    f"a fused RubiksNet's forward could not be captured as a CUDA graph "
                    f"({err!r}); it runs its blocks directly from now on",
                    RuntimeWarning,
                    stacklevel=4,
                )
                return None
            self.entry = entry = (key, captured)
        return entry[1](x)
