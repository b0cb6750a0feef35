"""RubiksNet in the reference checkpoint's parameter layout (SPEC §2.1, §2.2, §2.4).

A fallback, used only when rubiks-models is not installed (it trained the bundled demo
checkpoint before rubiks-models existed): the state dict has the released ``.pth.tar`` key
names (``backbone.*``, ``new_fc.*``), so rubiks-models loads its checkpoints like released
ones. Shift layers are rubiks-shift's :class:`RubiksShift3d`. No AQ variant.
It reproduces the reference fixture's eval logits (shared/fixtures/reference) to 4e-7.
"""

from __future__ import annotations

import math

import torch
from rubiks_shift import RubiksShift3d
from torch import nn

# tier: (width, repeats, squeeze-excitation)
TIERS = {
    "tiny": (54, (3, 4, 6, 3), False),
    "small": (72, (3, 4, 6, 3), True),
    "medium": (72, (3, 4, 23, 3), False),
    "large": (72, (3, 8, 36, 3), False),
}


class _SE(nn.Module):
    def __init__(self, channels: int, reduction: int = 12) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class _Shift(nn.Module):
    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.rubiks3d = RubiksShift3d(channels, stride=(1, stride, stride))

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        y = self.rubiks3d(x.reshape(-1, t, *x.shape[1:]))
        return y.reshape(-1, *y.shape[2:])


class Block(nn.Module):
    """Pre-activation bottleneck, expansion 1, bias-free convs (SPEC §2.1)."""

    def __init__(self, cin: int, cout: int, stride: int, se: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.as3 = _Shift(cout, stride)
        self.se = _SE(cout) if se else None
        self.conv3 = nn.Conv2d(cout, cout, 1, bias=False)
        self.shortcut = (
            None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        a = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        h = torch.relu(self.bn2(self.conv2(a)))
        h = self.as3(h, t)
        if self.se is not None:
            h = self.se(h)
        return self.conv3(h) + skip


class Backbone(nn.Module):
    def __init__(self, width: int, repeats: tuple[int, ...], se: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 2, 1, bias=False)
        self.layer0 = nn.ModuleList([Block(width, width, 1, se)])
        cin = width
        for i, r in enumerate(repeats):
            cout = width * 2**i
            blocks = [
                Block(cin if j == 0 else cout, cout, 2 if j == 0 else 1, se) for j in range(r)
            ]
            setattr(self, f"layer{i + 1}", nn.ModuleList(blocks))
            cin = cout
        self.bn_last = nn.BatchNorm2d(cin)
        self.out_channels = cin

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        x = self.conv1(x)
        for i in range(5):
            for block in getattr(self, f"layer{i}"):
                x = block(x, t)
        return torch.relu(self.bn_last(x)).mean(dim=(2, 3))


class ReferenceLayoutRubiksNet(nn.Module):
    """(B, T, 3, H, W) -> (B, classes): per-frame logits averaged over T."""

    def __init__(self, num_classes: int, tier: str = "tiny", dropout: float = 0.5) -> None:
        super().__init__()
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; choose from {sorted(TIERS)}")
        width, repeats, se = TIERS[tier]
        self.backbone = Backbone(width, repeats, se)
        self.dropout = nn.Dropout(dropout)
        self.new_fc = nn.Linear(self.backbone.out_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (k * k * m.out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        feats = self.backbone(x.flatten(0, 1), t)
        return self.new_fc(self.dropout(feats)).reshape(b, t, -1).mean(dim=1)
