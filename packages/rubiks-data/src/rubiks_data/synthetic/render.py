"""Scenes whose class is the direction of a change in time, rendered with numpy.

A clip is a :class:`ClipSpec`: a background, static distractors and one object whose
state (position, scale, angle, opacity, camera zoom) changes from ``start`` to ``end``
linearly between frames ``k0`` and ``k1`` (held before and after). Exactly one state
component changes, and its direction is the class. :func:`mirror_spec` swaps start and end
and reflects the ramp in time; :func:`render_clip` of the mirror is exactly the time-reversed
clip (the ramp weights are computed from integers so the arithmetic is symmetric), and the
mirror's class is the paired class, so frame order alone decides between a pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

__all__ = [
    "CLASSES",
    "ClassDef",
    "ClipSpec",
    "State",
    "make_spec",
    "mirror_label",
    "mirror_spec",
    "render_clip",
    "state_at",
]


@dataclass(frozen=True)
class ClassDef:
    """A class: its short name, SSv2-style template, the changing attribute and direction."""

    name: str
    template: str
    attribute: str
    sign: int


CLASSES: tuple[ClassDef, ...] = (
    ClassDef("left-to-right", "Moving [something] from left to right", "x", +1),
    ClassDef("right-to-left", "Moving [something] from right to left", "x", -1),
    ClassDef("down", "Moving [something] down", "y", +1),
    ClassDef("up", "Moving [something] up", "y", -1),
    ClassDef("approach", "Approaching [something] with your camera", "zoom", +1),
    ClassDef("recede", "Moving away from [something] with your camera", "zoom", -1),
    ClassDef("rotate-cw", "Turning [something] clockwise", "angle", +1),
    ClassDef("rotate-ccw", "Turning [something] anticlockwise", "angle", -1),
    ClassDef("appear", "[Something] appearing", "alpha", +1),
    ClassDef("disappear", "[Something] disappearing", "alpha", -1),
    ClassDef("grow", "[Something] growing", "scale", +1),
    ClassDef("shrink", "[Something] shrinking", "scale", -1),
)


def mirror_label(label: int) -> int:
    """The class of the time-reversed clip (classes come in pairs 2k, 2k+1)."""
    return label ^ 1


@dataclass(frozen=True)
class State:
    """Object state in normalised scene coordinates (x, y in [0, 1], y down)."""

    x: float
    y: float
    scale: float  # object radius as a fraction of min(width, height)
    angle: float  # radians, increasing = clockwise on screen (y points down)
    alpha: float  # opacity in [0, 1]
    zoom: float  # camera zoom about the image centre (>= 1)


PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 220, 50),
    "cyan": (40, 210, 220),
    "magenta": (210, 50, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (120, 50, 170),
}
SHAPES = ("circle", "square", "ring", "bar")
PATTERNS = ("stripes", "checker", "blobs", "gradient")


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip deterministically."""

    label: int
    width: int
    height: int
    num_frames: int
    start: State
    end: State
    k0: int  # ramp start frame
    k1: int  # ramp end frame (k0 < k1)
    shape: str
    color: tuple[int, int, int]
    color_name: str
    bg_colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    pattern: str
    pattern_params: tuple[float, ...]
    distractors: tuple[tuple[float, float, float, tuple[int, int, int]], ...]

    @property
    def placeholder(self) -> str:
        return f"{self.color_name} {self.shape}"


def _contrast_ok(color, bg_colors) -> bool:
    c = np.array(color, float)
    return all(np.abs(c - np.array(b, float)).sum() >= 150 for b in bg_colors)


