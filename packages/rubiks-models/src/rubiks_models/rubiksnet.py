"""RubiksNet: Learnable 3D-Shift for Efficient Video Action Recognition (ECCV 2020).

A timm model file, in timm's order: layers and blocks (the shift layers are in
:mod:`.shift_layers`), the model, the checkpoint filter, ``_create``, the pretrained configs
and the registered entrypoints.

* ``rubiksnet_{tiny,small,medium,large}``: the video model, variant ``rubiks3d``
  (a learnable (T, H, W) RubiksShift per channel in every block).
* ``rubiksnet_{tier}_aq``: variant ``rubiks3d-aq`` (spatial RubiksShift2d plus a 3-tap
  temporal attention shift before each block's first 1x1 conv, docs/spec.md §2.3).
* ``rubiksnet2d_{tier}``: the image form of the backbone (spatial shifts only, for
  ImageNet-style pretraining); :func:`rubiks_models.inflation.inflate` turns it into a
  video model (docs/spec.md §1.6).

Input: clips (B, T, C, H, W), images (B, C, H, W) (a one-frame clip) or TSN-stacked frames
(B, 3T, H, W). Output: (B, num_classes), the per-frame logits averaged over T.
``forward_features`` / ``forward_intermediates`` keep the input's layout: (B, C, h, w) for
images, (B, T, C, h, w) for clips.

Reference checkpoint keys (``backbone.layer1.0.as3.rubiks3d.shift``, ``new_fc.weight``, ...)
are converted by :func:`checkpoint_filter_fn` (the mapping: :mod:`.reference_keys`).
Weight files are found by :mod:`.weight_files`, read and checked by :mod:`.checkpoint`.
"""

import json
import math
import operator
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from rubiks_shift import batch_norm, is_channel_major, kernels

from .archs import TIERS, VARIANTS
from .channel_major_block import (
    BlockSettings,
    ChannelMajorBlock,
    clip_points,
    points_clip,
    to_channel_major,
)
from .checkpoint import CheckpointError, check_state_dict, resolve_checkpoint, strict_pretrained
from .norm_relu_shift import NormReluShift, NormShiftSettings
from .reference_keys import REFERENCE_KEY_MAP, convert_reference_key, convert_reference_state
from .shift_layers import Shift2d, Shift3d, TemporalAttentionShift, hard_temporal_shift
from .stage_graphs import PoolSharing, StageGraphs
from .stage_op import call_stage_op, op_applies, register_stage, trainable_params
from .training_stem import StemConv
from .weight_casts import RubiksBlocks, current_casts
from .weight_files import (
    RELEASED_FILES,
    local_weight_file,
    released_cfg_fields,
    require_weight_file,
    weights_dir,
    with_local_weights,
)

__all__ = [  # with the names other modules import from here (re-exported)
    "REFERENCE_KEY_MAP",
    "RELEASED_FILES",
    "TIERS",
    "VARIANTS",
    "RubiksNet",
    "checkpoint_filter_fn",
    "convert_reference_key",
    "is_shift_param",
    "local_weight_file",
    "require_weight_file",
    "weights_dir",
]

# ------------------------------------------------------------------ layers and blocks


def _conv_init(conv: nn.Conv2d) -> None:
    k = conv.kernel_size[0] * conv.kernel_size[1]
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (k * conv.out_channels)))


