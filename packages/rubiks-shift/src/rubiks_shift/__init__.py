"""RubiksShift: learnable per-channel 3-D shift with trilinear interpolation.

Numba kernels on CPU and CUDA, registered as torch custom ops (``torch.ops.rubiks_shift``)
with autograd, fake and autocast rules.
"""

from .functional import check_shift, rubiks_shift2d, rubiks_shift3d
from .init import group_offsets, init_spatial, init_temporal
from .modules import RubiksShift2d, RubiksShift3d
from ._normalize import normalize_shift_grad

__version__ = "0.1.0"

__all__ = [
    "rubiks_shift3d",
    "rubiks_shift2d",
    "check_shift",
    "RubiksShift3d",
    "RubiksShift2d",
    "normalize_shift_grad",
    "init_temporal",
    "init_spatial",
    "group_offsets",
    "__version__",
]
