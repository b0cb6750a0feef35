"""Fixed-shape models without per-kernel host cost: CUDA-graph runners.

A RubiksNet forward issues hundreds of small kernels; in eager mode the host time to issue
them can exceed the GPU time. A CUDA graph records the kernels once and replays them with
one launch. :class:`GraphedInference` does this for evaluation and
:class:`GraphedTrainStep` for a whole training step (forward, loss, backward, optimizer
step), for users who do not want ``torch.compile``.

Both copy each new batch into static input buffers and replay; the shapes, dtypes and the
device are fixed at capture (a batch of another shape is refused; capture another runner
for it). Outputs live in the graph's memory pool and are overwritten by the next replay:
the runners return a clone unless ``copy_output=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from .graph_capture import own_cublas_workspaces, paused

__all__ = ["GraphedInference", "GraphedTrainStep"]


def _check_cuda(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(x).__name__}")
    if x.device.type != "cuda":
        raise ValueError(f"CUDA graphs need CUDA tensors; {what} is on {x.device}")


def _check_like(x: torch.Tensor, static: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(x).__name__}")
    if x.shape != static.shape or x.dtype != static.dtype or x.device != static.device:
        raise ValueError(
            f"{what} of shape {tuple(x.shape)}, {x.dtype} on {x.device} does not match the "
            f"captured {tuple(static.shape)}, {static.dtype} on {static.device}; capture "
            "another runner for it"
        )


def _autocast(dtype: torch.dtype | None):
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else nullcontext()


class GraphedInference:
    """``model(x)`` under ``torch.no_grad()`` as one CUDA graph replay.

    Args:
        model: the module (put in eval mode by the caller; it is not changed).
        example: a CUDA batch of the shape and dtype every later call will have.
        autocast_dtype: run the forward under ``torch.autocast("cuda", dtype)`` (e.g.
            ``torch.bfloat16``); None: no autocast.
        warmup: eager iterations on a side stream before capture (they compile kernels and
            settle the allocator; CUDA graphs need both done before capture).
        copy_output: return a clone of the output (True) or the graph's own buffer, which
            the next call overwrites (False, no copy).
    """

    def __init__(
        self,
        model: nn.Module,
        example: torch.Tensor,
        *,
        autocast_dtype: torch.dtype | None = None,
        warmup: int = 3,
        copy_output: bool = True,
    ) -> None:
        _check_cuda(example, "example")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (kernels compile before capture), got {warmup}")
        self.model = model
        self.autocast_dtype = autocast_dtype
        self.copy_output = copy_output
        self.static_input = example.detach().clone()
        stream = torch.cuda.Stream(device=example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        # the forward is one graph: a fused model does not capture its own
        with (
            torch.cuda.stream(stream),
            torch.no_grad(),
            _autocast(autocast_dtype),
            paused(),
        ):
            for _ in range(warmup):
                model(self.static_input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with (
            own_cublas_workspaces(),
            torch.cuda.graph(self.graph),
            torch.no_grad(),
            _autocast(autocast_dtype),
        ):
            self.static_output = model(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_like(x, self.static_input, "input")
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output.clone() if self.copy_output else self.static_output


class GraphedTrainStep:
    """One training step — forward, ``loss_fn(output, target)``, backward, optimizer step —
    as one CUDA graph replay; ``step(x, target)`` returns the loss (a CUDA tensor, no sync).

    The optimizer's hyper-parameters are captured as they are at capture: a learning-rate
    schedule needs a tensor learning rate (``torch.optim.SGD(..., lr=torch.tensor(0.1,
    device="cuda"))``, changed in place with ``fill_``) or a new runner. Gradients are
    reset by the graph itself (``zero_grad(set_to_none=False)`` is part of the step), and
    the parameters, buffers (batch-norm statistics) and optimizer state are updated in
    place, so the model can be evaluated or saved between steps as usual.

    Args:
        model, optimizer, loss_fn: as in an eager loop (the model in train mode).
        example, example_target: CUDA batches of the shapes every later step will have.
        autocast_dtype: forward and loss under ``torch.autocast("cuda", dtype)``.
        warmup: eager steps on a side stream before capture (they do update the model).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        example: torch.Tensor,
        example_target: torch.Tensor,
        *,
        autocast_dtype: torch.dtype | None = None,
        warmup: int = 3,
    ) -> None:
        _check_cuda(example, "example")
        _check_cuda(example_target, "example_target")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (kernels compile before capture), got {warmup}")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.autocast_dtype = autocast_dtype
        self.static_input = example.detach().clone()
        self.static_target = example_target.detach().clone()
        device = example.device
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        # the step is one graph: the stages do not capture their own
        with torch.cuda.stream(stream), paused():
            for _ in range(warmup):
                self._step()
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with own_cublas_workspaces(), torch.cuda.graph(self.graph), paused():
            self.static_loss = self._step()

    def _step(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=False)
        with _autocast(self.autocast_dtype):
            loss = self.loss_fn(self.model(self.static_input), self.static_target)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def step(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_like(x, self.static_input, "input")
        _check_like(target, self.static_target, "target")
        self.static_input.copy_(x)
        self.static_target.copy_(target)
        self.graph.replay()
        return self.static_loss.clone()
