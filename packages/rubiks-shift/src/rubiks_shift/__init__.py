"""RubiksShift: learnable per-channel 3-D shift with trilinear interpolation.

Numba kernels on CPU and CUDA, registered as torch custom ops (``torch.ops.rubiks_shift``)
with autograd, fake and autocast rules.
"""

from ._normalize import normalize_shift_grad
from .batch_norm import batch_norm_relu
from .functional import check_shift, rubiks_shift2d, rubiks_shift3d
from .fused import (
    COMPILE_AS_TORCH,
    affine_relu,
    affine_relu_shift3d,
    call_and_bind,
    is_channel_major,
    stem_conv,
)
from .init import group_offsets, init_spatial, init_temporal
from .modules import RubiksShift2d, RubiksShift3d

__version__ = "0.1.0"

__all__ = [
    "COMPILE_AS_TORCH",
    "RubiksShift2d",
    "RubiksShift3d",
    "__version__",
    "affine_relu",
    "affine_relu_shift3d",
    "batch_norm_relu",
    "call_and_bind",
    "check_shift",
    "group_offsets",
    "init_spatial",
    "init_temporal",
    "is_channel_major",
    "normalize_shift_grad",
    "rubiks_shift2d",
    "rubiks_shift3d",
    "stem_conv",
]
