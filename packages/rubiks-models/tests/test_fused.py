"""The fused inference form equals the eval-mode model; CUDA-graph runners equal eager."""

from __future__ import annotations

import contextlib

import pytest
import timm
import torch
import torch.nn.functional as F

import rubiks_models  # noqa: F401  (registers the models)
from rubiks_models.cuda_graphs import GraphedInference, GraphedTrainStep
from rubiks_models.deploy import quantize_model
from rubiks_models.fused import FusedBlock, fuse_model
from rubiks_models.rubiksnet import RubiksBlock

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _trained_looking(name: str, device: str = "cpu", **kwargs) -> torch.nn.Module:
    """A model with random, non-trivial batch-norm statistics and affines (fusion folds
    them, so identity statistics would hide mistakes)."""
    model = timm.create_model(name, num_classes=10, **kwargs).to(device).eval()
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t, lo, hi in (
                (m.running_mean, -0.3, 0.3),
                (m.running_var, 0.4, 1.6),
                (m.weight.data, 0.5, 1.5),
                (m.bias.data, -0.3, 0.3),
            ):
                t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    return model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def _model_and_clip(name: str, hard: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    """A trained-looking model (hardened where ``hard``) and a seeded input for it
    (frames for the 2-D backbone, clips otherwise)."""
    model = _trained_looking(name)
    if hard:
        model = quantize_model(model).eval()
    g = torch.Generator().manual_seed(0)
    shape = (2, 3, 48, 40) if name.startswith("rubiksnet2d") else (2, 4, 3, 48, 40)
    return model, torch.randn(shape, generator=g)


# Float32 on the CPU: the fused form rounds differently (batch norm folded into the conv
# weights, conv2 and the residual sum in one product), so logits agree to ~1e-6 relative.
FP32_TOL = 1e-5


@pytest.mark.parametrize(
    "name,hard",
    [
        ("rubiksnet_tiny", False),
        ("rubiksnet_small", False),  # squeeze-excitation folded into conv2 per sample
        ("rubiksnet_tiny_aq", False),  # soft temporal attention
        ("rubiksnet_tiny_aq", True),  # hardened: integer temporal shifts fused with bn1
        ("rubiksnet2d_tiny", False),  # image backbone: 2-D shifts
    ],
)
@pytest.mark.parametrize("gemm", ["conv", "bmm"])
@pytest.mark.parametrize("plane", [0, 130, 10_000])  # frames, mixed, channel-major
def test_fused_equals_eval_model_cpu(name, hard, gemm, plane):
    model, x = _model_and_clip(name, hard)
    fused = fuse_model(model, gemm, channel_major_plane=plane)
    with torch.no_grad():
        expected = model(x)
        got = fused(x)
    assert got.shape == expected.shape
    assert _rel(got, expected) < FP32_TOL


EPILOGUE_MODELS = [
    ("rubiksnet_tiny", False),
    ("rubiksnet_small", False),  # squeeze-excitation: no epilogue
    ("rubiksnet_tiny_aq", False),
    ("rubiksnet_tiny_aq", True),
    ("rubiksnet2d_tiny", False),
]


def _epilogue_products(fused, x: torch.Tensor) -> int:
    """How many products a forward of ``fused`` on x ran with the bias + ReLU epilogue."""
    count = 0
    original = torch._addmm_activation

    def counting(*args, **kwargs):
        nonlocal count
        count += 1
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(torch, "_addmm_activation", counting)
        fused(x)
    return count


@pytest.mark.parametrize("name,hard", EPILOGUE_MODELS)
@pytest.mark.parametrize("plane", [130, 10_000])  # channel-major from the middle, everywhere
def test_fused_conv1_epilogue_equals_eval_model_cpu(name, hard, plane):
    """conv1 with bn2's bias and ReLU in its epilogue (the trunk carrying the bias rows,
    to the end where every block is channel-major): the eval model's logits, and in
    float64 the prologue form's within 1e-12."""
    model, x = _model_and_clip(name, hard)
    on = fuse_model(model, "bmm", channel_major_plane=plane, conv1_epilogue="on")
    off = fuse_model(model, "bmm", channel_major_plane=plane, conv1_epilogue="off")
    with torch.no_grad():
        expected = model(x)
        got = on(x)
        assert _rel(on.double()(x.double()), off.double()(x.double())) < 1e-12
    assert got.shape == expected.shape
    assert _rel(got, expected) < FP32_TOL
    takes = any(block.takes_epilogue for block in on.blocks)
    assert takes == (name == "rubiksnet_tiny")  # interpolated 3-D shifts, no gate
    assert (_epilogue_products(on, x.double()) > 0) == takes
    assert _epilogue_products(off, x.double()) == 0


def test_fused_conv1_epilogue_auto_is_for_captured_bfloat16_cuda_only():
    fused = fuse_model(_trained_looking("rubiksnet_tiny"), "bmm", channel_major_plane=10_000)
    x = torch.randn(1, 2, 3, 56, 56)  # planes 28², 14², 7², 4²
    assert _epilogue_products(fused, x) == 0
    assert _epilogue_products(fused, x.bfloat16()) == 0
    block = fused.blocks[1]
    cuda_bf16 = torch.empty(0, dtype=torch.bfloat16, device="meta")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
        patch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
        assert not block.carries_bias_rows(cuda_bf16, 14 * 14)  # eager: not capturing
        patch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        assert block.carries_bias_rows(cuda_bf16, 14 * 14)
        assert block.carries_bias_rows(cuda_bf16, 28 * 28)
        assert not block.carries_bias_rows(cuda_bf16, 7 * 7)
        assert not block.carries_bias_rows(cuda_bf16.float(), 14 * 14)
        # traced for torch.compile: no capture to ask about (Dynamo cannot trace the query)
        patch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert not block.carries_bias_rows(cuda_bf16, 14 * 14)
        patch.setattr(torch.compiler, "is_compiling", lambda: False)
        block.conv1_epilogue = "off"
        assert not block.carries_bias_rows(cuda_bf16, 14 * 14)


def test_fused_conv1_epilogue_bias_columns_keep_the_bias():
    """bn2's bias enters conv1's 16-bit weights as its rounded value and the remainder:
    their float32 sum is the float32 bias to about 2^-16 of it, not one 16-bit rounding."""
    block = fuse_model(_trained_looking("rubiksnet_tiny"), "bmm").blocks[0]
    cin = block.cin
    for dtype in (torch.bfloat16, torch.float16):
        w = block._bias_weight(dtype)
        assert w.dtype == dtype and w.shape == (block.cout, cin + 8)
        assert torch.equal(w[:, :cin], block.w1.to(dtype))
        total = w[:, cin].float() + w[:, cin + 1].float()
        assert ((total - block.b2).abs() <= block.b2.abs() * 2.0**-15).all()
        assert not w[:, cin + 2 :].any()
        assert ((w[:, cin].float() - block.b2).abs() > 0).any()  # the remainder matters
    assert torch.equal(block.s1_rows[cin:], torch.zeros(8))
    assert torch.equal(block.b1_rows[cin:], torch.tensor([1.0, 1, 0, 0, 0, 0, 0, 0]))


def test_fused_conv1_epilogue_follows_state_dict():
    fused = fuse_model(_trained_looking("rubiksnet_tiny"), "bmm", conv1_epilogue="on")
    state = fused.state_dict()
    state["blocks.1.b2"] = state["blocks.1.b2"] + 0.25
    state["blocks.1.w1"] = state["blocks.1.w1"] * 2
    fused.load_state_dict(state)
    block = fused.blocks[1]
    assert torch.equal(block.w1_bias[:, : block.cin], state["blocks.1.w1"])
    assert torch.equal(block.w1_bias[:, block.cin], state["blocks.1.b2"])
    off = fuse_model(_trained_looking("rubiksnet_tiny"), "bmm", conv1_epilogue="off")
    off.load_state_dict(state)
    x = torch.randn(1, 2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(fused.double()(x), off.double()(x)) < 1e-12


def test_fused_conv1_epilogue_compiles_fullgraph():
    fused = fuse_model(
        _trained_looking("rubiksnet_tiny"), "bmm", channel_major_plane=10_000,
        conv1_epilogue="on", compile_as="traced",
    )  # fmt: skip
    x = torch.randn(1, 2, 3, 32, 32)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fused(x))


def _with_temporal_shifts(model: torch.nn.Module, spatial: bool = False) -> torch.nn.Module:
    """A hardened AQ model whose temporal shifts are -1, 0 or +1 frames per channel (and,
    where ``spatial``, a non-zero spatial part, which only the gather can apply)."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for block in (m for m in model.modules() if isinstance(m, RubiksBlock)):
            shift = block.tshift.shift
            shift.zero_()
            shift[0] = torch.randint(-1, 2, (shift.shape[1],), generator=g).float()
            if spatial:
                shift[1] = 1.0
    return model


@pytest.mark.parametrize("plane", [0, 10_000])
def test_fused_hard_aq_reads_whole_frames_in_the_bn1_pass(plane):
    """A hardened AQ block's integer temporal shift is read by the bn1 pass (its frame
    shift), equal to the model; with a spatial part the gather applies it instead; a state
    dict loaded later is followed."""
    model = _with_temporal_shifts(quantize_model(_trained_looking("rubiksnet_tiny_aq")).eval())
    x = torch.randn(2, 4, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    fused = fuse_model(model, "bmm", channel_major_plane=plane)
    blocks = [m for m in fused.modules() if isinstance(m, FusedBlock)]
    frames = [b.tframes for b in blocks]
    assert all(f is not None and f.dtype == torch.int32 for f in frames)
    assert any(bool(f.any()) for f in frames)
    with torch.no_grad():
        assert _rel(fused(x), model(x)) < FP32_TOL
    spatial = _with_temporal_shifts(quantize_model(_trained_looking("rubiksnet_tiny_aq")), True)
    fused_spatial = fuse_model(spatial.eval(), "bmm", channel_major_plane=plane)
    assert all(b.tframes is None for b in fused_spatial.modules() if isinstance(b, FusedBlock))
    with torch.no_grad():
        assert _rel(fused_spatial(x), spatial(x)) < FP32_TOL
    fused.load_state_dict(fused_spatial.state_dict())
    assert all(b.tframes is None for b in blocks)
    with torch.no_grad():
        assert _rel(fused(x), spatial(x)) < FP32_TOL


def test_fused_2d_shifts_run_over_one_frame_clips_on_small_planes(monkeypatch):
    """A 2-D shift runs over one-frame clips where its input planes have at most
    ONE_FRAME_SHIFT_PLANE pixels (the shift op takes its row walk there), over whole
    clips elsewhere; the same values either way, in both layouts. A hardened model's
    quantized shifts stay over whole clips."""
    from rubiks_models import fused as fused_module

    seen = []
    shift = fused_module.affine_relu_shift3d

    def spy(x, *args, **kwargs):
        seen.append((x.shape[1], x.shape[-2] * x.shape[-1]))
        return shift(x, *args, **kwargs)

    monkeypatch.setattr(fused_module, "affine_relu_shift3d", spy)
    model = _trained_looking("rubiksnet_tiny_aq")
    x = torch.randn(1, 2, 3, 232, 232, generator=torch.Generator().manual_seed(2))
    for plane in (0, 784):
        fused = fuse_model(model, "bmm", channel_major_plane=plane)
        seen.clear()
        with torch.no_grad():
            got = fused(x)
        small = fused_module.ONE_FRAME_SHIFT_PLANE
        assert {frames for frames, hw in seen if hw <= small} == {1}
        assert {frames for frames, hw in seen if hw > small} == {2}
        with monkeypatch.context() as m, torch.no_grad():
            m.setattr(fused_module, "ONE_FRAME_SHIFT_PLANE", 0)
            seen.clear()
            whole = fused(x)
            assert {frames for frames, _ in seen} == {2}
        assert torch.equal(got, whole)
    hardened = fuse_model(quantize_model(model).eval(), "bmm")  # quantized: whole clips
    seen.clear()
    with torch.no_grad():
        hardened(x)
    assert seen and {frames for frames, _ in seen} == {2}


def test_fused_runs_small_planes_channel_major():
    """Blocks whose input planes are at most channel_major_plane pixels (and all after
    them) return channel-major clips; larger planes stay (N, T, C, H, W)-contiguous."""
    fused = fuse_model(_trained_looking("rubiksnet_tiny"), "bmm", channel_major_plane=130)
    layouts = []
    for block in fused.blocks:
        block.register_forward_hook(
            lambda m, i, out: layouts.append(
                (i[0].shape[-2:].numel(), out.permute(2, 0, 1, 3, 4).is_contiguous())
            )
        )
    with torch.no_grad():
        fused(torch.randn(1, 2, 3, 48, 40))
    assert {hw for hw, _ in layouts} == {480, 120, 30, 9, 4}
    assert all(major == (hw <= 130) for hw, major in layouts)


@contextlib.contextmanager
def _matmul_tf32(allowed: bool):
    """torch.backends.cuda.matmul.allow_tf32 set for the block, then restored."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _convolutions(fused, x: torch.Tensor) -> int:
    """How many aten convolutions one forward of ``fused`` on ``x`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountConvolutions(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution.default:
                CountConvolutions.count += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), CountConvolutions():
        fused(x)
    return CountConvolutions.count


@pytest.mark.parametrize("gemm,convolutions", [("auto", 1), ("bmm", 1), ("conv", None)])
def test_fused_cpu_runs_1x1_convolutions_as_products_by_default(gemm, convolutions):
    """On the CPU "auto" takes matrix products for every 1x1 convolution (faster there
    than oneDNN's convolutions): the stem is the forward's one convolution."""
    fused = fuse_model(_trained_looking("rubiksnet_tiny"), gemm, channel_major_plane=130)
    count = _convolutions(fused, torch.randn(1, 2, 3, 48, 40))
    if convolutions is None:  # forced: every 1x1 convolution as one, besides the stem
        assert count > 1
    else:
        assert count == convolutions


@pytest.mark.parametrize(
    "dtype,device,tf32,conv",
    [
        (torch.float32, "cuda", False, True),
        (torch.float32, "cuda", True, False),
        (torch.bfloat16, "cuda", False, False),
        (torch.float16, "cuda", False, False),
        (torch.float32, "cpu", False, False),
        (torch.float64, "cuda", False, False),
    ],
)
def test_auto_gemm_takes_convolutions_only_for_float32_cuda_without_tf32_products(
    dtype, device, tf32, conv
):
    """cuDNN's float32 convolutions may use TF32; full-precision float32 products would
    be several times slower, so "auto" takes them only once matmul TF32 is allowed."""
    from types import SimpleNamespace

    from rubiks_models.fused import _use_conv

    x = SimpleNamespace(dtype=dtype, device=torch.device(device))  # no GPU needed
    with _matmul_tf32(tf32):
        assert _use_conv("auto", x) is conv
    assert _use_conv("conv", x) is True and _use_conv("bmm", x) is False


def test_fuse_model_checks_channel_major_plane():
    model = _trained_looking("rubiksnet_tiny")
    with pytest.raises(ValueError, match="channel_major_plane must be >= 0"):
        fuse_model(model, channel_major_plane=-1)
    with pytest.raises(TypeError, match="channel_major_plane must be an int"):
        fuse_model(model, channel_major_plane=1.5)


def test_fused_accepts_tsn_frames_and_leaves_model_alone():
    model = _trained_looking("rubiksnet_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_model(model)
    x = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        a = fused(x)
        b = fused(x.flatten(1, 2))  # TSN-stacked (B, 3T, H, W)
    torch.testing.assert_close(a, b)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fused_refuses_training_and_non_rubiksnet():
    fused = fuse_model(_trained_looking("rubiksnet_tiny"))
    fused.train()
    with pytest.raises(RuntimeError, match="inference only"):
        fused(torch.randn(1, 2, 3, 32, 32))
    with pytest.raises(TypeError, match="expects a RubiksNet"):
        fuse_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="gemm must be one of"):
        fuse_model(_trained_looking("rubiksnet_tiny"), "cublas")
    with pytest.raises(ValueError, match="conv1_epilogue must be one of"):
        fuse_model(_trained_looking("rubiksnet_tiny"), conv1_epilogue="yes")


@pytest.mark.parametrize("hard_aq", [False, True])
def test_fused_compiles_fullgraph(hard_aq):
    """Every fused form traces whole (the hardened AQ's frame shift included)."""
    if hard_aq:
        model = quantize_model(_trained_looking("rubiksnet_tiny_aq")).eval()
        fused = fuse_model(_with_temporal_shifts(model))
    else:
        fused = fuse_model(_trained_looking("rubiksnet_tiny"))
    x = torch.randn(1, 2, 3, 32, 32)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fused(x))


def _graph_ops(compiled_model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """The ops of the graph torch.compile traces from ``compiled_model(x)``."""
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True)
    compiled(x)
    return [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_compiles_as_one_op(autocast):
    """compile_as="one_op": compiled code calls the eager forward as one op, with the
    same values, under autocast too (the clip cast to the autocast dtype first)."""
    fused = fuse_model(_trained_looking("rubiksnet_tiny"), compile_as="one_op")
    x = torch.randn(2, 2, 3, 32, 32)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with torch.no_grad(), ctx:
        ops = _graph_ops(fused, x)
        compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
        got, expected = compiled(x), fused(x)
    assert sum("fused_forward" in op for op in ops) == 1, ops
    assert not any("rubiks_shift" in op for op in ops), ops
    assert got.dtype == expected.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert torch.equal(got, expected)


def test_fused_one_op_checks_input_and_follows_copies():
    """The one-op form rejects bad input while tracing, as eager does; a deep copy gets a
    handle of its own (its compiled code computes with its own weights), and headless
    models return pooled features."""
    import copy

    fused = fuse_model(_trained_looking("rubiksnet_tiny"), compile_as="one_op")
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    with torch.no_grad(), pytest.raises(Exception, match="C = 3"):
        compiled(torch.randn(1, 2, 4, 32, 32))
    twin = copy.deepcopy(fused)
    assert twin._op_handle != fused._op_handle
    twin.blocks[0].w1.mul_(2.0)
    x = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        got = torch.compile(twin, fullgraph=True, backend="aot_eager")(x)
        torch.testing.assert_close(got, twin(x))
        assert not torch.allclose(got, fused(x))
    model = timm.create_model("rubiksnet_tiny", num_classes=0).eval()
    headless = fuse_model(model, compile_as="one_op")
    with torch.no_grad():
        pooled = torch.compile(headless, fullgraph=True, backend="aot_eager")(x)
        torch.testing.assert_close(pooled, headless(x))
    assert pooled.shape == (1, headless.out_width)
    with pytest.raises(ValueError, match="compile_as must be one of"):
        fuse_model(_trained_looking("rubiksnet_tiny"), compile_as="opaque")


def test_fused_export_traces_blocks_even_as_one_op():
    """torch.export never records the one op (its handle is valid in this process only)."""
    fused = fuse_model(_trained_looking("rubiksnet_tiny"), compile_as="one_op")
    x = torch.randn(1, 2, 3, 32, 32)
    program = torch.export.export(fused, (x,))
    ops = [
        str(n.target)
        for m in program.graph_module.modules()
        if isinstance(m, torch.fx.GraphModule)
        for n in m.graph.nodes
        if n.op == "call_function"
    ]
    assert not any("fused_forward" in op for op in ops), ops
    assert any("rubiks_shift" in op for op in ops), ops
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), fused(x))


