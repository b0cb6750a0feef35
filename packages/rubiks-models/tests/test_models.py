"""Architecture, input conventions and the timm API."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import rubiks_models
import rubiks_shift
from rubiks_models import RubiksNet, TemporalAttentionShift, inflate
from rubiks_models.optim import (
    aq_budget_penalty,
    aq_enforce_budget,
    aq_shifted_fraction,
    aq_temperature,
    param_groups,
    set_aq_temperature,
)

PARAMS_174 = {"tiny": 1_898_760, "small": 3_597_366, "medium": 6_185_622, "large": 8_538_294}
CLIP = (2, 2, 3, 32, 32)


@pytest.mark.parametrize("tier", list(PARAMS_174))
def test_parameter_counts(tier: str) -> None:
    model = timm.create_model(f"rubiksnet_{tier}")
    assert model.num_classes == 174
    assert sum(p.numel() for p in model.parameters()) == PARAMS_174[tier]
    facade = RubiksNet(tier, 174)
    assert sum(p.numel() for p in facade.parameters()) == PARAMS_174[tier]


def test_registered_names() -> None:
    names = set(timm.list_models("rubiksnet*"))
    for tier in PARAMS_174:
        assert {f"rubiksnet_{tier}", f"rubiksnet_{tier}_aq", f"rubiksnet2d_{tier}"} <= names
    tags = set(timm.list_models("rubiksnet*", include_tags=True))
    assert {"rubiksnet_large.ssv2", "rubiksnet_large_aq.ssv2_budget0125"} <= tags
    assert timm.models.get_pretrained_cfg("rubiksnet_tiny.kinetics").num_classes == 400
    cfg = timm.models.get_pretrained_cfg("rubiksnet_large.ssv2")
    assert (cfg.num_classes, cfg.license, cfg.crop_pct) == (174, "mit", 0.875)
    assert tuple(cfg.mean) == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("name", ["rubiksnet_tiny", "rubiksnet_small_aq", "rubiksnet2d_tiny"])
def test_input_layouts(name: str) -> None:
    model = timm.create_model(name, num_classes=7).eval()
    clip = torch.randn(*CLIP)
    with torch.no_grad():
        y = model(clip)
        assert y.shape == (2, 7)
        stacked = model(clip.flatten(1, 2))  # TSN-stacked (B, 3T, H, W)
        torch.testing.assert_close(stacked, y)
        image = model(clip[:, 0])  # one frame
        torch.testing.assert_close(image, model(clip[:, :1]))
        assert model(torch.randn(1, 1, 3, 48, 64)).shape == (1, 7)
        feats = model.forward_features(clip)
        assert feats.shape == (2, 2, model.num_features, 1, 1)
        assert model.forward_features(clip[:, 0]).shape == (2, model.num_features, 1, 1)
        torch.testing.assert_close(model.forward_head(feats), y)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    with pytest.raises(ValueError, match="3T"):
        model(torch.randn(1, 4, 32, 32))
    gray = timm.create_model("rubiksnet_tiny", num_classes=7, in_chans=1).eval()
    with pytest.raises(ValueError, match=r"must be \(B, 1, H, W\), got shape") as exc:
        gray(torch.randn(1, 3, 32, 32))  # stacking is for 3-channel frames only
    assert "TSN" not in str(exc.value)


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_model_quotes_the_input_error(dynamic: bool) -> None:
    """torch.compile reports a bad input with the model's own message, also where dynamic
    shapes make the sizes symbolic (the message is an f-string it can format)."""
    model = timm.create_model("rubiksnet_tiny", num_classes=7).eval()
    compiled = torch.compile(model, fullgraph=True, backend="eager", dynamic=dynamic)
    with torch.no_grad(), pytest.raises(Exception, match=r"\(B, T, C, H, W\) with C = ") as exc:
        compiled(torch.randn(1, 2, 4, 32, 32))
    # Dynamo's error quotes the message; torch 2.11's quotes it in pieces where the sizes
    # are symbolic, the pinned release (2.14) whole
    if not dynamic or torch.__version__ >= (2, 14):
        assert "with C = 3, got shape [" in str(exc.value)


def test_consensus_is_mean_of_frame_logits() -> None:
    model = RubiksNet("tiny", 5, variant="rubiks2d").eval()  # frames independent
    clip = torch.randn(*CLIP)
    with torch.no_grad():
        per_frame = torch.stack([model(clip[:, t]) for t in range(2)], 1)
        torch.testing.assert_close(model(clip), per_frame.mean(1))


def test_classifier_api() -> None:
    model = timm.create_model("rubiksnet_tiny", num_classes=3, drop_rate=0.5)
    assert model.get_classifier().out_features == 3
    model.reset_classifier(0)
    assert model.eval()(torch.randn(*CLIP)).shape == (2, model.num_features)
    model.reset_classifier(0, "")
    assert model(torch.randn(*CLIP)).shape == (2, 2, model.num_features, 1, 1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features, 1, 1)
    assert model.pretrained_cfg["classifier"] == "fc" and model.default_cfg["first_conv"] == "stem"
    nwd = model.no_weight_decay()
    assert nwd and all(n.endswith("rubiks.shift") for n in nwd)
    assert "stem" in model.group_matcher()


def test_refused_classifier_settings_change_nothing() -> None:
    model = timm.create_model("rubiksnet_tiny", num_classes=10)
    for num_classes, pool in ((7, ""), (-1, None), (2.5, None), (True, None), (3, "max")):
        with pytest.raises(ValueError, match=r"num_classes must be|global_pool"):
            model.reset_classifier(num_classes, pool)
        assert (model.num_classes, model.global_pool, model.fc.out_features) == (10, "avg", 10)
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
            timm.create_model("rubiksnet_tiny", num_classes=bad)


def test_features_and_intermediates() -> None:
    feat = timm.create_model("rubiksnet_tiny", features_only=True).eval()
    outs = feat(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == feat.feature_info.channels() == [54, 54, 108, 216, 432]
    assert [64 // o.shape[-1] for o in outs] == feat.feature_info.reduction()
    model = timm.create_model("rubiksnet_tiny_aq").eval()
    clip = torch.randn(*CLIP)
    with torch.no_grad():
        final, inter = model.forward_intermediates(clip, indices=[1, 4])
        assert [t.shape for t in inter] == [(2, 2, 54, 8, 8), (2, 2, 432, 1, 1)]
        torch.testing.assert_close(final, model.forward_features(clip))


def test_grad_checkpointing_matches() -> None:
    model = timm.create_model("rubiksnet_tiny", num_classes=4).train()
    clip = torch.randn(*CLIP)
    y = model(clip)
    y.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    y2 = model(clip)
    y2.sum().backward()
    torch.testing.assert_close(y2, y)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)


def test_aq_layer_is_spec_formula() -> None:
    layer = TemporalAttentionShift(5)
    x = torch.randn(2, 4, 5, 3, 3)
    w = layer.weight
    alpha = torch.softmax(w / (w.std(dim=1, keepdim=True) + 1e-6) / 2.0, dim=1)
    # y[t] = a0 x[t-1] + a1 x[t] + a2 x[t+1], as a depthwise conv1d over time
    seq = x.permute(0, 2, 3, 4, 1).reshape(1, -1, 4)
    kernel = alpha[None, :, None, None, :].expand(2, 5, 3, 3, 3).reshape(-1, 1, 3)
    ref = F.conv1d(seq, kernel, padding=1, groups=seq.shape[1]).reshape(2, 5, 3, 3, 4)
    torch.testing.assert_close(layer(x), ref.permute(0, 4, 1, 2, 3))
    model = RubiksNet("tiny", 4, variant="rubiks3d-aq")
    assert "stages.1.blocks.0.tshift.tau" in model.state_dict()
    assert not any(n.endswith("tau") for n, _ in model.named_parameters())


def test_aq_training_helpers() -> None:
    model = RubiksNet("tiny", 4, variant="rubiks3d-aq")
    assert aq_temperature(0, 100) == 2.0 and abs(aq_temperature(100, 100) - 0.01) < 1e-9
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="end must be a finite number > 0"):
            aq_temperature(5, 10, end=bad)
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            set_aq_temperature(model, bad)
    set_aq_temperature(model, 0.05)
    frac = aq_shifted_fraction(model)
    assert 0 < float(frac.detach()) < 1
    penalty = aq_budget_penalty(model, budget=0.0)
    penalty.backward()
    assert model.stages[0].blocks[0].tshift.weight.grad is not None
    with pytest.raises(ValueError, match="AQ"):
        aq_shifted_fraction(RubiksNet("tiny", 4))


def test_aq_enforce_budget_keeps_the_most_confident_shifted_channels() -> None:
    model = RubiksNet("tiny", 4, variant="rubiks3d-aq")
    layers = [m for m in model.modules() if isinstance(m, TemporalAttentionShift)]
    total = sum(m.channels for m in layers)
    z = torch.cat([m.weight / (m.weight.std(dim=1, keepdim=True) + 1e-6) for m in layers])
    before = z.argmax(1) != 1
    margin = torch.maximum(z[:, 0], z[:, 2]) - z[:, 1]
    assert int(before.sum()) > total // 8  # random init: about 2/3 shifted
    moved = aq_enforce_budget(model, 0.125)
    set_aq_temperature(model, 0.01)
    hard = torch.cat([m.attention().argmax(1) for m in layers]) != 1
    assert int(hard.sum()) == total // 8 and moved == int(before.sum()) - total // 8
    assert not (hard & ~before).any()  # only shifted channels were re-centred
    assert margin[hard].min() >= margin[before & ~hard].max()  # the largest margins stay
    assert aq_enforce_budget(model, 0.125) == 0  # idempotent
    with pytest.raises(ValueError, match="fraction"):
        aq_enforce_budget(model, 1.5)


def test_param_groups() -> None:
    model = RubiksNet("small", 10, variant="rubiks3d-aq")
    groups = {g["name"]: g for g in param_groups(model, 1e-4, 0.01, lr=0.1)}
    assert groups["shift"]["lr"] == pytest.approx(0.001) and groups["shift"]["weight_decay"] == 0
    assert groups["decay"]["weight_decay"] == 1e-4
    ids = {id(p) for g in groups.values() for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}
    assert any(p is model.fc.weight for p in groups["decay"]["params"])
    assert any(p is model.fc.bias for p in groups["no_decay"]["params"])
    torch.optim.SGD(list(groups.values()), lr=0.1, momentum=0.9)


def test_inflate_from_image_backbone() -> None:
    image = timm.create_model("rubiksnet2d_tiny", num_classes=6).eval()
    clip = torch.randn(*CLIP)
    video = inflate(image, t_init="zero").eval()
    assert video.variant == "rubiks3d" and video.num_classes == 6
    with torch.no_grad():  # a zero temporal shift is the image model frame by frame
        torch.testing.assert_close(video(clip), image(clip), rtol=1e-5, atol=1e-5)
    tsm = inflate(image, t_init="tsm", num_classes=3)
    assert tsm.stages[1].blocks[0].rubiks.shift[0, :6].tolist() == [1] * 6
    aq = inflate(image, variant="rubiks3d-aq")
    assert aq.variant == "rubiks3d-aq"
    # through timm: a 2-D state dict loads into a 3-D model (shifts inflated by the filter)
    state = rubiks_models.checkpoint_filter_fn(image.state_dict(), video)
    video.load_state_dict(state)


def test_torchscript_and_fx() -> None:
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    model = timm.create_model("rubiksnet_tiny_aq", num_classes=5).eval()
    clip = torch.randn(*CLIP)
    with torch.no_grad():
        ref = model(clip)
        torch.testing.assert_close(torch.jit.script(model)(clip), ref)
        fx = create_feature_extractor(
            model,
            return_nodes=["fc"],
            tracer_kwargs=dict(
                leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()
            ),
        )
        torch.testing.assert_close(fx(clip)["fc"], ref)


def test_bf16_autocast_and_channels_last() -> None:
    model = timm.create_model("rubiksnet_tiny", num_classes=5).eval()
    clip = torch.randn(*CLIP)
    with torch.no_grad():
        ref = model(clip)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(clip)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), ref, rtol=0.1, atol=0.1)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(clip), ref, rtol=1e-4, atol=1e-5)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(clip).float().sum().backward()
    assert model.stages[0].blocks[0].rubiks.shift.grad.dtype == torch.float32


@pytest.mark.parametrize("name", ["rubiksnet_tiny", "rubiksnet_tiny_aq", "rubiksnet2d_tiny"])
def test_compile_fullgraph(name: str) -> None:
    """Every variant compiles without a graph break, trains and infers (the tiers differ
    from Tiny only in widths and depths)."""
    model = timm.create_model(name, num_classes=5).train()
    clip = torch.randn(*CLIP)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    y = compiled(clip)
    y.sum().backward()
    assert model.stages[2].blocks[0].rubiks.shift.grad is not None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(clip), model(clip))


class _NoKernels(torch.utils._python_dispatch.TorchDispatchMode):
    """Any dispatch mode turns the fused training batch norm off: torch's own runs."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("arch", ["rubiksnet_tiny", "rubiksnet_tiny_aq"])
