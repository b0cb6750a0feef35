"""The CUDA kernels of one (storage, shift storage) pair, and their PTX without a GPU.

``Kernels`` builds every kernel the op launches as a Numba dispatcher (compiled on first
use, for its one signature ``<name>_sig``): the gathers of ``_cuda_gather`` (forward and
grad_x; each also as ``<name>_affine``, the forward with the input prologue) and the
pixel walk's (``_cuda_pixel_walk``, its affine form only), the quantized shift's
elementwise pass (``_cuda_integer_shift``, plain and affine), the
shift-gradient kernels of ``_cuda_shift_grad``, the prologue alone (``_cuda_prologue``),
training batch norm's (``_cuda_batch_norm``) and the stem's (``_cuda_stem``), with the
compile-time values of a ``Tuning`` (``_cuda_tuning``). The launch path
(``_cuda_launch.KernelSet``) builds one only where a kernel is not in the on-disk cache;
the compile workers build one to fill it.
"""

from __future__ import annotations

from numba import cuda

from ._cuda_batch_norm import (
    bn_channel_signature,
    bn_elementwise_signature,
    bn_grad_coefficients_signature,
    bn_partial_signature,
    bn_stats_signature,
    build_bn_channel,
    build_bn_elementwise,
    build_bn_grad_coefficients,
    build_bn_partial,
    build_bn_stats,
)
from ._cuda_gather import build_gather, gather_signature
from ._cuda_integer_shift import build_shift_integer, shift_integer_signature
from ._cuda_pixel_walk import build_gather_pixels, gather_pixels_signature
from ._cuda_prologue import affine_relu_signature, build_affine_relu
from ._cuda_shift_grad import build_shift_grad, finalize_signature, grad_shift_signature
from ._cuda_stem import build_stem, stem_signature
from ._cuda_tuning import TUNING, Tuning, pixel_walk, prologue_per_thread


class Kernels:
    """The compiled-on-demand kernels of one (storage, shift storage) pair, built with
    ``tuning``'s compile-time values: ``gather``, ``gather_narrow``, ``gather_frames``
    (and each ``*_affine``), ``gather_pixels_affine`` (the pixel walk),
    ``shift_integer`` and ``shift_integer_affine`` (quantized, stride 1), ``grad_shift``,
    ``finalize``, ``affine_relu`` (the prologue alone) and ``bn_partial``, ``bn_stats``,
    ``bn_normalize``, ``bn_grad_coefficients``, ``bn_grad_input``, ``bn_channel_forward``,
    ``bn_channel_backward`` (training batch norm) and ``stem`` (the 3x3 stride-2
    convolution of 3-channel frames), each with its signature
    ``<name>_sig``."""

    def __init__(self, storage: str, shift_storage: str, tuning: Tuning = TUNING) -> None:
        self.storage = storage
        self.shift_storage = shift_storage
        self.tuning = tuning
        self.grad_shift, self.finalize = build_shift_grad(
            storage,
            shift_storage,
            group=tuning.grad_shift_group,
            registers=tuning.grad_shift_registers,
            reduce_threads=tuning.grad_shift_threads,
            finalize_threads=tuning.finalize_threads,
        )
        self.grad_shift_sig = grad_shift_signature(storage, shift_storage)
        self.finalize_sig = finalize_signature(storage, shift_storage)
        self.affine_relu = build_affine_relu(storage, prologue_per_thread(storage, tuning))
        self.affine_relu_sig = affine_relu_signature(storage)
        per_thread = prologue_per_thread(storage, tuning)
        self.bn_partial = build_bn_partial(storage, per_thread, tuning.batch_norm_threads)
        self.bn_partial_sig = bn_partial_signature(storage)
        self.bn_stats = build_bn_stats(storage)
        self.bn_stats_sig = bn_stats_signature(storage)
        self.bn_grad_coefficients = build_bn_grad_coefficients(storage)
        self.bn_grad_coefficients_sig = bn_grad_coefficients_signature(storage)
        self.bn_normalize = build_bn_elementwise(storage, per_thread, backward=False)
        self.bn_normalize_sig = bn_elementwise_signature(storage)
        self.bn_grad_input = build_bn_elementwise(storage, per_thread, backward=True)
        self.bn_grad_input_sig = bn_elementwise_signature(storage)
        channel = dict(
            per_thread=min(per_thread, tuning.batch_norm_channel_per_thread),
            widest=tuning.batch_norm_wide_threads,
            registers=tuning.batch_norm_channel_registers,
        )
        for backward, name in ((False, "bn_channel_forward"), (True, "bn_channel_backward")):
            setattr(self, name, build_bn_channel(storage, backward=backward, **channel))
            setattr(self, name + "_sig", bn_channel_signature(storage))
        self.stem = build_stem(
            storage, tuning.stem_pixels, tuning.stem_group, tuning.stem_registers
        )
        self.stem_sig = stem_signature(storage)
        row_walk = dict(registers=tuning.row_walk_registers, group=tuning.row_walk_group)
        frame_walk = dict(
            registers=tuning.frame_walk_registers, frame_rows=tuning.frame_walk_rows, frames=True
        )
        for affine, suffix in ((False, ""), (True, "_affine")):
            gathers = {
                "gather": build_gather(storage, shift_storage, affine=affine, **row_walk),
                "gather_narrow": build_gather(
                    storage, shift_storage, narrow=True, affine=affine, **row_walk
                ),
                "gather_frames": build_gather(storage, shift_storage, affine=affine, **frame_walk),
            }
            for name, dispatcher in gathers.items():
                frames = name == "gather_frames"
                setattr(self, name + suffix, dispatcher)
                sig = gather_signature(storage, shift_storage, affine, frames)
                setattr(self, f"{name}{suffix}_sig", sig)
        for affine, name in ((False, "shift_integer"), (True, "shift_integer_affine")):
            dispatcher = build_shift_integer(storage, shift_storage, per_thread, affine)
            setattr(self, name, dispatcher)
            setattr(self, name + "_sig", shift_integer_signature(storage, shift_storage, affine))
        pixels = pixel_walk(storage, tuning)
        self.gather_pixels_affine = build_gather_pixels(
            storage,
            shift_storage,
            frames=pixels.frames,
            rows=pixels.rows,
            cols=pixels.cols,
            affine=True,
            registers=pixels.registers,
        )
        self.gather_pixels_affine_sig = gather_pixels_signature(storage, shift_storage, True)


def kernel_ptx(dispatcher, signature: tuple, cc: tuple[int, int]) -> str:
    """The PTX of kernel ``dispatcher`` for ``signature`` and compute capability ``cc``,
    with or without a GPU on this machine.

    Device functions are inlined by NVVM (``forceinline``), so Numba compiles each one as
    a function of its own and asks the current device for its compute capability, which
    fails where there is no GPU; for this call that question is answered with ``cc``."""
    from types import SimpleNamespace

    from numba.cuda import dispatcher as numba_dispatcher

    current = numba_dispatcher.get_current_device
    numba_dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    try:
        ptx, _ = cuda.compile_ptx(dispatcher.py_func, signature, cc=cc)
    finally:
        numba_dispatcher.get_current_device = current
    return ptx