def test_fused_compile_as_auto_traces_blocks_off_cuda():
    """compile_as="auto" traces the blocks off CUDA (here: on the CPU)."""
    fused = fuse_model(_trained_looking("rubiksnet_tiny"))
    with torch.no_grad():
        ops = _graph_ops(fused, torch.randn(1, 2, 3, 32, 32))
    assert not any("fused_forward" in op for op in ops)
    assert fused._compiles_as_one_op("cuda") and not fused._compiles_as_one_op("cpu")


def test_fused_half_weights_are_stored_not_cast_per_call():
    fused = fuse_model(_trained_looking("rubiksnet_tiny"), "bmm")
    block = fused.blocks[0]
    for dtype in (torch.bfloat16, torch.float16):
        w = block.gemm_weight("w1", dtype)
        assert w.dtype == dtype and w is block.gemm_weight("w1", dtype)
        assert torch.equal(w, block.w1.to(dtype))
    assert not any(k.endswith(("_bf16", "_f16")) for k in fused.state_dict())
    # a compiled call reads the stored copies: no weight cast in the traced graph
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(fused, backend=backend, fullgraph=True)
    x = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(compiled(x), fused(x))
    casts = [  # casts of graph inputs (the clip, the module's weights and buffers)
        n for n in graphs[0].graph.nodes
        if n.target == "to" and torch.bfloat16 in (*n.args, *n.kwargs.values())
        and n.args[0].op == "placeholder"
    ]  # fmt: skip
    assert len(casts) == 1  # the input only


