"""RubiksNet video models for timm (importing this package registers them).

``timm.create_model("rubiksnet_large", pretrained=True, pretrained_cfg_overlay=dict(file=...))``,
the seed-style facade :class:`RubiksNet`, the converter ``rubiks-convert`` and the FLOP
counter ``rubiks-flops``.
"""

from .archs import TIERS, VARIANTS
from .inflation import inflate
from .rubiksnet import RubiksNet, checkpoint_filter_fn, is_shift_param
from .shift_layers import Shift2d, Shift3d, TemporalAttentionShift
from .weight_files import weights_dir

__version__ = "0.1.0"

__all__ = [
    "TIERS",
    "VARIANTS",
    "RubiksNet",
    "Shift2d",
    "Shift3d",
    "TemporalAttentionShift",
    "__version__",
    "checkpoint_filter_fn",
    "inflate",
    "is_shift_param",
    "weights_dir",
]
