"""The RubiksNet architectures: tiers (docs/spec.md §2.2), variants and their timm names."""

__all__ = ["TIERS", "VARIANTS", "arch_name"]

# tier: (width, repeats of stages 1-4, squeeze-excitation reduction or 0)
TIERS: dict[str, tuple[int, tuple[int, int, int, int], int]] = {
    "tiny": (54, (3, 4, 6, 3), 0),
    "small": (72, (3, 4, 6, 3), 12),
    "medium": (72, (3, 4, 23, 3), 0),
    "large": (72, (3, 8, 36, 3), 0),
}
VARIANTS = ("rubiks3d", "rubiks3d-aq", "rubiks2d")


def arch_name(tier: str, variant: str) -> str:
    """The timm name of a tier/variant: ``rubiksnet_large``, ``rubiksnet_large_aq``, ..."""
    if variant == "rubiks2d":
        return f"rubiksnet2d_{tier}"
    return f"rubiksnet_{tier}" + ("_aq" if variant == "rubiks3d-aq" else "")