def test_fused_half_weights_follow_state_dict_and_module_casts():
    fused = fuse_model(_trained_looking("rubiksnet_tiny"), "bmm")
    state = fused.state_dict()
    state["blocks.0.w1"] = state["blocks.0.w1"] * 2
    fused.load_state_dict(state)
    assert torch.equal(fused.blocks[0].w1_bf16, (state["blocks.0.w1"]).to(torch.bfloat16))
    fused.double()  # the copies are cast too: the weight is cast from the master instead
    assert fused.blocks[0].gemm_weight("w1", torch.bfloat16).dtype == torch.bfloat16
    x = torch.randn(1, 2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert fused(x).dtype == torch.float64


def test_graph_runners_refuse_cpu_tensors():
    model = _trained_looking("rubiksnet_tiny")
    x = torch.randn(1, 2, 3, 32, 32)
    with pytest.raises(ValueError, match="CUDA graphs need CUDA tensors"):
        GraphedInference(model, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="CUDA graphs need CUDA tensors"):
        GraphedTrainStep(model, opt, F.cross_entropy, x, torch.zeros(1, dtype=torch.long))


# --------------------------------------------------------------------------- GPU


@requires_cuda
@pytest.mark.parametrize("name,hard", [("rubiksnet_small", False), ("rubiksnet_tiny_aq", True)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("gemm", ["conv", "bmm"])
@pytest.mark.parametrize("plane", [0, 784])  # frames; channel-major from 28 x 28
def test_fused_equals_eval_model_cuda(name, hard, dtype, tol, gemm, plane):
    """On the GPU the prologue runs inside the shift kernel. Tolerances: float32 convs
    run in TF32 (cuDNN's default), bfloat16 rounds every activation."""
    model = _trained_looking(name, "cuda")
    if hard:
        model = _with_temporal_shifts(quantize_model(model).eval())
    fused = fuse_model(model, gemm, channel_major_plane=plane)
    x = torch.randn(2, 8, 3, 64, 64, device="cuda")
    with torch.no_grad():
        expected = model.double()(x.double()).float()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            got = fused(x)
    assert _rel(got, expected) < tol


@requires_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 5e-2)])
def test_fused_conv1_epilogue_equals_eval_model_cuda(dtype, tol):
    """cuBLASLt's bias + ReLU epilogue and the plain shift kernel: the eval model's
    logits, eager ("on": every channel-major block) and in a CUDA graph, where "auto"
    takes it in bfloat16 (on the 16² planes here): the graph's values are then an eager
    call's that sees a capture, bit for bit, and differ from the blocks run one by one
    (the model's own graph replays turned off here)."""
    model = _trained_looking("rubiksnet_tiny", "cuda")
    on = fuse_model(model, "bmm", conv1_epilogue="on")
    auto = fuse_model(model, "bmm")
    auto.set_eager_graphs(False)
    x = torch.randn(2, 8, 3, 64, 64, device="cuda").to(dtype)
    with torch.no_grad():
        expected = model.double()(x.double()).float()
        got = on(x)
        assert _epilogue_products(on, x) > 0 and _epilogue_products(auto, x) == 0
        replayed = GraphedInference(auto, x)(x)
        eager = auto(x)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
            as_captured = auto(x)
            takes = _epilogue_products(auto, x) > 0
    assert _rel(got, expected) < tol and _rel(replayed, expected) < tol
    assert takes == (dtype == torch.bfloat16)
    assert torch.equal(replayed, as_captured)
    assert torch.equal(replayed, eager) == (dtype == torch.float32)


