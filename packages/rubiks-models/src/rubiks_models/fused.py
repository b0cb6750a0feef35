"""The fused inference form of a RubiksNet: fewer passes over memory, fewer launches.

A RubiksNet block is pre-activation: ``a = relu(bn1(x))``, ``h = relu(bn2(conv1(a)))``,
``h = shift(h)``, ``out = conv2(h) + shortcut``. In eager PyTorch that is eight kernels
and eight passes over the activation. :func:`fuse_model` rewrites a trained model for
inference (batch norms with their running statistics) as four:

1. ``a = relu(x * s1 + b1)``: one elementwise pass (:func:`rubiks_shift.affine_relu`;
   a hardened AQ block's integer temporal shift is read by the same pass, as its
   ``frame_shift``);
2. ``conv1`` as a batched matrix product, with ``bn2``'s scale folded into its weights;
3. ``relu(. + b2)`` applied inside the RubiksShift kernel as it reads its input
   (:func:`rubiks_shift.affine_relu_shift3d`): the activation is never written;
4. ``conv2`` and the residual sum as one in-place ``baddbmm_`` into the shortcut (the
   squeeze-excitation scale, where present, folded into conv2's weights per sample).

Where ``conv1_epilogue`` says so, a channel-major block moves step 3's ``relu(. + b2)``
into conv1's product instead: cuBLASLt applies a ReLU as it writes the product, and
``b2`` enters as extra columns of conv1's weights that multiply constant rows of ones.
The trunk then carries :data:`BIAS_ROWS` rows below its channels (zeros; the bn1 pass
maps them to ones and zeros), and the shift runs without its prologue.

On CUDA the stem, a 3x3 stride-2 convolution of 3-channel frames, is
:func:`rubiks_shift.stem_conv`'s kernel (cuDNN's took 6-9x the time of writing its
result). The result equals the unfused eval-mode model up to rounding (float32: about 1e-6
relative on the logits; the tests state the tolerances). The fused model is inference
only: it has no gradient, refuses training mode, and its blocks update their input
tensors in place (no caller sees them). It computes in the input's dtype, or in the
autocast dtype where autocast is on; its GEMM weights are kept in float32 with bfloat16
and float16 copies beside them, so neither autocast nor a compiled model casts weights
on every call.

Eager on CUDA the forward runs at the pace its host issues kernels, so an identity block
(``FusedBlock.replays_forward``) keeps, per input signature, its two ops' bound launches
(:func:`rubiks_shift.call_and_bind`) and its matrices' views, and replays them on the
signature's next call: the same launches, without the ops' checks and lookups. A
replaced buffer, ``.to()``, a new tuning, a tensor needing gradients or a transform
sends the block back to its checked calls. Above the blocks, the whole eager CUDA
forward is captured as one CUDA graph on a signature's second consecutive call and
replayed from then on (:mod:`.inference_graphs`; ``set_eager_graphs(False)`` turns it
off), so that only the first calls of a signature run at the host's pace.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rubiks_shift import (
    affine_relu,
    affine_relu_shift3d,
    call_and_bind,
    is_channel_major,
    kernels,
    rubiks_shift3d,
    stem_conv,
)

from .channel_major_block import clip_points, points_clip, to_channel_major
from .fused_op import fused_forward, register
from .inference_graphs import ForwardGraphs
from .pointwise import conv1x1
from .rubiksnet import CHANNEL_MAJOR_PLANE, RubiksBlock, RubiksNet, as_clip
from .shift_layers import Shift3d, TemporalAttentionShift
from .tracing import exporting

__all__ = ["FusedRubiksNet", "fuse_model"]


def _fold_bn(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias) with bn(x) = x * scale + bias in eval mode (running statistics)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fuse_model needs batch norms with running statistics")
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = -bn.running_mean.double() * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    return scale.float(), bias.float()


GEMMS = ("auto", "conv", "bmm")
COMPILE_FORMS = ("auto", "one_op", "traced")
CONV1_EPILOGUES = ("auto", "on", "off")

# Rows a trunk carries below its channels where conv1 takes bn2's bias and ReLU in its
# epilogue: the bn1 pass maps them to two rows of ones (bn2's bias, split into a 16-bit
# value and its remainder, enters conv1's weights as two columns that multiply them) and
# six of zeros (one is the zero bias vector cuBLASLt's epilogue adds per point); eight
# keeps the product's inner dimension a multiple of 8.
BIAS_ROWS = 8

# conv1_epilogue="auto": channel-major bfloat16 blocks on CUDA whose planes have this many
# pixels, while a CUDA graph is being captured. NVIDIA H200, 2026-12-06, bfloat16, 8 clips
# x 8 frames, graph replay, µs of conv1 + the shift per block, with the shift's prologue /
# with conv1's epilogue: 34.4 / 32.6 at 28² (144 channels), 22.4 / 20.0 at 14² (288),
# 17.3 / 18.1 at 7² (576); the fused Large graphed 3.24 / 3.13 ms, but eager 4.78 / 5.58
# (BENCHMARKS.md, *Where the time goes*).
EPILOGUE_PLANES = (14 * 14, 28 * 28)

# An interpolated 2-D (spatial) shift whose input planes have at most this many pixels
# runs over one-frame clips (the clip's frames as samples), where the shift op takes its
# row walk: no frame is read twice, so walking frames gains nothing. Larger planes run
# over whole clips with a zero temporal component (the frame walk); quantized shifts over
# whole clips (the op's elementwise pass, one read per value). H200, 2026-12-04, graph replay,
# the shift with its prologue on channel-major clips, µs per call, whole clips / one-frame
# clips: bfloat16 18.8 / 16.5 at 14², 288 channels, 31.1 / 22.4 at 28², 51.8 / 51.4 at
# 56²; float32 19.6 / 16.2, 47.4 / 30.2, 63.3 / 52.1; at 112², 72 channels, 135.3 / 147.8
# and 171.5 / 183.9 (packages/rubiks-shift/BENCHMARKS.md, *Affine gathers*).
ONE_FRAME_SHIFT_PLANE = 56 * 56


def _use_conv(gemm: str, x: torch.Tensor) -> bool:
    """Whether the 1x1 convolutions on ``x`` run as convolutions or as matrix products
    with the residual sum fused in. By default: convolutions for float32 on CUDA while
    float32 matrix products may not use TF32 (cuDNN's convolutions may, as the unfused
    model's do, and full-precision products take several times as long); products
    otherwise: narrower dtypes, float32 once ``torch.set_float32_matmul_precision("high")``
    allows TF32 (fewer launches and less host time per block), and the CPU, where they
    were 1.2-1.4x faster than oneDNN's convolutions (``BENCHMARKS.md``, *CPU*)."""
    if gemm == "auto":
        if x.dtype != torch.float32 or x.device.type != "cuda":
            return False
        return not torch.backends.cuda.matmul.allow_tf32  # read in compiled code: guarded
    return gemm == "conv"


def _kernel(matrix: torch.Tensor) -> torch.Tensor:
    """An (out, in) matrix as the (out, in, 1, 1) weight of a 1x1 convolution (a view:
    cheaper for the host than indexing with None)."""
    return matrix.view(matrix.shape[0], matrix.shape[1], 1, 1)


def _matrix(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().float().flatten(1)  # (out, in) of a 1x1 convolution


_HALF = {torch.bfloat16: "bf16", torch.float16: "f16"}

# The fused forward reads its buffers from ``module._buffers``, not as attributes: a
# buffer attribute is found by ``nn.Module.__getattr__`` after the ordinary lookup fails,
# 0.64 µs a read against 0.04 (timeit, CPU), and a block reads five to eight per call on
# the host path that bounds eager inference. torch.compile traces both forms alike.


class _GemmWeights(nn.Module):
    """A module whose GEMM weights are float32 masters (buffers, in the state dict) with
    bfloat16 and float16 copies beside them (non-persistent buffers, refreshed when a state
    dict is loaded). The copies follow the module's device, and a compiled model reads
    them as inputs instead of casting every weight on every call."""

    def add_weight(self, name: str, master: torch.Tensor) -> None:
        self.register_buffer(name, master)
        if not hasattr(self, "_copy_names"):
            # (master's name, dtype) -> its copy's name, for every weight
            self._copy_names: dict[tuple[str, torch.dtype], str] = {}
            self.register_load_state_dict_post_hook(_refresh_copies)
        for dtype, tag in _HALF.items():
            self.register_buffer(f"{name}_{tag}", master.to(dtype), persistent=False)
            self._copy_names[name, dtype] = f"{name}_{tag}"

    def gemm_weight(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The weight ``name`` in ``dtype``: the master, its stored copy, or a cast."""
        buffers = self._buffers  # direct reads: see the note above _GemmWeights
        master = buffers[name]
        if master.dtype == dtype:
            return master
        copy_name = self._copy_names.get((name, dtype))
        if copy_name is not None:
            copy = buffers[copy_name]
            if copy.dtype == dtype:  # a module cast as a whole (.half()) casts copies too
                return copy
        return master.to(dtype)


@torch.no_grad()
def _refresh_copies(module: nn.Module, incompatible_keys: object = None) -> None:
    for (name, dtype), copy_name in module._copy_names.items():
        setattr(module, copy_name, getattr(module, name).to(dtype))


# The buffers an identity block's replay reads, in the order it passes them
_REPLAY_BUFFERS = ("s1", "b1", "tframes", "ones2", "b2", "shift")
# Where the ops have bound calls to replay (``rubiks_shift.call_and_bind``)
_REPLAY_DEVICES = ("cuda",)


class _Replay(NamedTuple):
    """An identity channel-major block's eager CUDA forward made ready for one input
    signature (``FusedBlock._replayed``): its two ops bound (``rubiks_shift.call_and_bind``)
    and its matrices' views precomputed, so a call issues the launches and products with
    no checks, signature lookups or layout reasoning in between."""

    buffers: tuple  # the buffers the ops were bound with (_REPLAY_BUFFERS; None if absent)
    first: Callable  # the bn1 pass (with a hardened AQ block's frame shift)
    shift: Callable  # the shift with relu(. + b2) as its prologue
    points: tuple  # (size, stride) of the block's input, and of its shift's output, as (C, points)
    clip: tuple  # (size, stride) of conv1's (C, points) product as a channel-major clip


def _replay_key(x: torch.Tensor) -> tuple:
    """What a replay is bound to: x's metadata (its address on a 4-byte boundary or not:
    bfloat16 moves as pairs where it is) and the host thread."""
    return (
        x.shape, x.stride(), x.dtype, x.get_device(), x.data_ptr() % 4 == 0,
        threading.get_ident(),
    )  # fmt: skip


# conv1's weights with bn2's bias columns (BIAS_ROWS), per dtype the product runs in
_BIAS_WEIGHTS = {
    torch.float32: "w1_bias",
    torch.bfloat16: "w1_bias_bf16",
    torch.float16: "w1_bias_f16",
}


def _bias_columns(w1: torch.Tensor, b2: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """conv1's float32 (out, in) weights in ``dtype`` with BIAS_ROWS more columns: b2 in
    ``dtype``, then what that rounding left (the product adds both in its float32
    accumulation), then zeros."""
    head = b2.to(dtype).float()
    columns = w1.new_zeros(w1.shape[0], BIAS_ROWS)
    columns[:, 0] = head
    columns[:, 1] = b2 - head
    return torch.cat([w1, columns], 1).to(dtype)


@torch.no_grad()
def _refresh_epilogue(module: nn.Module, incompatible_keys: object = None) -> None:
    module.set_epilogue_buffers()


def _with_bias_rows(x: torch.Tensor) -> torch.Tensor:
    """Clip x stored channel-major with BIAS_ROWS channels of zeros after its own."""
    n, t, c, height, width = x.shape
    out = x.new_empty((c + BIAS_ROWS, n, t, height, width))
    out[:c].copy_(x.permute(2, 0, 1, 3, 4))
    out[c:].zero_()
    return out.permute(1, 2, 0, 3, 4)


@torch.no_grad()
def _whole_frames(shift: torch.Tensor, quantize: bool) -> torch.Tensor | None:
    """A (3, C) shift as whole frames per channel, int32 (C,), where it moves whole
    frames only (zero spatial rows; a temporal row of integers or rounded by
    ``quantize`` as the op rounds, floor(s + 0.5)); else None (the gather does it)."""
    if bool(shift[1:].any()) or not bool(shift[0].isfinite().all()):
        return None
    t = shift[0].clamp(-(2**24), 2**24)
    frames = torch.floor(t + 0.5) if quantize else t
    if not torch.equal(frames, t) and not quantize:
        return None
    return frames.to(torch.int32)


@torch.no_grad()
def _refresh_frames(module: nn.Module, incompatible_keys: object = None) -> None:
    module.tframes = _whole_frames(module.tshift, module.tshift_quantize)


class FusedBlock(_GemmWeights):
    """One :class:`RubiksBlock` in fused inference form (see the module docstring)."""

    def __init__(self, block: RubiksBlock) -> None:
        super().__init__()
        conv1 = block.conv1
        cin, cout = conv1.in_channels, conv1.out_channels
        self.has_proj = block.has_proj
        self.stride = block.shortcut.stride[0] if block.has_proj else 1
        s1, b1 = _fold_bn(block.norm1)
        s2, b2 = _fold_bn(block.norm2)
        self.register_buffer("s1", s1)
        self.register_buffer("b1", b1)
        self.add_weight("w1", _matrix(conv1) * s2[:, None])
        self.register_buffer("ones2", torch.ones_like(b2))
        self.register_buffer("b2", b2)
        self.add_weight("w2", _matrix(block.conv2))
        if self.has_proj:
            self.add_weight("w_proj", _matrix(block.shortcut))
        # the block's shift as a 3-D op: a 2-D shift gets a zero temporal component,
        # which reads each frame alone (temporal weights 1 and 0, the second frame never
        # read); it runs over one-frame clips on planes up to ONE_FRAME_SHIFT_PLANE
        layer = block.rubiks
        shift = layer.shift.detach().float()
        shift_2d = shift.shape[0] == 2
        self.shift_2d = shift_2d
        if shift_2d:
            shift = torch.cat([torch.zeros_like(shift[:1]), shift], 0)
        self.register_buffer("shift", shift)
        self.quantize = bool(layer.quantize)
        stride, padding = tuple(layer.stride), tuple(layer.padding)
        self.shift_stride = (1, *stride) if shift_2d else stride
        self.shift_padding = (0, *padding) if shift_2d else padding
        # AQ: a hard integer temporal shift (deploy form) or the soft 3-tap attention
        self.tshift_kind = "none"
        if isinstance(block.tshift, Shift3d):
            self.tshift_kind = "hard"
            self.register_buffer("tshift", block.tshift.shift.detach().float())
            self.tshift_quantize = bool(block.tshift.quantize)
            # whole frames, no spatial part (a hardened AQ layer): read by the bn1 pass
            self.register_buffer("tframes", _whole_frames(self.tshift, self.tshift_quantize), False)
            self.register_load_state_dict_post_hook(_refresh_frames)
        elif isinstance(block.tshift, TemporalAttentionShift):
            self.tshift_kind = "soft"
            self.register_buffer("taps", block.tshift.attention().detach().float())
        self.has_se = not isinstance(block.se, nn.Identity)
        if self.has_se:
            self.add_weight("se_fc1", block.se.fc1.weight.detach().float())
            self.add_weight("se_fc2", block.se.fc2.weight.detach().float())
        self.cin, self.cout = cin, cout
        self.gemm = "auto"
        self.channel_major_plane = CHANNEL_MAJOR_PLANE
        # conv1 can take bn2's bias and ReLU where the shift is an interpolated 3-D one
        # read straight after them (no temporal mixing or gate between)
        self.takes_epilogue = (
            self.tshift_kind == "none" and not self.has_se and not shift_2d and not self.quantize
        )
        self.conv1_epilogue = "auto"
        if self.takes_epilogue:
            self.set_epilogue_buffers()
            self.register_load_state_dict_post_hook(_refresh_epilogue)
        # an identity block without a gate or soft temporal mixing replays its eager CUDA
        # forward per input signature (_replayed), where its shift runs over whole clips
        self.replays_forward = (
            not self.has_proj and not self.has_se and self.tshift_kind in ("none", "hard")
            and (not shift_2d or self.quantize)
        )  # fmt: skip
        self._replays: dict[tuple, _Replay] = {}

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        return {**state, "_replays": {}}  # bound launches are this process's

    def _apply(self, fn, recurse: bool = True):
        self._replays.clear()  # new buffers (another device or dtype): bind again
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def set_epilogue_buffers(self) -> None:
        """(Re)compute what conv1's epilogue reads from the block's folded weights: bn1's
        map over the bias rows (scale 0; bias 1 on the first two, 0 on the rest) and
        conv1's weights with bn2's bias columns in each dtype (non-persistent buffers)."""
        buffers = self._buffers
        s1, b1, w1, b2 = buffers["s1"], buffers["b1"], buffers["w1"], buffers["b2"]
        row_values = s1.new_zeros(BIAS_ROWS)  # relu(0 * x + b) of each bias row
        row_values[:2] = 1
        self.register_buffer("s1_rows", torch.cat([s1, torch.zeros_like(row_values)]), False)
        self.register_buffer("b1_rows", torch.cat([b1, row_values]), False)
        for dtype, name in _BIAS_WEIGHTS.items():
            self.register_buffer(name, _bias_columns(w1.float(), b2.float(), dtype), False)

    def carries_bias_rows(self, x: torch.Tensor, plane: int) -> bool:
        """Whether this block gives a channel-major trunk like x with ``plane`` pixels
        per frame BIAS_ROWS, where it makes one (a block of its kind takes the epilogue;
        ``conv1_epilogue``: "on" wherever the products are matrix products, "auto" in
        bfloat16 on CUDA on the planes of EPILOGUE_PLANES while eager code is being
        captured into a CUDA graph, never in code traced for torch.compile; "off"
        nowhere)."""
        mode = self.conv1_epilogue
        if mode == "off" or not self.takes_epilogue or _use_conv(self.gemm, x):
            return False
        if mode == "on":
            return True
        low, high = EPILOGUE_PLANES
        return (
            x.is_cuda
            and x.dtype == torch.bfloat16
            and low <= plane <= high
            # traced code has no capture to ask about (Dynamo cannot trace the query);
            # the one-op compiled form asks it when its eager forward runs
            and not torch.compiler.is_compiling()
            and torch.cuda.is_current_stream_capturing()
        )

    def _bias_weight(self, dtype: torch.dtype) -> torch.Tensor:
        buffers = self._buffers
        weight = buffers[_BIAS_WEIGHTS.get(dtype, "w1_bias")]
        return weight if weight.dtype == dtype else buffers["w1_bias"].to(dtype)

    def _soft_tshift(self, a: torch.Tensor) -> torch.Tensor:
        t = a.shape[1]
        taps = self._buffers["taps"].to(a.dtype)
        view = (1, 1, -1, 1, 1)
        out = a * taps[:, 1].view(view)
        out[:, 1:] += a[:, :-1] * taps[:, 0].view(view)
        out[:, : t - 1] += a[:, 1:] * taps[:, 2].view(view)
        return out

    def _se_gate(self, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(b * t, C) squeeze-excitation gate of the shift output h (b * t, C, H * W)."""
        pooled = h.flatten(2).mean(2)
        fc1 = self.gemm_weight("se_fc1", dtype)
        fc2 = self.gemm_weight("se_fc2", dtype)
        return torch.sigmoid(F.linear(torch.relu(F.linear(pooled, fc1)), fc2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (is_compiling first: compiled code never reads the replays)
        if not torch.compiler.is_compiling() and self._replays:
            y = self._replayed(x)
            if y is not None:
                return y
        if is_channel_major(x):
            if self._may_replay(x):
                return self._bind_replay(x)
            return self._forward_channel_major(x)
        plane = x.shape[-2] * x.shape[-1]
        if plane <= self.channel_major_plane:
            if self.carries_bias_rows(x, plane):
                return self._forward_channel_major(_with_bias_rows(x))
            return self._forward_channel_major(to_channel_major(x))
        return self._forward_frames(x.contiguous())

    def _may_replay(self, x: torch.Tensor) -> bool:
        """Whether this call on a channel-major x may bind a replay: an eager CUDA call
        with nothing to record on an identity block's own channels, its products matrix
        products, its buffers those a replay reads."""
        return (
            self.replays_forward
            and not torch.compiler.is_compiling()
            and x.device.type in _REPLAY_DEVICES
            and x.shape[2] == self.cin
            and not (x.requires_grad and torch.is_grad_enabled())
            and not _use_conv(self.gemm, x)
            and kernels.plain_eager()
            and (self.tshift_kind == "none" or self._buffers["tframes"] is not None)
        )

    def _bind_replay(self, x: torch.Tensor) -> torch.Tensor:
        """The identity block's channel-major forward (``_forward_channel_major``'s), its two
        ops called through ``call_and_bind``: where both have bound forms, the call is kept
        as x's signature's replay."""
        buffers = self._buffers
        s1, b1, frames, ones2, b2, shift = (buffers.get(n) for n in _REPLAY_BUFFERS)
        b, t, c, height, width = x.shape
        a, first = call_and_bind(affine_relu, x, s1, b1, frames)
        h = torch.mm(self.gemm_weight("w1", x.dtype), clip_points(a))
        h = points_clip(h, b, t, height, width)
        out, again = call_and_bind(
            affine_relu_shift3d, h, ones2, b2, shift, self.shift_stride, self.shift_padding,
            quantize=self.quantize,
        )  # fmt: skip
        hm = clip_points(out)
        clip_points(x).addmm_(self.gemm_weight("w2", x.dtype), hm)
        if first is not None and again is not None and out.shape == x.shape:
            points = (c, b * t * height * width)
            if len(self._replays) >= 16:  # signatures come and go: keep the recent ones
                self._replays.clear()
            self._replays[_replay_key(x)] = _Replay(
                (s1, b1, frames, ones2, b2, shift), first, again, (points, (points[1], 1)),
                (h.shape, h.stride()),
            )  # fmt: skip
        return x

    def _replayed(self, x: torch.Tensor) -> torch.Tensor | None:
        """The block's forward through x's signature's replay (``_bind_replay``; the same
        launches and products), or None where it has none or may not take it now."""
        replay = self._replays.get(_replay_key(x))
        if replay is None or (x.requires_grad and torch.is_grad_enabled()):
            return None
        buffers = self._buffers
        for name, bound in zip(_REPLAY_BUFFERS, replay.buffers, strict=True):
            if buffers.get(name) is not bound:  # a buffer replaced since
                return None
        if not kernels.plain_eager() or _use_conv(self.gemm, x):
            return None
        s1, b1, frames, ones2, b2, shift = replay.buffers
        dtype = x.dtype
        a = replay.first(x, s1, b1, frames)
        h = torch.mm(self.gemm_weight("w1", dtype), a.as_strided(*replay.points))
        out = replay.shift(h.as_strided(*replay.clip), ones2, b2, shift)
        x.as_strided(*replay.points).addmm_(
            self.gemm_weight("w2", dtype), out.as_strided(*replay.points)
        )
        return x

    def _first_pass(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(a, mixed): a = relu(bn1(x)) where the shortcut needs it, mixed what conv1
        reads (a, or a after the AQ temporal shift), both in x's layout. A hard temporal
        shift takes bn1 as its prologue, reading x (again, where a is needed too)."""
        buffers = self._buffers  # direct reads: see the note above _GemmWeights
        s1, b1 = buffers["s1"], buffers["b1"]
        mixed = None
        if self.tshift_kind == "hard":
            frames = buffers["tframes"]
            if frames is not None:
                mixed = affine_relu(x, s1, b1, frames)
            else:
                tq = self.tshift_quantize
                mixed = affine_relu_shift3d(x, s1, b1, buffers["tshift"], quantize=tq)
            if not self.has_proj:
                return None, mixed
        a = affine_relu(x, s1, b1)
        if self.tshift_kind == "soft":
            mixed = self._soft_tshift(a)
        return a, a if mixed is None else mixed

    def _shift_pass(self, h: torch.Tensor) -> torch.Tensor:
        """The block's shift of conv1's output h, with relu(. + b2) as its prologue (a 2-D
        shift on small planes over one-frame clips: views of h and of the result)."""
        b, t, c, height, width = h.shape
        one_frame = (
            self.shift_2d and t > 1 and not self.quantize
            and height * width <= ONE_FRAME_SHIFT_PLANE
        )  # fmt: skip
        clips = h.view(b * t, 1, c, height, width) if one_frame else h
        buffers = self._buffers  # direct reads: see the note above _GemmWeights
        out = affine_relu_shift3d(
            clips,
            buffers["ones2"],
            buffers["b2"],
            buffers["shift"],
            self.shift_stride,
            self.shift_padding,
            quantize=self.quantize,
        )
        return out.view(b, t, *out.shape[2:]) if one_frame else out

    def _product(self, name: str, m: torch.Tensor, conv: bool) -> torch.Tensor:
        """weight ``name`` (out, in) times the (in, points) matrix ``m``: cuDNN's 1x1
        convolution over a (1, in, points, 1) image where ``conv``, else one GEMM."""
        weight = self.gemm_weight(name, m.dtype)
        if conv:
            out = conv1x1(m.reshape(1, m.shape[0], -1, 1), _kernel(weight))
            return out.view(weight.shape[0], -1)
        return torch.mm(weight, m)

    def _forward_channel_major(self, x: torch.Tensor) -> torch.Tensor:
        """The block on a channel-major clip (``to_channel_major``), returned channel-major:
        every 1x1 convolution is one product over all the clip's points, whatever H * W
        (batched per-frame products are slow where it is not a multiple of 8)."""
        b, t, channels, height, width = x.shape
        conv = _use_conv(self.gemm, x)
        carried = channels == self.cin + BIAS_ROWS  # x carries the bias rows
        epilogue = carried and self.takes_epilogue and not conv
        if carried and not epilogue:
            x = x[:, :, : self.cin]
        buffers = self._buffers  # direct reads: see the note above _GemmWeights
        if epilogue:
            # 1. relu(bn1(x)), the bias rows mapped to ones and zeros
            a = affine_relu(x, buffers["s1_rows"], buffers["b1_rows"])
            # 2-3. relu(conv1 + b2) in one product (the bias from the rows of ones; the
            # epilogue's own bias, per point, a row of zeros), then the plain shift
            m = clip_points(a)
            h = torch._addmm_activation(m[self.cin + 2], self._bias_weight(x.dtype), m)
            h = points_clip(h, b, t, height, width)
            h = rubiks_shift3d(h, buffers["shift"], self.shift_stride, self.shift_padding)
        else:
            # 1. relu(bn1(x)) (and the AQ temporal shift)
            a, mixed = self._first_pass(x)
            # 2. conv1 (bn2's scale folded in)
            h = self._product("w1", clip_points(mixed), conv)
            # 3. relu(. + b2) inside the shift
            h = points_clip(h, b, t, height, width)
            h = self._shift_pass(h)
        ho, wo = h.shape[-2:]
        hm = clip_points(h)
        if self.has_se:  # conv2(h * gate): the gate per frame and channel
            gate = self._se_gate(hm.view(self.cout, b * t, ho * wo).transpose(0, 1), x.dtype)
            hm = (hm.view(self.cout, b * t, ho * wo) * gate.t()[:, :, None]).view(self.cout, -1)
        # 4. conv2 and the residual sum, into the shortcut (x itself where it is the
        # identity: the result is then x, updated in place)
        out = None  # a projection's result, the bias rows below its channels where carried
        if self.has_proj:
            if self.stride != 1:
                a = a[..., :: self.stride, :: self.stride]
            if epilogue:
                a = a[:, :, : self.cin]
            m = clip_points(a)
            if self.carries_bias_rows(x, ho * wo):
                out = m.new_empty((self.cout + BIAS_ROWS, m.shape[1]))
                out[self.cout :].zero_()
                skip = torch.mm(self.gemm_weight("w_proj", m.dtype), m, out=out[: self.cout])
            else:
                skip = self._product("w_proj", m, conv)
        else:
            skip = clip_points(x)[: self.cout]
        if conv:
            skip += self._product("w2", hm, conv)
        else:
            skip.addmm_(self.gemm_weight("w2", x.dtype), hm)
        if not self.has_proj:
            return x
        return points_clip(skip if out is None else out, b, t, ho, wo)

    def _forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """The block on a contiguous (N, T, C, H, W) clip, products batched per frame."""
        dtype = x.dtype
        b, t, _, height, width = x.shape
        # 1. relu(bn1(x)) (and the AQ temporal shift)
        a, mixed = self._first_pass(x)
        # 2. conv1 (bn2's scale folded in)
        w1 = self.gemm_weight("w1", dtype)
        conv = _use_conv(self.gemm, x)
        if conv:
            frames = mixed.reshape(b * t, self.cin, height, width)
            h = conv1x1(frames, _kernel(w1))
        else:
            h = torch.matmul(w1, mixed.reshape(b * t, self.cin, height * width))
        # 3. relu(. + b2) inside the shift
        h = h.view(b, t, self.cout, height, width)
        h = self._shift_pass(h)
        ho, wo = h.shape[-2:]
        h = h.reshape(b * t, self.cout, ho * wo)
        # 4. conv2 (+ squeeze-excitation scale) and the residual sum
        w2 = self.gemm_weight("w2", dtype)
        if conv:  # cuDNN's convolutions, then the residual sum
            frames = h.view(b * t, self.cout, ho, wo)
            if self.has_se:
                frames = frames * self._se_gate(h, dtype)[:, :, None, None]
            out = conv1x1(frames, _kernel(w2))
            if self.has_proj:
                a4 = a.reshape(b * t, self.cin, height, width)
                w_proj = self.gemm_weight("w_proj", dtype)
                out += conv1x1(a4, _kernel(w_proj), stride=self.stride)
            else:
                out += x.view(b * t, self.cout, ho, wo)
            return out.view(b, t, self.cout, ho, wo)
        # per sample (b * t, out, in): conv2(h * gate) with the gate folded into the weights
        gate = self._se_gate(h, dtype) if self.has_se else None
        w2 = w2 * gate[:, None, :] if gate is not None else w2.expand(b * t, -1, -1)
        if self.has_proj:
            frames = a.reshape(b * t, self.cin, height, width)
            if self.stride != 1:
                frames = frames[:, :, :: self.stride, :: self.stride]
            w_proj = self.gemm_weight("w_proj", dtype)
            skip = torch.matmul(w_proj, frames.reshape(b * t, self.cin, ho * wo))
        else:
            skip = x.view(b * t, self.cin, height * width)
        return skip.baddbmm_(w2, h).view(b, t, self.cout, ho, wo)


class FusedRubiksNet(_GemmWeights):
    """A RubiksNet in fused inference form; built by :func:`fuse_model`.

    Takes what the model takes ((B, T, C, H, W) clips, images, TSN-stacked frames) and
    returns the same logits (or pooled features for ``num_classes=0``).
    """

    def __init__(
        self,
        model: RubiksNet,
        gemm: str = "auto",
        channel_major_plane: int = CHANNEL_MAJOR_PLANE,
        compile_as: str = "auto",
        conv1_epilogue: str = "auto",
    ) -> None:
        super().__init__()
        if gemm not in GEMMS:
            raise ValueError(f"gemm must be one of {GEMMS}, got {gemm!r}")
        if compile_as not in COMPILE_FORMS:
            raise ValueError(f"compile_as must be one of {COMPILE_FORMS}, got {compile_as!r}")
        if conv1_epilogue not in CONV1_EPILOGUES:
            raise ValueError(
                f"conv1_epilogue must be one of {CONV1_EPILOGUES}, got {conv1_epilogue!r}"
            )
        if isinstance(channel_major_plane, bool) or not isinstance(channel_major_plane, int):
            raise TypeError(f"channel_major_plane must be an int, got {channel_major_plane!r}")
        if channel_major_plane < 0:
            raise ValueError(f"channel_major_plane must be >= 0, got {channel_major_plane}")
        if not model.global_pool:
            raise ValueError("fuse_model needs a pooled model (global_pool='avg')")
        self.in_chans = model.in_chans
        self.num_classes = model.num_classes
        self.tier, self.variant = model.tier, model.variant
        self.add_weight("stem_weight", model.stem.weight.detach().float().clone())
        self.blocks = nn.ModuleList(
            FusedBlock(block) for stage in model.stages for block in stage.blocks
        )
        s, b = _fold_bn(model.norm)
        self.register_buffer("s_last", s)
        self.register_buffer("b_last", b)
        self.has_head = isinstance(model.fc, nn.Linear)
        if self.has_head:
            self.add_weight("fc_weight", model.fc.weight.detach().float().clone())
            self.add_weight("fc_bias", model.fc.bias.detach().float().clone())
        for block in self.blocks:
            block.gemm = gemm
            block.channel_major_plane = channel_major_plane
            block.conv1_epilogue = conv1_epilogue
        self.compile_as = compile_as
        # the width of the result: logits, or the pooled features of a headless model
        self.out_width = self.num_classes if self.has_head else s.numel()
        self._op_handle = register(self)
        self._start_graphs()
        self.eval()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._op_handle = register(self)  # a copy: its own handle, not the original's
        if "_graphs" not in self.__dict__:  # a pickle that holds no graph state
            self._start_graphs()

    def _start_graphs(self) -> None:
        """The eager forward's graph replays on, none captured yet (inference_graphs)."""
        self.eager_graphs = True
        self._graphs = ForwardGraphs(frozenset({FusedRubiksNet, FusedBlock, nn.ModuleList}))

    def _apply(self, fn, recurse: bool = True):
        self._graphs.reset()  # new buffers (another device or dtype): the graph's memory goes
        return super()._apply(fn, recurse)

    def set_eager_graphs(self, enable: bool = True) -> None:
        """Whether the eager CUDA forward replays a CUDA graph of itself from a signature's
        second call (default on; :mod:`rubiks_models.inference_graphs`). Either way the
        graph captured so far is dropped: call it after changing a setting the blocks read
        when called (``gemm``, ``conv1_epilogue``, the kernels' tuning) in place."""
        if not isinstance(enable, bool):
            raise TypeError(f"enable must be a bool, got {type(enable).__name__}")
        self.eager_graphs = enable
        self._graphs.reset()

    def _compiles_as_one_op(self, device_type: str) -> bool:
        """Whether compiled code calls the whole forward as one op (``compile_as``;
        "auto": on CUDA, where traced code issues the same kernels at more host time).
        torch.export traces the blocks whatever this says: the op finds its model through
        a handle of this process."""
        if self.compile_as == "auto":
            return device_type == "cuda"
        return self.compile_as == "one_op"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("a fused RubiksNet is for inference only; keep it in eval mode")
        device_type = x.device.type
        dtype = x.dtype
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type, enabled=False):
            if (
                torch.compiler.is_compiling()
                and not exporting()  # an exported program outlives this process
                and self._compiles_as_one_op(device_type)
            ):
                clip = as_clip(x.to(dtype), self.in_chans)
                return fused_forward(clip, self._op_handle, self.out_width)
            return self._forward(x, dtype)

    def _forward(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The eager forward on x cast to ``dtype`` (None: x's): a replay of its CUDA graph
        where :mod:`.inference_graphs` allows, else the blocks run one by one."""
        dtype = x.dtype if dtype is None else dtype
        if (
            not torch.compiler.is_compiling()
            and self.eager_graphs
            and not self.__dict__.get("_is_replica", False)  # DataParallel's threads share it
        ):
            y = self._graphs.run(self, self._compute, x, dtype)
            if y is not None:
                return y
        return self._compute(x, dtype)

    def _compute(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = x.to(dtype)
        clip = as_clip(x, self.in_chans)
        b, t = clip.shape[0], clip.shape[1]
        frames = clip.flatten(0, 1)
        if frames.is_cuda:  # rubiks_shift's kernel, over the float32 weights
            h = stem_conv(frames, self._buffers["stem_weight"])
        else:
            stem = self.gemm_weight("stem_weight", x.dtype)
            h = F.conv2d(frames, stem, stride=2, padding=1)
        h = h.unflatten(0, (b, t))
        for block in self.blocks:
            h = block(h)
        channels = self.s_last.shape[0]
        if h.shape[2] != channels:  # the trunk carried the bias rows to the end
            h = h[:, :, :channels]
        h = affine_relu(h, self.s_last, self.b_last)
        pooled = h.mean((1, 3, 4))  # space and time: the frame logits' mean (linear head)
        if not self.has_head:
            return pooled
        weight = self.gemm_weight("fc_weight", x.dtype)
        bias = self.gemm_weight("fc_bias", x.dtype)
        return F.linear(pooled, weight, bias)


@torch.no_grad()
def fuse_model(
    model: RubiksNet,
    gemm: str = "auto",
    channel_major_plane: int = CHANNEL_MAJOR_PLANE,
    compile_as: str = "auto",
    conv1_epilogue: str = "auto",
) -> FusedRubiksNet:
    """The fused inference form of ``model`` (a new module on the model's device;
    ``model`` is left as it is). Batch norms contribute their running statistics, as in
    ``model.eval()``. ``gemm``: how the 1x1 convolutions run: "conv" (cuDNN, then the
    residual sum), "bmm" (matrix products, residual sum fused) or "auto" (conv for
    float32 on CUDA unless float32 matrix products may use TF32, bmm otherwise; read at
    every call). ``channel_major_plane``: blocks whose input planes have at
    most this many pixels (and every block after them) run on channel-major clips, each
    1x1 convolution one product over all points; larger planes run frame by frame; 0:
    never channel-major. ``compile_as``: what torch.compile makes of the fused model:
    "one_op" calls its eager forward as one op (:mod:`rubiks_models.fused_op`),
    "traced" traces its blocks for Inductor, "auto" (the default) is "one_op" on CUDA,
    where the traced blocks run the same kernels at more host time, and "traced"
    elsewhere. ``conv1_epilogue``: where conv1 applies bn2's bias and ReLU as it writes
    its product, so that the shift runs without them (channel-major blocks of
    interpolated 3-D shifts with matrix products): "on" everywhere it can, "off"
    nowhere, "auto" (the default) in bfloat16 on CUDA on the planes of
    :data:`EPILOGUE_PLANES` while eager code is being captured into a CUDA graph
    (``GraphedInference``; the one-op compiled form with ``mode="reduce-overhead"``),
    where it was measured faster (eager calls were slower with it), and never in blocks
    traced for torch.compile; read at every call."""
    if not isinstance(model, RubiksNet):
        raise TypeError(f"fuse_model expects a RubiksNet, got {type(model).__name__}")
    fused = FusedRubiksNet(model, gemm, channel_major_plane, compile_as, conv1_epilogue)
    return fused.to(model.stem.weight.device)