class SqueezeExcite(nn.Module):
    """avg-pool -> Linear(C, C//r) -> ReLU -> Linear(C//r, C) -> sigmoid -> scale (no biases)."""

    def __init__(self, channels: int, reduction: int = 12) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(channels // reduction, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]


# Blocks whose input planes have at most this many pixels run channel-major: in training
# on CUDA in 16-bit dtypes (RubiksBlock.channel_major_plane), and in the fused inference
# form (FusedRubiksNet.channel_major_plane). Why: packages/rubiks-models/BENCHMARKS.md.
CHANNEL_MAJOR_PLANE = 28 * 28
NARROW_DTYPES = (torch.bfloat16, torch.float16)


def _trains_with_kernels(norm: nn.Module) -> bool:
    """Whether ``norm`` is a plain batch norm in training mode that updates running
    statistics: what :func:`rubiks_shift.batch_norm_relu` computes with its kernels."""
    return (
        type(norm) is nn.BatchNorm2d
        and norm.training
        and norm.track_running_stats
        and norm.momentum is not None
        # a direct read (nn.Module.__getattr__ costs ~0.6 µs: RubiksBlock._one_node_inputs)
        and norm._buffers["num_batches_tracked"] is not None
    )


def _kernel_norm(norm: nn.Module, dtype: torch.dtype) -> tuple | None:
    """(weight, bias, (running_mean, running_var, momentum, eps)) of a batch norm that the
    training kernels run on ``dtype`` values (``_trains_with_kernels``, affine, its
    parameters and running statistics contiguous in the dtype the kernels accumulate
    in), read from the module's dicts (``RubiksBlock._one_node_inputs``); else None."""
    if not (_trains_with_kernels(norm) and norm.affine):
        return None
    params, buffers = norm._parameters, norm._buffers
    weight, bias = params["weight"], params["bias"]
    mean, var = buffers["running_mean"], buffers["running_var"]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    if any(t.dtype != acc or not t.is_contiguous() for t in (weight, bias, mean, var)):
        return None
    return weight, bias, (mean, var, norm.momentum, norm.eps)


def _shift_settings(layer: nn.Module, frames: int, height: int) -> tuple:
    """(stride, padding, quantize, normalize_grad, normalize_t_factor) of a ``Shift3d``
    reading clips of ``frames`` frames of ``height`` rows ("auto": frames / height)."""
    t_factor = layer.normalize_t_factor
    if isinstance(t_factor, str):  # "auto": T / H of the shift's input
        t_factor = frames / height
    return layer.stride, layer.padding, layer.quantize, layer.normalize_grad, float(t_factor)


def norm_relu(norm: nn.Module, act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``act(norm(x))``. A batch norm in training followed by a ReLU on a CUDA tensor runs
    as :func:`rubiks_shift.batch_norm_relu` (in plain eager code its deterministic kernels:
    statistics and gradients over many blocks per channel, the normalisation and ReLU one
    pass), with the module state updates of ``nn.BatchNorm2d``; anything else is the
    modules' own forward (evaluation, the CPU, traced code)."""
    cuda = type(x) is torch.Tensor and x.is_cuda
    if cuda and type(act) is nn.ReLU and _trains_with_kernels(norm):
        norm.num_batches_tracked.add_(1)
        return batch_norm.batch_norm_relu(
            x, norm.running_mean, norm.running_var, norm.weight, norm.bias, True,
            norm.momentum, norm.eps,
        )  # fmt: skip
    return act(norm(x))


class RubiksBlock(nn.Module):
    """Pre-activation bottleneck, expansion 1, bias-free convs (docs/spec.md §2.1), on clips.

    ``a = relu(norm1(x))``; shortcut = x, or a strided 1x1 conv of ``a``;
    ``h = relu(norm2(conv1(tshift(a))))`` (``tshift`` only in the AQ variant);
    ``h = rubiks(h)`` (the shift, with the block's spatial stride); optional SE;
    ``return conv2(h) + shortcut``. The keyword options are :class:`RubiksNet`'s (it passes
    them all, so their defaults are set there).

    In training on CUDA in bfloat16 or float16 (autocast or a 16-bit model; eager or
    compiled), a rubiks3d block without SE whose input planes have at most
    ``channel_major_plane`` pixels (0: never) runs channel-major: its input is stored
    (C, N, T, H, W) (copied once, by the first such block), every 1x1 convolution is one
    matrix product over all the clip's points, and the batch norms and the shift read
    that layout in place; the output stays channel-major (``_forward_channel_major``).
    In plain eager code the block then records one autograd node
    (:class:`.ChannelMajorBlock`) instead of one per op (eager training is bound by the
    host's work per op); hooks on its layers do not run in that form.

    In eager CUDA training a block keeps fewer activations for its backward
    (``recompute_activations``, :meth:`RubiksNet.set_activation_recompute`): norm2, act2
    and the shift run as one node (:class:`.NormReluShift`) that recomputes the shift's
    input, and the channel-major node recomputes ``relu(norm1(x))`` as well.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        *,
        variant: str,
        se_reduction: int,
        shift_init: str,
        t_init: str,
        normalize_grad: bool,
        normalize_t_factor: float | str,
        aq_tau: float,
        deploy: bool,
    ) -> None:
        super().__init__()
        self.is_3d = variant == "rubiks3d"
        self.has_tshift = variant == "rubiks3d-aq"
        self.has_proj = stride != 1 or in_chs != out_chs
        self.norm1 = nn.BatchNorm2d(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.tshift: nn.Module = nn.Identity()
        if self.has_tshift:
            self.tshift = (
                Shift3d(in_chs, init="zero", t_init="zero", quantize=True)
                if deploy
                else TemporalAttentionShift(in_chs, aq_tau)
            )
        self.conv1 = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        if self.is_3d:
            self.rubiks: nn.Module = Shift3d(
                out_chs,
                stride=(1, stride, stride),
                init=shift_init,
                t_init=t_init,
                normalize_grad=normalize_grad,
                normalize_t_factor=normalize_t_factor,
                quantize=deploy,
            )
        else:
            self.rubiks = Shift2d(
                out_chs,
                stride=stride,
                init=shift_init,
                normalize_grad=normalize_grad,
                quantize=deploy,
            )
        self.se = SqueezeExcite(out_chs, se_reduction) if se_reduction else nn.Identity()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)
            if self.has_proj
            else nn.Identity()
        )
        # the blocks channel-major training can run (set_channel_major_plane)
        self.has_channel_major = self.is_3d and not se_reduction
        self.channel_major_plane = CHANNEL_MAJOR_PLANE if self.has_channel_major else 0
        self.recompute_activations = True  # RubiksNet.set_activation_recompute

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("recompute_activations", True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._runs_channel_major(x):
            return self._forward_channel_major(x if is_channel_major(x) else to_channel_major(x))
        b, t = x.shape[0], x.shape[1]
        f = x.flatten(0, 1)
        a = self.act1(self.norm1(f)) if torch.jit.is_scripting() else self._norm_relu(f, False)
        skip = self.shortcut(a) if self.has_proj else f
        if self.has_tshift:
            a = self.tshift(a.unflatten(0, [b, t])).flatten(0, 1)
        h = self.conv1(a)
        if torch.jit.is_scripting():
            h = self.act2(self.norm2(h))
            h = self.rubiks(h.unflatten(0, [b, t])).flatten(0, 1) if self.is_3d else self.rubiks(h)
        elif self.is_3d:
            h = self._norm_relu_shift(h, t).flatten(0, 1)
        else:
            h = self.rubiks(self._norm_relu(h, True))
        h = self.conv2(self.se(h))
        return (h + skip).unflatten(0, [b, t])

    @torch.jit.unused
    def _norm_relu_shift(self, h: torch.Tensor, frames: int) -> torch.Tensor:
        """``rubiks(relu(norm2(h)))`` of conv1's frames h (B·T, C, H, W), as a clip. In
        plain eager CUDA training with the batch norm's kernels one autograd node
        (:class:`.NormReluShift`: it keeps h, not the shift's input, for the backward;
        hooks on norm2, act2 and rubiks do not run in that form), else the modules."""
        node = self._norm_shift_inputs(h, frames)
        if node is None:
            return self.rubiks(self._norm_relu(h, True).unflatten(0, [-1, frames]))
        self.norm2._buffers["num_batches_tracked"].add_(1)
        return NormReluShift.apply(h, *node)

    @torch.jit.unused
    def _norm_shift_inputs(self, h: torch.Tensor, frames: int) -> tuple | None:
        """:class:`.NormReluShift`'s arguments after h, or None where the modules run
        instead (not a CUDA tensor in plain eager code, recomputation off, an autocast
        dtype the shift would cast h to, or what :meth:`_norm_shift_args` refuses)."""
        if not (type(h) is torch.Tensor and h.is_cuda and self.recompute_activations):
            return None
        if not kernels.plain_eager():
            return None
        autocast = h.dtype != torch.float64 and torch.is_autocast_enabled("cuda")
        if autocast and h.dtype != torch.get_autocast_dtype("cuda"):
            return None
        return self._norm_shift_args(h, frames)

    @torch.jit.unused
    def _norm_shift_args(self, h: torch.Tensor, frames: int) -> tuple | None:
        """(norm2's weight and bias, the shift, ``frames``, :class:`.NormShiftSettings`)
        from the modules, or None where act2 is not a ReLU, the shift layer not a plain
        ``Shift3d`` or norm2 not a batch norm the kernels train (``_kernel_norm``)."""
        modules = self._modules
        layer = modules["rubiks"]
        if type(modules["act2"]) is not nn.ReLU or type(layer) is not Shift3d:
            return None
        norm = _kernel_norm(modules["norm2"], h.dtype)
        if norm is None:
            return None
        weight, bias, statistics = norm
        settings = NormShiftSettings(statistics, _shift_settings(layer, frames, h.shape[2]))
        return weight, bias, layer._parameters["shift"], frames, settings

    @torch.jit.unused
    def _norm_relu(self, x: torch.Tensor, second: bool) -> torch.Tensor:
        """relu(norm2(x)) where ``second``, else relu(norm1(x)): :func:`norm_relu`."""
        if second:
            return norm_relu(self.norm2, self.act2, x)
        return norm_relu(self.norm1, self.act1, x)

    @torch.jit.unused
    def _runs_channel_major(self, x: torch.Tensor) -> bool:
        """Whether this call runs channel-major (see the class docstring)."""
        return (
            self.channel_major_plane > 0
            and self.training
            and (type(x) is torch.Tensor or type(x) is FakeTensor)  # fake: stage_op's
            and x.is_cuda
            and x.dtype in NARROW_DTYPES
            and (x.shape[-2] * x.shape[-1] <= self.channel_major_plane or is_channel_major(x))
        )

    @torch.jit.unused
    def _forward_channel_major(self, x: torch.Tensor) -> torch.Tensor:
        """The block on a channel-major clip (``to_channel_major``), returned channel-major:
        one autograd node (:class:`.ChannelMajorBlock`) in plain eager code with
        training-mode batch norms, else the same computation composed of differentiable
        ops (``_composed_channel_major``)."""
        node = self._one_node_inputs(x)
        if node is None:
            return self._composed_channel_major(x)
        counters, inputs = node
        torch._foreach_add_(counters, 1)
        return ChannelMajorBlock.apply(x, *inputs)

    @torch.jit.unused
    def _one_node_inputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple] | None:
        """(the batch norms' step counters, :class:`.ChannelMajorBlock`'s arguments after
        x: weights, batch-norm parameters, shift, :class:`.BlockSettings`), or None where
        this call cannot run as one node (traced or transformed code, batch norms not in
        training mode with running statistics or with parameters in another dtype than
        the kernels accumulate in, a shift layer that is not a plain ``Shift3d``).

        Module state is read from the modules' ``_modules``, ``_parameters`` and
        ``_buffers`` dicts, not as attributes: each such attribute read goes through
        ``nn.Module.__getattr__`` (about 0.6 µs), and eager training is bound by the
        host's time (``packages/rubiks-models/BENCHMARKS.md``, *Eager training*)."""
        if not kernels.plain_eager():
            return None
        modules = self._modules
        shift_layer = modules["rubiks"]
        if type(shift_layer) is not Shift3d:
            return None
        counters, norms, affine = [], [], []
        for name in ("norm1", "norm2"):
            norm = _kernel_norm(modules[name], x.dtype)
            if norm is None:
                return None
            counters.append(modules[name]._buffers["num_batches_tracked"])
            norms.append(norm[2])
            affine += norm[:2]
        device_type = x.device.type
        autocast = torch.is_autocast_enabled(device_type)
        proj = modules["shortcut"] if self.has_proj else None
        settings = BlockSettings(
            norm1=norms[0],
            norm2=norms[1],
            stride=1 if proj is None else proj.stride[0],
            shift=_shift_settings(shift_layer, x.shape[1], x.shape[3]),
            dtype=torch.get_autocast_dtype(device_type) if autocast else None,
            recompute=self.recompute_activations,
        )  # fmt: skip
        weights = (
            modules["conv1"]._parameters["weight"],
            modules["conv2"]._parameters["weight"],
            None if proj is None else proj._parameters["weight"],
        )
        casts = current_casts()
        if casts is not None and settings.dtype is not None:
            settings = settings._replace(matrices=casts.matrices(self, weights, settings.dtype))
        shift = shift_layer._parameters["shift"]
        return counters, (*weights, *affine, shift, settings)

    @torch.jit.unused
    def product_weights(self) -> tuple:
        """The weights the channel-major node multiplies as (out, in) matrices: conv1's,
        conv2's and the projection's (None without one)."""
        modules = self._modules
        proj = modules["shortcut"]._parameters["weight"] if self.has_proj else None
        return (
            modules["conv1"]._parameters["weight"],
            modules["conv2"]._parameters["weight"],
            proj,
        )

    @torch.jit.unused
    def _composed_channel_major(self, x: torch.Tensor) -> torch.Tensor:
        """``_forward_channel_major`` as differentiable ops: each 1x1 convolution one
        product over all the clip's points (an (out, in) weight times an (in, points)
        matrix, no layout conversions forward or backward), the residual sum folded into
        conv2's (``addmm``). Any layout gives the same values (slower: the products then
        copy)."""
        b, t, cin, height, width = x.shape
        cout = self.conv2.out_channels
        # (C, points) matrices; the batch norms see them as one (1, C, points, 1) image
        xm = clip_points(x).view(1, cin, -1, 1)
        a = self._norm_relu(xm, False).view(cin, -1)
        h = torch.mm(self.conv1.weight.view(cout, cin), a).view(1, cout, -1, 1)
        h = points_clip(self._norm_relu(h, True), b, t, height, width)
        h = self.rubiks(h)
        ho, wo = h.shape[-2:]
        if self.has_proj:
            stride = self.shortcut.stride[0]
            frames = a.view(cin, b, t, height, width)[..., ::stride, ::stride]
            skip = torch.mm(self.shortcut.weight.view(cout, cin), frames.reshape(cin, -1))
        else:
            skip = xm.view(cin, -1)
        hm = clip_points(h)
        out = torch.addmm(skip, self.conv2.weight.view(cout, cout), hm)
        return points_clip(out, b, t, ho, wo)


# the module types a stage replays as CUDA graphs (stage_graphs): the blocks' own
GRAPHED_MODULES = frozenset(
    {
        nn.Sequential, RubiksBlocks, RubiksBlock, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.Identity,
        nn.Linear, Shift3d, Shift2d, TemporalAttentionShift, SqueezeExcite,
    }
)  # fmt: skip


class RubiksStage(nn.Module):
    """A sequence of blocks. In CUDA training it replays its blocks' forward and backward
    as CUDA graphs once a signature repeats (:mod:`.stage_graphs`; off with
    ``eager_graphs = False`` or ``RubiksNet.set_eager_graphs(False)``). Under torch.compile
    its training on CUDA runs as one op that replays those graphs (:mod:`.stage_op`), or
    with ``RubiksNet.set_compiled_replays(False)`` is traced for the compiler."""

    def __init__(self, blocks: list[RubiksBlock]) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.eager_graphs = True
        self.compiled_replays = True
        self.blocks = RubiksBlocks(*blocks)
        self._graphs = StageGraphs(GRAPHED_MODULES)
        self._op_handle = register_stage(self)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._op_handle = register_stage(self)  # a copy: its own handle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        if self.training and self.eager_graphs and not torch.jit.is_scripting():
            out = self._replayed(x)
            if out is not None:
                return out
        return self.blocks(x)

    @torch.jit.unused
    def _replayed(self, x: torch.Tensor) -> torch.Tensor | None:
        """The blocks' output by replaying their graphs (:meth:`StageGraphs.run`; compiled:
        through :mod:`.stage_op`), or None where the caller runs the blocks."""
        if self.__dict__.get("_is_replica", False):
            return None  # a DataParallel replica: its threads share the state
        if torch.compiler.is_compiling():
            if not self.compiled_replays:
                return None
            params = trainable_params(self)
            if not op_applies(x, params):
                return None
            return call_stage_op(self._op_handle, x, params)
        return self._graphs.run(self.blocks, x)

    def reset_graphs(self) -> None:
        """Drop the captured graphs and their memory; a later signature captures anew."""
        self._graphs.reset()

    def _apply(self, fn, recurse: bool = True):
        self._graphs.reset()  # new storage (another device or dtype): capture again
        return super()._apply(fn, recurse)


@register_notrace_function
def as_clip(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """(B, T, C, H, W) from a clip, an image (B, C, H, W) or TSN-stacked frames (B, 3T, H, W)."""
    # f-strings, which torch.compile can format where dynamic shapes make sizes symbolic
    # (str() of a symbolic size it cannot): its error then quotes the message
    if x.dim() == 5:
        if x.shape[2] != in_chans:
            raise ValueError(
                f"clip must be (B, T, C, H, W) with C = {in_chans}, got shape {list(x.shape)}"
            )
        return x
    if x.dim() == 4:
        c = x.shape[1]
        if c == in_chans:
            return x.unsqueeze(1)
        if in_chans == 3 and c % 3 == 0:
            return x.reshape(x.shape[0], c // 3, 3, x.shape[2], x.shape[3])
        stacked = " or TSN-stacked (B, 3T, H, W)" if in_chans == 3 else ""
        raise ValueError(
            f"4-D input must be (B, {in_chans}, H, W){stacked}, got shape {list(x.shape)}"
        )
    forms = "(B, T, C, H, W), (B, C, H, W) or (B, 3T, H, W)"
    raise ValueError(f"input must be {forms}, got shape {list(x.shape)}")


@register_notrace_function
def match_layout(feat: torch.Tensor, x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Clip features (B, T, C, h, w) as (B, C, h, w) when the input ``x`` was one image."""
    if x.dim() == 4 and x.shape[1] == in_chans:
        return feat.squeeze(1)
    return feat


def is_shift_param(name: str) -> bool:
    """True for shift tensors: RubiksShift ``.shift`` and the AQ tap logits."""
    return name.endswith(("rubiks.shift", "tshift.weight", "tshift.shift"))


# ------------------------------------------------------------------------------ model


class RubiksNet(nn.Module):
    """RubiksNet video classifier (and its 2-D image form).

    Also the seed-compatible facade: ``RubiksNet(tier, num_classes, num_frames=8,
    variant="rubiks3d")`` and ``RubiksNet.load_pretrained(path)``.

    Args:
        tier: ``tiny``, ``small``, ``medium`` or ``large`` (docs/spec.md §2.2).
        num_classes: classes of the head (0: no head, forward returns pooled features).
        num_frames: nominal frames per clip (metadata; T is read from every input).
        variant: ``rubiks3d``, ``rubiks3d-aq`` or ``rubiks2d`` (image backbone).
        in_chans: input channels.
        global_pool: ``avg`` (spatial and temporal mean) or ``''`` (no pooling, no head).
        drop_rate: dropout on the per-frame pooled features before the classifier
            (the reference uses none; TSM's training recipe uses 0.5).
        shift_init / t_init: spatial / temporal shift initialisation (rubiks-shift modes).
        normalize_grad / normalize_t_factor: shift-gradient normalisation (docs/spec.md §1.5).
        aq_tau: initial AQ temperature.
        deploy: the zero-multiply deployment form: every shift quantized (integer gather),
            AQ taps as hard integer temporal shifts (see :mod:`rubiks_models.deploy`).
    """

    def __init__(
        self,
        tier: str = "tiny",
        num_classes: int = 174,
        num_frames: int = 8,
        variant: str = "rubiks3d",
        *,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        shift_init: str = "uniform",
        t_init: str = "uniform",
        normalize_grad: bool = True,
        normalize_t_factor: float | str = 1.0,
        aq_tau: float = 2.0,
        deploy: bool = False,
        width: int | None = None,
        repeats: tuple[int, ...] | None = None,
        se_reduction: int | None = None,
    ) -> None:
        super().__init__()
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; choose from {list(TIERS)}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
        num_classes = self._check_head(num_classes, global_pool)
        t_width, t_repeats, t_se = TIERS[tier]
        width = width or t_width
        repeats = tuple(repeats or t_repeats)
        se_reduction = t_se if se_reduction is None else se_reduction
        self.tier = tier
        self.variant = variant
        self.width, self.repeats, self.se_reduction = width, repeats, se_reduction
        self.num_frames = num_frames
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.normalize_grad, self.normalize_t_factor = normalize_grad, normalize_t_factor
        self.grad_checkpointing = False

        self.stem = StemConv(in_chans, width)
        block_args: dict[str, Any] = dict(
            variant=variant,
            se_reduction=se_reduction,
            shift_init=shift_init,
            t_init=t_init,
            normalize_grad=normalize_grad,
            normalize_t_factor=normalize_t_factor,
            aq_tau=aq_tau,
            deploy=deploy,
        )
        self.deploy = deploy
        stages = []
        self.feature_info: list[dict[str, Any]] = []
        cin, reduction = width, 2
        for i, (r, mult) in enumerate(zip((1, *repeats), (1, 1, 2, 4, 8), strict=True)):
            cout = width * mult
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = [
                RubiksBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, **block_args)
                for j in range(r)
            ]
            stages.append(RubiksStage(blocks))
            self.feature_info.append(dict(num_chs=cout, reduction=reduction, module=f"stages.{i}"))
            cin = cout
        sharing = PoolSharing()  # the stages' CUDA graphs share one memory pool
        for i, stage in enumerate(stages):
            stage._graphs.share(sharing, i)
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = cin
        self.norm = nn.BatchNorm2d(cin)
        self.act = nn.ReLU(inplace=True)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _conv_init(m)

    @torch.jit.ignore
    def build_args(self) -> dict[str, Any]:
        """The keyword arguments, besides tier, classes, frames, variant and ``deploy``,
        that rebuild this model's architecture and training behaviour (what
        :func:`.weights.save_weights` records and ``load_pretrained`` reads back; the
        initialisations and ``aq_tau``, a buffer, are not among them)."""
        return dict(
            in_chans=self.in_chans,
            global_pool=self.global_pool,
            drop_rate=self.drop_rate,
            normalize_grad=self.normalize_grad,
            normalize_t_factor=self.normalize_t_factor,
            width=self.width,
            repeats=list(self.repeats),
            se_reduction=self.se_reduction,
        )

    # ---------------------------------------------------------------- timm API

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [(r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable
            s.reset_graphs()

    @torch.jit.ignore
    def set_eager_graphs(self, enable: bool = True) -> None:
        """Whether the stages replay their blocks as CUDA graphs in eager CUDA training
        (default on; :mod:`rubiks_models.stage_graphs`). Either way the graphs captured so
        far are dropped: call it after changing a setting the blocks read when called
        (a batch norm's momentum, a shift layer's options) in place."""
        if not isinstance(enable, bool):
            raise TypeError(f"enable must be a bool, got {type(enable).__name__}")
        for s in self.stages:
            s.eager_graphs = enable
            s.reset_graphs()

    def set_compiled_replays(self, enable: bool = True) -> None:
        """Whether, under torch.compile, CUDA training stages run as ops that replay their
        CUDA graphs (:mod:`rubiks_models.stage_op`; default on) or are traced for the
        compiler. On suits torch's default mode, whose traced step is bound by the host;
        off suits ``mode="reduce-overhead"``, whose own CUDA graphs then hold the whole
        step (``BENCHMARKS.md``, *torch.compile*). Recompile after changing it."""
        if not isinstance(enable, bool):
            raise TypeError(f"enable must be a bool, got {type(enable).__name__}")
        for s in self.stages:
            s.compiled_replays = enable

    @torch.jit.ignore
    def set_activation_recompute(self, enable: bool = True) -> None:
        """Whether eager CUDA training keeps fewer activations per block for the backward
        and recomputes them there (default on): each block's ``relu(norm2(.))`` (the
        shift's input), and in the channel-major blocks ``relu(norm1(x))`` too, come back
        from the batch norms' inputs in one elementwise pass each, bit for bit. On, a
        Large step holds less memory than TSM-ResNet50's; off, it is a few percent faster
        (``BENCHMARKS.md``, *Eager training*). Gradients are the same either way."""
        if not isinstance(enable, bool):
            raise TypeError(f"enable must be a bool, got {type(enable).__name__}")
        for m in self.modules():
            if isinstance(m, RubiksBlock):
                m.recompute_activations = enable
        for s in self.stages:
            s.reset_graphs()

    @torch.jit.ignore
    def set_channel_major_plane(self, pixels: int) -> None:
        """Blocks whose input planes have at most ``pixels`` pixels run channel-major in
        eager CUDA training in 16-bit dtypes (0: none; default ``CHANNEL_MAJOR_PLANE``,
        28 x 28; see :class:`RubiksBlock`). Outputs are the same values either way."""
        if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 0:
            raise ValueError(f"channel_major_plane must be an int >= 0, got {pixels!r}")
        for m in self.modules():
            if isinstance(m, RubiksBlock) and m.has_channel_major:
                m.channel_major_plane = pixels
        for s in self.stages:
            s.reset_graphs()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Shift tensors (the (3, C) / (2, C) shifts and the AQ tap logits): never decayed,
        as in the reference policy (decay would pull every shift towards 0, i.e. towards a
        plain 1x1 network). BN and biases are 1-D, which timm excludes anyway."""
        return {n for n, _ in self.named_parameters() if is_shift_param(n)}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        pool = self.global_pool if global_pool is None else global_pool
        num_classes = self._check_head(num_classes, pool)  # before any change
        self.num_classes, self.global_pool = num_classes, pool
        ref = self.stem.weight
        self.fc = (
            nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )

    @staticmethod
    def _check_head(num_classes: int, global_pool: str) -> int:
        """``num_classes`` as an int, after checking it and ``global_pool`` agree."""
        try:
            classes = operator.index(num_classes)
        except TypeError:
            classes = -1
        if classes < 0 or isinstance(num_classes, bool):
            raise ValueError(
                f"num_classes must be an integer >= 0 (0: no classifier), got {num_classes!r}"
            )
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if not global_pool and classes > 0:
            raise ValueError("global_pool='' (unpooled features) needs num_classes=0")
        return classes

    # ------------------------------------------------------------------ forward

    def _features(self, clip: torch.Tensor) -> torch.Tensor:
        b, t = clip.shape[0], clip.shape[1]
        x = self.stem(clip.flatten(0, 1)).unflatten(0, [b, t])
        x = self.stages(x)
        return self._final_norm(x)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        f = x.flatten(0, 1)
        f = self.act(self.norm(f)) if torch.jit.is_scripting() else self._norm_relu(f)
        return f.unflatten(0, [b, t])

    @torch.jit.unused
    def _norm_relu(self, x: torch.Tensor) -> torch.Tensor:
        """relu(norm(x)) of the final norm: :func:`norm_relu`."""
        return norm_relu(self.norm, self.act, x)

    def _head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((-2, -1))  # (B, T, C): per-frame pooled features
        x = self.head_drop(x)
        x = x.mean(1)  # consensus; the head is linear, so these are averaged frame logits
        return x if pre_logits else self.fc(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features after the final norm: (B, C, h, w) for images,
        (B, T, C, h, w) for clips (contiguous)."""
        feat = self._features(as_clip(x, self.in_chans)).contiguous()
        return match_layout(feat, x, self.in_chans)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (space, then time), dropout, classifier. Accepts (B, C, h, w) or
        (B, T, C, h, w) features."""
        if not self.global_pool:
            return x
        if x.dim() == 4:
            x = x.unsqueeze(1)
        return self._head(x, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self._features(as_clip(x, self.in_chans))
        if not self.global_pool:
            return match_layout(feat.contiguous(), x, self.in_chans)
        return self._head(feat)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (indices 0-4: strides 2, 4, 8, 16, 32), in the input's layout.

        Returns the intermediates, and (unless ``intermediates_only``) the final
        features as :meth:`forward_features` gives them.
        """
        if output_fmt != "NCHW":
            raise ValueError("output_fmt must be 'NCHW' (clips give (B, T, C, H, W))")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        clip = as_clip(x, self.in_chans)
        b, t = clip.shape[0], clip.shape[1]
        h = self.stem(clip.flatten(0, 1)).unflatten(0, [b, t])
        intermediates: list[torch.Tensor] = []
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            if stop_early and not torch.jit.is_scripting() and i > max_index:
                break
            h = stage(h)
            if i in take_indices:
                inter = self._final_norm(h) if norm and i == last else h
                intermediates.append(match_layout(inter.contiguous(), x, self.in_chans))
        if intermediates_only:
            return intermediates
        return match_layout(self._final_norm(h).contiguous(), x, self.in_chans), intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        if max_index < len(self.stages) - 1:  # the final norm belongs to the last stage
            prune_norm = True
        self.stages = self.stages[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    @classmethod
    def load_pretrained(
        cls, path: str | os.PathLike, num_classes: int | None = None, **kwargs: Any
    ) -> "RubiksNet":
        """A model with the weights of a reference ``.pth.tar``, a project ``.safetensors``
        file or a ``rubiks-convert`` output directory, loaded strictly; architecture from
        its metadata and tensors.

        A ``num_classes`` different from the checkpoint's gets a fresh head (fine-tuning:
        asked for explicitly). Other keyword arguments go to the model (e.g. ``drop_rate``).
        Every error names the file.
        """
        state, meta, (tier, variant, classes, frames) = resolve_checkpoint(path)
        for key, value in saved_model_kwargs(path, meta).items():
            kwargs.setdefault(key, value)
        model = cls(tier, classes, kwargs.pop("num_frames", frames), variant, **kwargs)
        try:
            converted = check_state_dict(state, model, checkpoint_filter_fn)
        except CheckpointError as exc:
            raise CheckpointError(f"{Path(path).expanduser()}: {exc}") from exc
        model.load_state_dict(converted, strict=True)
        if num_classes is not None and num_classes != classes:
            model.reset_classifier(num_classes)
        return model


_BUILD_ARGS = frozenset(
    ("in_chans", "global_pool", "drop_rate", "normalize_grad", "normalize_t_factor", "width",
     "repeats", "se_reduction")
)  # fmt: skip


def saved_model_kwargs(path: str | os.PathLike, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The RubiksNet keywords a checkpoint's metadata records: its ``build_args``
    (``model_args``, JSON, checked) and ``deploy`` for the deployment form."""
    kwargs = _saved_build_args(path, meta)
    if meta.get("deploy") in (True, "true"):
        kwargs["deploy"] = True
    return kwargs


def _saved_build_args(path: str | os.PathLike, meta: Mapping[str, Any]) -> dict[str, Any]:
    text = meta.get("model_args")
    if text is None:
        return {}
    try:
        saved = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{Path(path).expanduser()}: model_args is not JSON ({exc})") from exc
    if not isinstance(saved, dict) or not set(saved) <= _BUILD_ARGS:
        unknown = sorted(set(saved) - _BUILD_ARGS) if isinstance(saved, dict) else saved
        raise CheckpointError(
            f"{Path(path).expanduser()}: model_args holds what RubiksNet does not take: {unknown}"
        )
    return dict(saved)  # a copy: the caller adds to it


# ------------------------------------------------------------------ checkpoint filter


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module | None = None) -> dict:
    """Turn a reference (``backbone.*``/``new_fc.*``) or project state dict into this
    model's keys. Idempotent: our own keys pass through.

    With a ``model``: a (2, C) spatial shift loaded into a 3-D layer is inflated (its T row
    is kept from the model's initialisation, ``t_init``), as in docs/spec.md §1.6; a 3-D shift
    loaded into a 2-D layer keeps its (H, W) rows. The AQ temperature is a buffer: a
    checkpoint without it keeps the model's.
    """
    state = convert_reference_state(state_dict)
    if model is not None:
        own = model.state_dict()
        for k, v in list(state.items()):
            if not k.endswith("rubiks.shift") or k not in own or not isinstance(v, torch.Tensor):
                continue
            target = own[k]
            if v.dim() == 2 and v.shape[0] == 2 and target.shape == (3, v.shape[1]):
                state[k] = torch.cat([target[:1].to(v.dtype), v], 0)
            elif v.dim() == 2 and v.shape[0] == 3 and target.shape == (2, v.shape[1]):
                state[k] = v[1:]
        for k, v in own.items():
            if k.endswith("tshift.tau") and k not in state:
                state[k] = v
            if k.endswith("tshift.shift") and k not in state:  # soft AQ into a deploy model
                prefix = k.removesuffix("shift")
                logits = state.pop(prefix + "weight", None)
                state.pop(prefix + "tau", None)
                if logits is not None:
                    state[k] = hard_temporal_shift(logits).to(v.dtype)
    return state


# -------------------------------------------------------------------------- builder


def _create(name: str, pretrained: bool, tier: str, variant: str, **kwargs: Any) -> RubiksNet:
    """The timm build of a RubiksNet. Pretrained weights come from a local file, loaded
    strictly (:func:`.checkpoint.strict_pretrained`) unless ``pretrained_strict=False``
    asks for timm's own non-strict loading."""
    filter_fn = checkpoint_filter_fn
    if pretrained:
        kwargs = with_local_weights(name, kwargs)
        if kwargs.get("pretrained_strict", True):
            kwargs, filter_fn = strict_pretrained(name, kwargs, checkpoint_filter_fn)
    model = build_model_with_cfg(
        partial(RubiksNet, tier=tier, variant=variant),
        name,
        pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3, 4)),
        **kwargs,
    )
    for module in (model, *model.modules()):  # a features_only wrapper and its model
        cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("state_dict") is not None:
            cfg["state_dict"] = None  # loaded; the model must not keep a second copy alive
    return model


# -------------------------------------------------------------------------- configs


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 174,
        "input_size": (3, 224, 224),
        "min_input_size": (3, 32, 32),
        "pool_size": (7, 7),
        "crop_pct": 0.875,  # short side 256, centre crop 224 (TSM test protocol)
        "interpolation": "bilinear",
        "crop_mode": "center",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem",
        "classifier": "fc",
        "license": "mit",
        "paper_name": "RubiksNet: Learnable 3D-Shift for Efficient Video Action Recognition",
        "origin_url": "https://github.com/StanfordVL/RubiksNet",
        **kwargs,
    }


def _released(tag_name: str, **kwargs: Any) -> dict[str, Any]:
    """A cfg for a released checkpoint; ``file`` is set only when it is present locally,
    so ``timm.list_pretrained()`` lists exactly the weights this machine has."""
    return _cfg(**released_cfg_fields(tag_name), **kwargs)


_SSV2 = dict(num_classes=174, description="Something-Something-V2, 8 frames")
_K400 = dict(num_classes=400, description="Kinetics-400 (for fine-tuning), 8 frames")

default_cfgs = generate_default_cfgs(
    {
        **{f"rubiksnet_{t}.ssv2": _released(f"rubiksnet_{t}.ssv2", **_SSV2) for t in TIERS},
        **{f"rubiksnet_{t}.kinetics": _released(f"rubiksnet_{t}.kinetics", **_K400) for t in TIERS},
        "rubiksnet_large_aq.ssv2_budget0125": _released(
            "rubiksnet_large_aq.ssv2_budget0125",
            **{**_SSV2, "description": "Something-Something-V2, AQ budget 0.125, 8 frames"},
        ),
        **{f"rubiksnet_{t}_aq": _cfg() for t in ("tiny", "small", "medium")},
        **{f"rubiksnet2d_{t}": _cfg(num_classes=1000, description="image backbone") for t in TIERS},
    }
)


# ---------------------------------------------------------------------- entrypoints


@register_model
def rubiksnet_tiny(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """RubiksNet-Tiny (width 54, 1.9M params, 3.9G MACs per 8x224^2 clip)."""
    return _create("rubiksnet_tiny", pretrained, "tiny", "rubiks3d", **kwargs)


@register_model
def rubiksnet_small(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """RubiksNet-Small (width 72, squeeze-excitation, 3.6M params, 6.8G)."""
    return _create("rubiksnet_small", pretrained, "small", "rubiks3d", **kwargs)


@register_model
def rubiksnet_medium(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """RubiksNet-Medium (width 72, 6.2M params, 11.2G)."""
    return _create("rubiksnet_medium", pretrained, "medium", "rubiks3d", **kwargs)


@register_model
def rubiksnet_large(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """RubiksNet-Large (width 72, 8.5M params, 15.8G)."""
    return _create("rubiksnet_large", pretrained, "large", "rubiks3d", **kwargs)


@register_model
def rubiksnet_tiny_aq(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """RubiksNet-Tiny with attention-quantized temporal shift."""
    return _create("rubiksnet_tiny_aq", pretrained, "tiny", "rubiks3d-aq", **kwargs)


@register_model
def rubiksnet_small_aq(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """RubiksNet-Small with attention-quantized temporal shift."""
    return _create("rubiksnet_small_aq", pretrained, "small", "rubiks3d-aq", **kwargs)


@register_model
def rubiksnet_medium_aq(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """RubiksNet-Medium with attention-quantized temporal shift."""
    return _create("rubiksnet_medium_aq", pretrained, "medium", "rubiks3d-aq", **kwargs)


@register_model
def rubiksnet_large_aq(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """RubiksNet-Large with attention-quantized temporal shift (released: budget 0.125)."""
    return _create("rubiksnet_large_aq", pretrained, "large", "rubiks3d-aq", **kwargs)


@register_model
def rubiksnet2d_tiny(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """Image backbone of RubiksNet-Tiny (spatial shifts only)."""
    return _create("rubiksnet2d_tiny", pretrained, "tiny", "rubiks2d", **kwargs)


@register_model
def rubiksnet2d_small(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """Image backbone of RubiksNet-Small."""
    return _create("rubiksnet2d_small", pretrained, "small", "rubiks2d", **kwargs)


@register_model
def rubiksnet2d_medium(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """Image backbone of RubiksNet-Medium."""
    return _create("rubiksnet2d_medium", pretrained, "medium", "rubiks2d", **kwargs)


@register_model
def rubiksnet2d_large(pretrained: bool = False, **kwargs: Any) -> RubiksNet:
    """Image backbone of RubiksNet-Large."""
    return _create("rubiksnet2d_large", pretrained, "large", "rubiks2d", **kwargs)