@requires_cuda
@pytest.mark.parametrize("precision,convolutions", [("highest", True), ("high", False)])
def test_float32_auto_gemm_follows_matmul_precision_cuda(precision, convolutions):
    """Float32 on CUDA: 1x1 convolutions by default, matrix products once
    ``torch.set_float32_matmul_precision("high")`` lets them use TF32 (the stem is its
    own kernel there, so products leave no convolution); equal to the eval model either
    way (TF32 tolerance)."""
    model = _trained_looking("rubiksnet_small", "cuda")
    fused = fuse_model(model, channel_major_plane=784)
    x = torch.randn(2, 8, 3, 64, 64, device="cuda")
    with _matmul_tf32(precision == "high"):
        assert (_convolutions(fused, x) > 0) is convolutions
        with torch.no_grad():
            got = fused(x)
    with torch.no_grad():
        expected = model.double()(x.double()).float()
    assert _rel(got, expected) < 2e-3


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inductor_compiled_equals_eager_cuda(dtype):
    """Traced for Inductor, compiled code calls the shift ops through the dispatcher (the
    eager model calls the kernels directly): the same kernels, so the same values up to
    the convolution algorithms (TF32) and fusions Inductor picks around them."""
    model = fuse_model(_trained_looking("rubiksnet_tiny", "cuda"), compile_as="traced")
    x = torch.randn(2, 4, 3, 64, 64, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    half = dtype != torch.float32
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=half):
        expected, got = model(x), compiled(x)
    assert _rel(got.float(), expected.float()) < (5e-2 if half else 2e-3)