def test_cuda_training_batch_norm_kernels_match_torch(arch: str, dtype: torch.dtype) -> None:
    """A training step on CUDA, its batch norm + ReLU pairs in rubiks_shift's kernels,
    against the same step with torch's batch norm: logits and the batch norms' running
    statistics and counters to the dtype's rounding, and in float64 every gradient too.
    (In float32 a value that the two batch norms' roundings put on different sides of
    the ReLU's kink gets a different gradient, a step that the later layers spread: a
    random few per step, so float32 gradients are not compared.)"""
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=7).cuda().train().to(dtype)
    twin = timm.create_model(arch, num_classes=7).cuda().train().to(dtype)
    twin.load_state_dict(model.state_dict())
    clip = torch.randn(2, 8, 3, 64, 64, device="cuda", dtype=dtype)
    target = torch.tensor([1, 5], device="cuda")
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(deterministic=True, allow_tf32=False):
            logits = model(clip)
            F.cross_entropy(logits, target).backward()
            with _NoKernels():
                ref = twin(clip)
                F.cross_entropy(ref, target).backward()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, ref, **tol)
    if dtype == torch.float64:
        for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
            scale = q.grad.abs().max().item() or 1.0
            err = (p.grad - q.grad).abs().max().item() / scale
            assert err < 1e-9, f"{name}: gradient off by {err:.1e} of its largest"
    if dtype == torch.float32:
        tol = dict(rtol=1e-4, atol=1e-5)
    for (name, b), c in zip(model.named_buffers(), twin.buffers(), strict=True):
        torch.testing.assert_close(b, c, **tol, msg=name)