def make_spec(
    label: int, rng: np.random.Generator, width: int = 64, height: int = 64, num_frames: int = 16
) -> ClipSpec:
    """Draw a random clip of class ``label`` (an index into :data:`CLASSES`)."""
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in [0, {len(CLASSES)}), got {label}")
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    cls = CLASSES[label]
    bg = tuple(tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
    names = list(PALETTE)
    for _ in range(50):
        color_name = names[int(rng.integers(len(names)))]
        if _contrast_ok(PALETTE[color_name], bg):
            break
    color = PALETTE[color_name]
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    pattern_params = tuple(float(v) for v in rng.uniform(0, 1, 6))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    if cls.attribute == "angle" and shape in ("circle", "ring"):
        shape = ("square", "bar")[int(rng.integers(2))]
    distractors = tuple(
        (
            float(rng.uniform(0.1, 0.9)),
            float(rng.uniform(0.1, 0.9)),
            float(rng.uniform(0.05, 0.1)),
            tuple(int(v) for v in rng.integers(0, 256, 3)),
        )
        for _ in range(int(rng.integers(0, 3)))
    )
    centre = cls.attribute in ("zoom", "scale", "angle")
    lo, hi = (0.38, 0.62) if centre else (0.25, 0.75)
    base = State(
        x=float(rng.uniform(lo, hi)),
        y=float(rng.uniform(lo, hi)),
        scale=float(rng.uniform(0.12, 0.18)),
        angle=float(rng.uniform(0, math.pi)),
        alpha=1.0,
        zoom=1.0,
    )
    a, b = _endpoints(cls.attribute, rng, base)
    start, end = (a, b) if cls.sign > 0 else (b, a)
    last = num_frames - 1
    k0 = int(rng.integers(0, int(0.25 * last) + 1))
    k1 = int(rng.integers(max(k0 + 1, math.ceil(0.75 * last)), last + 1))
    return ClipSpec(
        label=label,
        width=width,
        height=height,
        num_frames=num_frames,
        start=replace(base, **{cls.attribute: start}),
        end=replace(base, **{cls.attribute: end}),
        k0=k0,
        k1=k1,
        shape=shape,
        color=color,
        color_name=color_name,
        bg_colors=bg,  # type: ignore[arg-type]
        pattern=pattern,
        pattern_params=pattern_params,
        distractors=distractors,
    )


def _endpoints(attribute: str, rng: np.random.Generator, base: State) -> tuple[float, float]:
    """(low, high) values of the changing attribute; the class sign orders them in time."""
    if attribute in ("x", "y"):
        lo = float(rng.uniform(0.15, 0.35))
        return lo, float(rng.uniform(max(lo + 0.35, 0.6), 0.85))
    if attribute == "zoom":
        return 1.0, float(rng.uniform(1.6, 2.2))
    if attribute == "angle":
        return base.angle, base.angle + float(rng.uniform(math.pi / 3, 2 * math.pi / 3))
    if attribute == "alpha":
        return 0.0, 1.0
    if attribute == "scale":
        lo = float(rng.uniform(0.07, 0.1))
        return lo, lo * float(rng.uniform(1.9, 2.5))
    raise ValueError(f"unknown attribute {attribute!r}")


def mirror_spec(spec: ClipSpec) -> ClipSpec:
    """The same clip played backwards: start/end swapped, ramp reflected, paired class."""
    last = spec.num_frames - 1
    return replace(
        spec,
        label=mirror_label(spec.label),
        start=spec.end,
        end=spec.start,
        k0=last - spec.k1,
        k1=last - spec.k0,
    )


def state_at(spec: ClipSpec, k: int) -> State:
    """The object state at frame ``k`` (linear ramp between frames k0 and k1)."""
    kk = min(max(k, spec.k0), spec.k1)
    span = spec.k1 - spec.k0
    w_start, w_end = (spec.k1 - kk) / span, (kk - spec.k0) / span
    values = {}
    for f in State.__dataclass_fields__:
        a, b = getattr(spec.start, f), getattr(spec.end, f)
        values[f] = a if a == b else a * w_start + b * w_end
    return State(**values)


def _background(spec: ClipSpec, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Pattern value in [0, 1] at scene points (pixel units of the unzoomed frame)."""
    p = spec.pattern_params
    s = min(spec.width, spec.height)
    theta = p[0] * math.pi
    u = (qx * math.cos(theta) + qy * math.sin(theta)) / s
    v = (-qx * math.sin(theta) + qy * math.cos(theta)) / s
    freq = 2.0 + 4.0 * p[1]
    if spec.pattern == "stripes":
        return 0.5 + 0.5 * np.sin(2 * math.pi * freq * u + 6.28 * p[2])
    if spec.pattern == "checker":
        val = np.sin(2 * math.pi * freq * u) * np.sin(2 * math.pi * freq * v)
        return np.clip(0.5 + 2.0 * val, 0.0, 1.0)
    if spec.pattern == "blobs":
        acc = np.zeros_like(qx)
        for i in range(3):
            cx, cy = p[(2 * i + 1) % 6], p[(2 * i + 2) % 6]
            acc += np.exp(-(((qx / s - cx) ** 2 + (qy / s - cy) ** 2) / 0.03))
        return np.clip(acc, 0.0, 1.0)
    return np.clip(u * 0.8 + 0.5 * p[2], 0.0, 1.0)  # gradient


def _sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float, angle: float) -> np.ndarray:
    """Signed distance (negative inside) of a shape of radius ``r`` centred at 0."""
    if shape in ("circle", "ring"):
        d = np.hypot(dx, dy) - r
        return np.abs(d + 0.3 * r) - 0.3 * r if shape == "ring" else d
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    hw, hh = (r, r) if shape == "square" else (1.4 * r, 0.4 * r)
    qx, qy = np.abs(u) - hw, np.abs(v) - hh
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def render_frame(spec: ClipSpec, k: int) -> np.ndarray:
    """Frame ``k`` as uint8 (H, W, 3)."""
    st = state_at(spec, k)
    h, w = spec.height, spec.width
    s = min(w, h)
    py, px = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    cx, cy = w / 2, h / 2
    qx, qy = cx + (px - cx) / st.zoom, cy + (py - cy) / st.zoom  # scene points
    c0, c1 = (np.array(c, np.float64) for c in spec.bg_colors)
    t = _background(spec, qx, qy)[..., None]
    img = c0 * (1 - t) + c1 * t
    for dx_, dy_, r_, col in spec.distractors:
        d = _sdf("square", qx - dx_ * w, qy - dy_ * h, r_ * s, 0.0)
        a = np.clip(0.5 - d * st.zoom, 0, 1)[..., None]
        img = img * (1 - a) + np.array(col, np.float64) * a
    d = _sdf(spec.shape, qx - st.x * w, qy - st.y * h, st.scale * s, st.angle)
    a = (np.clip(0.5 - d * st.zoom, 0, 1) * st.alpha)[..., None]
    img = img * (1 - a) + np.array(spec.color, np.float64) * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_clip(spec: ClipSpec) -> np.ndarray:
    """All frames as uint8 (F, H, W, 3)."""
    return np.stack([render_frame(spec, k) for k in range(spec.num_frames)])