@requires_cuda
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_one_op_equals_eager_cuda(dtype, mode):
    """On CUDA compiled code calls the eager forward as one op by default: the same
    values bit for bit, in CUDA graphs (``reduce-overhead``) too."""
    # bn2's bias + ReLU in the shift in both (in bfloat16 "auto" moves them into conv1
    # where a graph is captured, as reduce-overhead does: other roundings)
    model = fuse_model(_trained_looking("rubiksnet_tiny", "cuda"), conv1_epilogue="off")
    x = torch.randn(2, 4, 3, 64, 64, device="cuda")
    compiled = torch.compile(model, fullgraph=True, mode=mode)
    half = dtype != torch.float32
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=half):
        ops = _graph_ops(model, x)
        rubiks_ops = [op for op in ops if "rubiks" in op]
        assert len(rubiks_ops) == 1 and "fused_forward" in rubiks_ops[0], ops
        expected = model(x)
        for _ in range(3):  # reduce-overhead: warm-up, recording, replay
            got = compiled(x)
            assert torch.equal(got, expected)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graphed_inference_equals_eager(dtype):
    """Replays equal eager calls bit for bit (bn2's bias + ReLU kept in the shift, as
    eager bfloat16 keeps it), after cuBLAS's workspaces are cleared and the cache emptied
    (as torch.compile's CUDA graphs do): the products replay on a workspace of the
    graph's own."""
    model = fuse_model(_trained_looking("rubiksnet_tiny", "cuda"), conv1_epilogue="off")
    x = torch.randn(2, 4, 3, 64, 64, device="cuda").to(dtype)
    runner = GraphedInference(model, x)
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    for seed in range(3):
        new = torch.randn(
            x.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(seed)
        ).to(dtype)
        with torch.no_grad():
            expected = model(new)
        assert torch.equal(runner(new), expected)
    with pytest.raises(ValueError, match="does not match the captured"):
        runner(torch.randn(1, 4, 3, 64, 64, device="cuda"))


