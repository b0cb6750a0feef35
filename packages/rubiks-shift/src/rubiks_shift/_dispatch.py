"""Device kernels registered at the dispatcher's backend and autograd keys directly.

A ``torch.library.custom_op`` reaches its device kernel through Python wrappers: its
autograd kernel (under ``torch.no_grad()`` too), then a wrapper that disables TorchDynamo
and checks aliasing. Compiled code calls every custom op through the dispatcher, and on
the H200 machine those wrappers made the compiled fused RubiksNet-Large nearly twice as
slow as with the kernels registered here (see the package's ``BENCHMARKS.md``).

Each op keeps its ``custom_op`` definition (schema, fake kernel, autograd formula where it
has one, the default kernel for other devices) and gets here:

* its CPU and CUDA kernels at the ``CPU`` and ``CUDA`` keys: under
  ``torch.inference_mode()``, which leaves autograd out, a call enters Python once;
* a kernel at ``AutogradCPU`` / ``AutogradCUDA`` (a device's own key takes precedence over
  the custom op's ``Autograd`` kernel) that calls the device kernel directly when no
  gradient is to be recorded and nothing sits between autograd and the backend (no
  tracing, fake tensors or functionalization), redispatches where something does, and
  records the op's autograd node where an input needs a gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd import forward_ad as _forward_ad

_lib = torch.library.Library("rubiks_shift", "IMPL")

_DispatchKey = torch._C.DispatchKey
_AFTER_AUTOGRAD = torch._C._after_autograd_keyset
# what may sit between autograd and the backend; ADInplaceOrView is a fallthrough for
# functional ops, so it does not count
_BELOW_AUTOGRAD = _AFTER_AUTOGRAD.remove(_DispatchKey.ADInplaceOrView)
_BACKEND_KEYS = {"cpu": "CPU", "cuda": "CUDA"}

Node = Callable[..., object]  # (keyset, *op arguments) -> outputs, recording a grad_fn


def redispatch(op: torch._ops.OpOverload, keyset, args: tuple):
    """``op`` on ``args`` below autograd (the kernel autograd would have called)."""
    with torch._C._AutoDispatchBelowAutograd():
        return op.redispatch(keyset & _AFTER_AUTOGRAD, *args)


def register(
    op: torch._ops.OpOverload, kernels: dict[str, Callable], node: Node | None = None
) -> None:
    """Register ``kernels`` (device type -> kernel taking the op's arguments) at their
    backend keys, and the autograd kernel described in the module docstring at each
    device's autograd key; ``node`` runs the op where an input requires a gradient
    (default: ``no_gradient_node(op)``, for an op without a gradient formula)."""
    if node is None:
        node = no_gradient_node(op)
    name = op._schema.name.split("::", 1)[1]
    tensors = tuple(
        i for i, a in enumerate(op._schema.arguments) if isinstance(a.type, torch.TensorType)
    )
    direct = {}
    for device, kernel in kernels.items():
        key = _BACKEND_KEYS[device]
        _lib.impl(name, kernel, key)
        direct[getattr(_DispatchKey, key)] = kernel

    label = str(op).removesuffix(".default")

    def autograd_kernel(keyset, *args):
        if _forward_ad._current_level >= 0:
            refuse_tangents(label, [args[i] for i in tensors])
        if torch.is_grad_enabled() and any(args[i].requires_grad for i in tensors):
            if torch._C._are_functorch_transforms_active():
                raise NotImplementedError(
                    f"{label}: torch.func transforms (grad, vjp, jacrev, vmap, ...) of a call "
                    "that needs a gradient are not supported; differentiate with "
                    "torch.autograd (backward() or torch.autograd.grad)"
                )
            return node(keyset, *args)
        kernel = direct.get((keyset & _BELOW_AUTOGRAD).highestPriorityTypeId())
        if kernel is not None:
            return kernel(*args)
        return redispatch(op, keyset, args)

    for device in kernels:
        _lib.impl(name, autograd_kernel, "Autograd" + _BACKEND_KEYS[device], with_keyset=True)


def refuse_tangents(label: str, tensors) -> None:
    """Raise if any of ``tensors`` carries a forward-mode tangent: the ops have no
    forward-mode formula, and running them on the primal alone would drop it."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and _forward_ad.unpack_dual(t).tangent is not None:
            raise NotImplementedError(
                f"{label}: forward-mode AD (torch.func.jvp / jacfwd, torch.autograd."
                "forward_ad) is not supported; differentiate in reverse mode (backward() or "
                "torch.autograd.grad)"
            )


def no_gradient_node(op: torch._ops.OpOverload) -> Node:
    """The autograd node of an op without a gradient formula: the op runs, and a backward
    through its result raises."""
    label = str(op).removesuffix(".default")

    class NoGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, keyset, *args):
            return redispatch(op, keyset, args)

        @staticmethod
        def backward(ctx, *grads):
            raise RuntimeError(
                f"{label} has no gradient formula: it is for inference (or, for "
                "shift3d_backward, a backward that cannot be differentiated again)"
            )

    NoGradient.__name__ = NoGradient.__qualname__ = f"NoGradient_{op._schema.name}"
    return NoGradient.apply
