"""Inflation of a 2-D image RubiksNet into a video model (docs/spec.md §1.6)."""

import torch

from .rubiksnet import RubiksNet, Shift2d, Shift3d

__all__ = ["inflate"]


@torch.no_grad()
def inflate(
    model2d: RubiksNet,
    variant: str = "rubiks3d",
    t_init: str = "tsm",
    num_frames: int = 8,
    num_classes: int | None = None,
) -> RubiksNet:
    """A video RubiksNet from a (trained) 2-D image RubiksNet (docs/spec.md §1.6).

    Every weight is copied; each spatial shift keeps its (H, W) values and gets a temporal
    row initialised by ``t_init`` (``tsm``, ``tsm-g<sigma>``, ``uniform``, ``zero``) via
    :meth:`rubiks_shift.RubiksShift3d.from_2d`. ``variant="rubiks3d-aq"`` keeps the 2-D
    shifts and adds fresh temporal attention. A new ``num_classes`` gets a fresh head.
    """
    if model2d.variant != "rubiks2d":
        raise ValueError(f"inflate expects a rubiks2d model, got variant {model2d.variant!r}")
    if variant not in ("rubiks3d", "rubiks3d-aq"):
        raise ValueError(f"inflate makes a video variant, got {variant!r}")
    classes = model2d.num_classes if num_classes is None else num_classes
    ref = model2d.stem.weight
    video = RubiksNet(
        model2d.tier,
        classes,
        num_frames,
        variant,
        **model2d.build_args(),
        t_init=t_init,
    ).to(device=ref.device, dtype=ref.dtype)
    state = model2d.state_dict()
    if classes != model2d.num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if variant == "rubiks3d":
        for name, layer in model2d.named_modules():
            if isinstance(layer, Shift2d):
                state[name + ".shift"] = Shift3d.from_2d(layer, t_init=t_init).shift.detach()
    missing, unexpected = video.load_state_dict(state, strict=False)
    bad = [k for k in missing if "tshift." not in k and not k.startswith("fc.")]
    if bad or unexpected:
        raise RuntimeError(f"inflation left keys unmatched: {(bad + list(unexpected))[:5]}")
    return video