def _block_step(block, x: torch.Tensor, dy: torch.Tensor, path: str):
    """A training forward + backward of one block (``path``: ``frames``, ``one-node``:
    its channel-major autograd node, ``composed``: channel-major differentiable ops):
    (output, input gradient, parameter gradients, buffers), the output's layout left as
    the path gives it."""
    x = rubiks_models.channel_major_block.to_channel_major(x) if path != "frames" else x.clone()
    x.requires_grad_()
    block.zero_grad()
    if path == "frames":
        y = block(x)
    elif path == "composed":
        y = block._composed_channel_major(x)
    else:
        y = block._forward_channel_major(x)
        assert type(y.grad_fn).__name__ == "ChannelMajorBlockBackward"
    y.backward(dy)
    grads = [p.grad.clone() for p in block.parameters()]
    return y.detach(), x.grad, grads, [b.clone() for b in block.buffers()]


_BLOCK_OPTIONS = dict(
    variant="rubiks3d", se_reduction=0, shift_init="uniform", t_init="uniform",
    normalize_grad=True, normalize_t_factor=1.0, aq_tau=2.0, deploy=False,
)  # fmt: skip


@pytest.mark.parametrize("path", ["one-node", "composed"])
@pytest.mark.parametrize("stride,cin,cout", [(1, 6, 6), (2, 4, 6)])
def test_channel_major_block_matches_frames(stride: int, cin: int, cout: int, path: str) -> None:
    """A block's channel-major form (one matrix product per 1x1 convolution over all the
    clip's points), as one autograd node and as composed ops, computes the frames form's
    output, gradients and running statistics, in float64 on the CPU, and returns a
    channel-major clip."""
    RubiksBlock = rubiks_models.rubiksnet.RubiksBlock
    torch.manual_seed(3)
    block = RubiksBlock(cin, cout, stride, **_BLOCK_OPTIONS).double().train()
    twin = RubiksBlock(cin, cout, stride, **_BLOCK_OPTIONS).double().train()
    twin.load_state_dict(block.state_dict())
    x = torch.randn(2, 3, cin, 7, 6, dtype=torch.float64)
    dy = torch.randn(2, 3, cout, 7 // stride + 7 % stride, 6 // stride, dtype=torch.float64)
    y, gx, grads, buffers = _block_step(block, x, dy, path)
    y_ref, gx_ref, grads_ref, buffers_ref = _block_step(twin, x, dy, "frames")
    assert rubiks_shift.is_channel_major(y)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads + buffers, grads_ref + buffers_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stride,cin,cout", [(1, 3, 3), (2, 2, 3)])
def test_channel_major_block_node_gradcheck(stride: int, cin: int, cout: int) -> None:
    """The block's autograd node against finite differences in float64 (the shift
    gradient unnormalised here: normalisation is not a derivative)."""
    RubiksBlock = rubiks_models.rubiksnet.RubiksBlock
    torch.manual_seed(5)
    options = {**_BLOCK_OPTIONS, "normalize_grad": False}
    block = RubiksBlock(cin, cout, stride, **options).double().train()
    x = rubiks_models.channel_major_block.to_channel_major(torch.randn(2, 2, cin, 4, 4).double())
    settings = block._one_node_inputs(x)[1][-1]
    node = rubiks_models.channel_major_block.ChannelMajorBlock
    proj = block.shortcut.weight if block.has_proj else None
    params = [block.conv1.weight, block.conv2.weight, proj, block.norm1.weight]
    params += [block.norm1.bias, block.norm2.weight, block.norm2.bias, block.rubiks.shift]

    def run(x, *values):
        return node.apply(x, *values, settings)

    inputs = [x.requires_grad_()]
    inputs += [p if p is None else p.detach().clone().requires_grad_() for p in params]
    assert type(run(*inputs).grad_fn).__name__ == "ChannelMajorBlockBackward"
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("stride,cin,cout", [(1, 4, 4), (2, 4, 6)])
def test_channel_major_block_node_inputs_are_the_blocks_own(stride: int, cin: int, cout: int):
    """The node's inputs, read from the modules' dicts, are the block's own tensors and
    settings; every state the node cannot serve gives None (the composed ops run)."""
    block = rubiks_models.rubiksnet.RubiksBlock(cin, cout, stride, **_BLOCK_OPTIONS).train()
    x = rubiks_models.channel_major_block.to_channel_major(torch.randn(2, 3, cin, 6, 6))
    counters, inputs = block._one_node_inputs(x)
    assert counters[0] is block.norm1.num_batches_tracked
    assert counters[1] is block.norm2.num_batches_tracked
    proj = block.shortcut.weight if block.has_proj else None
    expected = (
        block.conv1.weight, block.conv2.weight, proj, block.norm1.weight, block.norm1.bias,
        block.norm2.weight, block.norm2.bias, block.rubiks.shift,
    )  # fmt: skip
    assert len(inputs) == len(expected) + 1
    assert all(a is b for a, b in zip(inputs, expected, strict=False))
    settings = inputs[-1]
    norm1 = (block.norm1.running_mean, block.norm1.running_var, 0.1, 1e-5)
    assert all(a is b or a == b for a, b in zip(settings.norm1, norm1, strict=True))
    assert settings.norm2[0] is block.norm2.running_mean
    r = block.rubiks
    assert settings.stride == stride
    assert settings.shift == (r.stride, r.padding, r.quantize, r.normalize_grad, 1.0)
    assert settings.dtype is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block._one_node_inputs(x)[1][-1].dtype == torch.bfloat16

    def without(change) -> object:
        other = rubiks_models.rubiksnet.RubiksBlock(cin, cout, stride, **_BLOCK_OPTIONS)
        change(other.train())
        return other._one_node_inputs(x)

    assert without(lambda b: b.norm2.eval()) is None
    assert without(lambda b: setattr(b.norm1, "momentum", None)) is None
    assert without(lambda b: None) is not None

    class Subclassed(type(block.rubiks)):
        pass

    assert without(lambda b: setattr(b.rubiks, "__class__", Subclassed)) is None
    assert without(lambda b: b.norm2.double()) is None  # parameters not in float32
    no_stats = torch.nn.BatchNorm2d(cout, track_running_stats=False)
    assert without(lambda b: setattr(b, "norm2", no_stats)) is None
    plain = torch.nn.BatchNorm2d(cin, affine=False)
    assert without(lambda b: setattr(b, "norm1", plain)) is None
    sync = torch.nn.SyncBatchNorm(cin)
    assert without(lambda b: setattr(b, "norm1", sync)) is None


def test_channel_major_block_node_with_frozen_weights() -> None:
    """Frozen layers (``requires_grad_(False)``) get no gradient from the node, and the
    others the same gradients as with every layer trained."""
    RubiksBlock = rubiks_models.rubiksnet.RubiksBlock
    torch.manual_seed(6)
    block = RubiksBlock(4, 6, 2, **_BLOCK_OPTIONS).double().train()
    twin = RubiksBlock(4, 6, 2, **_BLOCK_OPTIONS).double().train()
    twin.load_state_dict(block.state_dict())
    for layer in (block.conv1, block.conv2, block.shortcut, block.rubiks):
        layer.requires_grad_(False)
    x = torch.randn(2, 3, 4, 6, 6, dtype=torch.float64)
    dy = torch.randn(2, 3, 6, 3, 3, dtype=torch.float64)
    _, gx, _, _ = _block_step(twin, x, dy, "one-node")
    x = rubiks_models.channel_major_block.to_channel_major(x).requires_grad_()
    block._forward_channel_major(x).backward(dy)
    torch.testing.assert_close(x.grad, gx, rtol=0, atol=0)
    for (name, p), q in zip(block.named_parameters(), twin.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
        else:
            assert p.grad is None, name


def test_channel_major_block_composes_under_a_dispatch_mode() -> None:
    """Under a dispatch mode (here torch's FLOP counter) the block runs as differentiable
    ops, which the mode sees, not as one node."""
    from torch.utils.flop_counter import FlopCounterMode

    block = rubiks_models.rubiksnet.RubiksBlock(4, 4, **_BLOCK_OPTIONS).train()
    x = rubiks_models.channel_major_block.to_channel_major(torch.randn(1, 2, 4, 5, 5))
    with FlopCounterMode(display=False) as counter:
        y = block._forward_channel_major(x.requires_grad_())
    assert type(y.grad_fn).__name__ != "ChannelMajorBlockBackward"
    counts = counter.get_flop_counts()["Global"]
    products = sum(v for op, v in counts.items() if op.__name__ in ("mm", "addmm"))
    assert products == 2 * 2 * (4 * 4 * 50)  # two (4, 4) x (4, 50) products


def test_channel_major_plane_setting() -> None:
    model = RubiksNet("tiny", 5)
    blocks = [m for m in model.modules() if isinstance(m, rubiks_models.rubiksnet.RubiksBlock)]
    assert all(b.channel_major_plane == 28 * 28 for b in blocks)
    model.set_channel_major_plane(0)
    assert all(b.channel_major_plane == 0 for b in blocks)
    with pytest.raises(ValueError, match="channel_major_plane"):
        model.set_channel_major_plane(-1)
    aq = RubiksNet("tiny", 5, variant="rubiks3d-aq")
    assert all(
        m.channel_major_plane == 0 for m in aq.modules() if hasattr(m, "channel_major_plane")
    )


def _last_block_layouts(net) -> list[bool]:
    """Whether each later forward of ``net``'s last block returns a channel-major clip."""
    layouts: list[bool] = []
    net.stages[-1].blocks[-1].register_forward_hook(
        lambda m, i, o: layouts.append(rubiks_shift.is_channel_major(o))
    )
    return layouts


def _float64_twins(arch: str, monkeypatch) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(model, twin): one float64 CUDA model in training twice, the twin frame by frame
    (``set_channel_major_plane(0)``). The channel-major path, which the 16-bit dtypes
    take, is made to run on float64, where no value rounds to the other side of a ReLU."""
    monkeypatch.setattr(rubiks_models.rubiksnet, "NARROW_DTYPES", (torch.float64,))
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=7).cuda().double().train()
    twin = timm.create_model(arch, num_classes=7).cuda().double().train()
    twin.load_state_dict(model.state_dict())
    twin.set_channel_major_plane(0)
    return model, twin


def _assert_same_step(run, model: torch.nn.Module, twin: torch.nn.Module, tol: float) -> None:
    """One cross-entropy step through ``run`` (``model`` or a compiled form of it) and
    through ``twin`` on the same float64 clip: logits and running statistics to ``tol``,
    every gradient to 1e-8 in relative norm."""
    clip = torch.randn(2, 8, 3, 64, 64, device="cuda", dtype=torch.float64)
    target = torch.tensor([1, 5], device="cuda")
    logits = run(clip)
    F.cross_entropy(logits, target).backward()
    ref = twin(clip)
    F.cross_entropy(ref, target).backward()
    torch.testing.assert_close(logits, ref, rtol=tol, atol=tol)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        err = ((p.grad - q.grad).norm() / q.grad.norm().clamp_min(1e-300)).item()
        assert err < 1e-8, f"{name}: gradient off by {err:.1e} (relative norm)"
    for (name, b), c in zip(model.named_buffers(), twin.buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=tol, atol=1e-12, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch", ["rubiksnet_tiny", "rubiksnet_large"])
def test_cuda_training_channel_major_matches_frames(arch: str, monkeypatch) -> None:
    """A CUDA training step with the small-plane blocks channel-major (in float64,
    ``_float64_twins``) against the same step frame by frame: logits, every gradient and
    the running statistics."""
    model, twin = _float64_twins(arch, monkeypatch)
    layouts = _last_block_layouts(model)
    _assert_same_step(model, model, twin, tol=1e-10)
    assert layouts == [True]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("replays", [True, False], ids=["stage-ops", "traced"])
def test_cuda_compiled_channel_major_training_matches_frames(replays: bool, monkeypatch) -> None:
    """Compiled code (Inductor, fullgraph) trains the small-plane blocks channel-major
    too, the stages as ops (``set_compiled_replays``, the default) or traced: a compiled
    step (float64, ``_float64_twins``) against the eager frame-by-frame step: logits,
    every gradient and the running statistics."""
    model, twin = _float64_twins("rubiksnet_tiny", monkeypatch)
    model.set_compiled_replays(replays)
    _assert_same_step(torch.compile(model, fullgraph=True), model, twin, tol=1e-9)
    # what Dynamo traced: the stages' op, or products over (C, points) matrices (the
    # channel-major form)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    clip = torch.randn(2, 8, 3, 64, 64, device="cuda", dtype=torch.float64)
    torch.compile(model, backend=record, fullgraph=True)(clip)
    targets = {n.target for g in graphs for n in g.graph.nodes}
    stage_op = torch.ops.rubiks_models.stage_forward.default
    assert (stage_op in targets or torch.ops.rubiks_models.stage_forward in targets) == replays
    assert (torch.addmm in targets) != replays


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_training_runs_channel_major() -> None:
    """In bf16 autocast the small-plane blocks run channel-major by default, and the
    step's logits and loss gradient agree with the frame-by-frame step to bf16 rounding."""
    torch.manual_seed(0)
    model = timm.create_model("rubiksnet_tiny", num_classes=7).cuda().train()
    twin = timm.create_model("rubiksnet_tiny", num_classes=7).cuda().train()
    twin.load_state_dict(model.state_dict())
    twin.set_channel_major_plane(0)
    layouts = _last_block_layouts(model)
    clip = torch.randn(2, 8, 3, 64, 64, device="cuda")
    outs = []
    for net in (model, twin):
        with torch.autocast("cuda", torch.bfloat16):
            out = net(clip).float()
        out.square().sum().backward()
        outs.append((out.detach(), net.fc.weight.grad))
    assert layouts == [True]
    for a, b in zip(*outs, strict=True):
        assert ((a - b).norm() / b.norm()).item() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch", ["rubiksnet_tiny", "rubiksnet_large"])
def test_cuda_bf16_block_node_equals_composed_ops(arch: str) -> None:
    """On CUDA in bf16 autocast the channel-major blocks' single autograd node gives the
    composed ops' gradients and running statistics bit for bit, but for the 1x1
    convolutions' weight gradients: the node's are cuBLAS's float32 sums (torch >= 2.8),
    the composed ops' bf16 results of another product kernel, so they agree to bf16's
    rounding in norm (single sums that cancel may differ more)."""
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=7).cuda().train()
    twin = timm.create_model(arch, num_classes=7).cuda().train()
    twin.load_state_dict(model.state_dict())
    for m in twin.modules():
        if isinstance(m, rubiks_models.rubiksnet.RubiksBlock):
            m._one_node_inputs = lambda x: None
    clip = torch.randn(2, 8, 3, 64, 64, device="cuda")
    target = torch.tensor([1, 5], device="cuda")
    with torch.backends.cudnn.flags(deterministic=True):
        for net in (model, twin):
            with torch.autocast("cuda", torch.bfloat16):
                loss = F.cross_entropy(net(clip), target)
            loss.backward()
    unrounded = 0
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        if name.endswith(("conv1.weight", "conv2.weight", "shortcut.weight")):
            diff = (p.grad - q.grad).abs()
            err = (diff.norm() / q.grad.norm()).item()
            worst = (diff.max() / q.grad.abs().max()).item()
            assert err < 2**-7, f"{name}: {err:.1e} in norm, {worst:.1e} of the largest"
            unrounded += int(not torch.equal(p.grad, p.grad.bfloat16().float()))
        else:
            assert torch.equal(p.grad, q.grad), name
    for (name, b), c in zip(model.named_buffers(), twin.buffers(), strict=True):
        assert torch.equal(b, c), name
    # the node's weight gradients come from cuBLAS in float32 where torch can write so
    assert (unrounded > 0) == rubiks_models.channel_major_block._MM_OUT_DTYPE