@requires_cuda
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_graphed_train_step_equals_eager(monkeypatch, autocast_dtype):
    """With deterministic cuDNN kernels (its default weight gradients sum with atomics:
    two eager steps differ in the last bits, which five SGD steps amplify past any
    tolerance), without TF32 and without the shift-gradient normalisation (which turns a
    channel's near-zero gradient into a unit vector, so rounding noise there moves a shift
    by the full learning rate), graph replays and eager steps agree to rounding; in bf16
    autocast the small-plane blocks run channel-major, as one autograd node each."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.manual_seed(0)
    eager = _trained_looking("rubiksnet_tiny", "cuda", normalize_grad=False).train()
    graphed = _trained_looking("rubiksnet_tiny", "cuda", normalize_grad=False).train()
    graphed.load_state_dict(eager.state_dict())
    x = torch.randn(2, 4, 3, 48, 48, device="cuda")
    y = torch.randint(0, 10, (2,), device="cuda")
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    opt_g = torch.optim.SGD(graphed.parameters(), lr=0.05, momentum=0.9)
    runner = GraphedTrainStep(
        graphed, opt_g, F.cross_entropy, x, y, autocast_dtype=autocast_dtype, warmup=2
    )
    amp = torch.autocast("cuda", autocast_dtype or torch.float32, enabled=bool(autocast_dtype))

    def eager_loss():
        with amp:
            return F.cross_entropy(eager(x), y)

    for _ in range(2):  # the warm-up steps the runner took
        opt_e.zero_grad(set_to_none=False)
        eager_loss().backward()
        opt_e.step()
    for _ in range(3):
        opt_e.zero_grad(set_to_none=False)
        loss_e = eager_loss()
        loss_e.backward()
        opt_e.step()
        loss_g = runner.step(x, y)
        torch.testing.assert_close(loss_g, loss_e.detach(), rtol=1e-4, atol=1e-5)
    for (name, p_e), p_g in zip(eager.named_parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(p_g, p_e, rtol=1e-3, atol=1e-4, msg=name)
