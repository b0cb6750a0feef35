"""A synthetic temporal dataset: the class is the direction of a change in time.

Six mirror pairs (left<->right, down<->up, approach<->recede, clockwise<->anticlockwise,
appear<->disappear, grow<->shrink): reversing a clip in time gives exactly a clip of the
paired class, so a model that ignores frame order cannot beat chance within a pair.
Written as real encoded videos with SSv2-style JSON annotations (see :func:`generate`).
"""

from .generate import SynthConfig, clip_spec, generate, split_labels
from .render import (
    CLASSES,
    ClassDef,
    ClipSpec,
    State,
    make_spec,
    mirror_label,
    mirror_spec,
    render_clip,
    render_frame,
    state_at,
)

__all__ = [
    "CLASSES",
    "ClassDef",
    "ClipSpec",
    "State",
    "SynthConfig",
    "clip_spec",
    "generate",
    "make_spec",
    "mirror_label",
    "mirror_spec",
    "render_clip",
    "render_frame",
    "split_labels",
    "state_at",
]
