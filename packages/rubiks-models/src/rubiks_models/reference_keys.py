"""The state-dict layout of the reference checkpoints (``backbone.*``, ``new_fc.*``) and
its conversion to this package's keys (docs/spec.md §2.4)."""

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "REFERENCE_KEY_MAP",
    "convert_reference_key",
    "convert_reference_state",
    "is_reference_layout",
    "unwrap_state_dict",
]

# Reference key suffix inside a block -> ours (docs/spec.md §2.4).
REFERENCE_KEY_MAP: dict[str, str] = {
    "bn1.": "norm1.",
    "bn2.": "norm2.",
    "conv2.weight": "conv1.weight",
    "conv2.1.weight": "conv1.weight",
    "conv2.0.weight": "tshift.weight",
    "conv2.0.T": "tshift.tau",
    "as3.rubiks3d.shift": "rubiks.shift",
    "as3.shift": "rubiks.shift",
    "se.fc.0.weight": "se.fc1.weight",
    "se.fc.2.weight": "se.fc2.weight",
    "conv3.weight": "conv2.weight",
    "shortcut.weight": "shortcut.weight",
}
_BLOCK_KEY = re.compile(r"^backbone\.layer(\d+)\.(\d+)\.(.+)$")


def convert_reference_key(key: str) -> str:
    """Our name for a reference state-dict key; ValueError naming it if it is unknown."""
    if key == "backbone.conv1.weight":
        return "stem.weight"
    if key.startswith("backbone.bn_last."):
        return "norm." + key.removeprefix("backbone.bn_last.")
    if key.startswith("new_fc."):
        return "fc." + key.removeprefix("new_fc.")
    m = _BLOCK_KEY.match(key)
    if m:
        stage, block, rest = m.groups()
        for ref, ours in REFERENCE_KEY_MAP.items():
            if rest == ref or (ref.endswith(".") and rest.startswith(ref)):
                return f"stages.{stage}.blocks.{block}.{ours}{rest[len(ref) :]}"
    raise ValueError(f"unexpected key in reference checkpoint: {key!r}")


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict inside a checkpoint dict (``model``/``state_dict`` entry), with a
    DDP ``module.`` prefix removed."""
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise ValueError(f"checkpoint has a non-string key {k!r}")
        out[k.removeprefix("module.")] = v
    return out


def is_reference_layout(state: Mapping[str, Any]) -> bool:
    """True when ``state`` has reference keys (``backbone.*`` or ``new_fc.*``)."""
    return any(k.startswith(("backbone.", "new_fc.")) for k in state)


def convert_reference_state(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The unwrapped state dict in our keys: a reference layout converted, ours as it is."""
    state = unwrap_state_dict(state_dict)
    if is_reference_layout(state):
        state = {convert_reference_key(k): v for k, v in state.items()}
    return state
