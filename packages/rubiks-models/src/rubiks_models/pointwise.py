"""1x1 convolutions that keep the layouts the shift ops read, in compiled code too.

Inductor's layout optimisation gives 2-D convolutions channels-last operands and results.
In the fused RubiksNet every shift sits between two 1x1 convolutions and reads
(N, T, C, H, W) or channel-major clips, so compiled code would copy each shift's input
out of channels-last and its output back. A 1-D convolution over the flattened planes
computes the same product and keeps the layout it is given: compiled code on the devices
in :data:`ONE_D_DEVICES` runs the fused blocks' 1x1 convolutions that way; eager code
runs them as they are.

Why only there (``BENCHMARKS.md``, *torch.compile*): on an H200 this brought the compiled
fused models' GPU time in float32 down to their eager one (Tiny 3.97 to 2.66 ms per
batch, eager 2.65; Large 7.88 to 6.27, eager 6.22), while the unfused Large, whose
convolutions gain from channels-last, went from 6.39 to 7.63 ms; on a 2-core CPU the
fused Tiny was no faster and the unfused model slower (oneDNN's 1-D convolutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# device types whose compiled code runs the fused blocks' 1x1 convolutions as 1-D ones
ONE_D_DEVICES: frozenset[str] = frozenset({"cuda"})


def conv1x1(frames: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """The 1x1 convolution (no bias) of (N, in, H, W) ``frames`` with an (out, in, 1, 1)
    ``weight``: ``F.conv2d``, except while torch.compile traces for a device in
    :data:`ONE_D_DEVICES`: a 1-D convolution over the flattened planes (strided planes
    sliced first)."""
    if not torch.compiler.is_compiling() or frames.device.type not in ONE_D_DEVICES:
        return F.conv2d(frames, weight, stride=stride)
    if stride != 1:
        frames = frames[:, :, ::stride, ::stride]
    n, c, height, width = frames.shape
    out = F.conv1d(frames.reshape(n, c, height * width), weight.flatten(2))
    return out.view(n, weight.shape[0], height, width)
