"""Bound calls of the inference ops: an eager CUDA call whose signature passed the checks
once launches directly afterwards, with the same results as the checked path."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from shift_testing import channel_major, requires_cuda

from rubiks_shift import affine_relu, affine_relu_shift3d, call_and_bind, rubiks_shift3d


@pytest.fixture
def bound():
    """The bound calls' table, empty before and after the test."""
    from rubiks_shift import _cuda

    _cuda.BOUND.clear()
    yield _cuda.BOUND
    _cuda.BOUND.clear()


def _tensors(seed, shape, dtype, major):
    g = torch.Generator().manual_seed(seed)
    c = shape[2]
    x = torch.randn(shape, generator=g).to("cuda", dtype)
    x = channel_major(x) if major else x
    acc = torch.float64 if dtype == torch.float64 else torch.float32  # the per-channel dtype
    scale = (torch.rand(c, generator=g) + 0.5).to("cuda", acc)
    bias = (torch.randn(c, generator=g) * 0.5).to("cuda", acc)
    shift = (torch.rand(3, c, generator=g) * 4 - 2).cuda()
    frames = torch.randint(-2, 3, (c,), generator=g, dtype=torch.int32).cuda()
    return x, scale, bias, shift, frames


def _checked(bound, fn):
    """fn() through the checked path (no bound call in the table), which then binds."""
    bound.clear()
    return fn()


CASES = [
    ((2, 8, 6, 20, 19), torch.float32, False, False),
    ((2, 8, 6, 14, 14), torch.bfloat16, True, False),
    ((2, 8, 6, 14, 14), torch.bfloat16, True, True),
    ((8, 1, 6, 14, 14), torch.float16, True, False),
    ((2, 3, 5, 7, 7), torch.float64, False, True),
]


@requires_cuda
@pytest.mark.parametrize("shape,dtype,major,quantize", CASES)
def test_bound_shift_equals_checked_path(bound, shape, dtype, major, quantize):
    x, scale, bias, shift, _ = _tensors(0, shape, dtype, major)
    with torch.no_grad():
        _checked(bound, lambda: affine_relu_shift3d(x, scale, bias, shift, quantize=quantize))
        assert len(bound) == 1 and callable(next(iter(bound.values())))
        # new values, same signature: the bound call, against the checked path
        x2, scale2, bias2, shift2, _ = _tensors(1, shape, dtype, major)
        y = affine_relu_shift3d(x2, scale2, bias2, shift2, quantize=quantize)
        expected = _checked(
            bound, lambda: affine_relu_shift3d(x2, scale2, bias2, shift2, quantize=quantize)
        )
    assert y.stride() == expected.stride() and torch.equal(y, expected)


@requires_cuda
@pytest.mark.parametrize("shape,dtype,major,quantize", CASES)
@pytest.mark.parametrize("stride,padding", [(1, 0), ((1, 2, 2), (0, 1, 1))])
def test_bound_plain_forward_equals_checked_path(
    bound, shape, dtype, major, quantize, stride, padding
):
    """rubiks_shift3d with nothing to record (inference) binds its signature too."""
    x, _, _, shift, _ = _tensors(10, shape, dtype, major)

    def call(x, shift):
        return rubiks_shift3d(x, shift, stride, padding, quantize=quantize)

    with torch.inference_mode():
        _checked(bound, lambda: call(x, shift))
        assert len(bound) == 1 and callable(next(iter(bound.values())))
        x2, _, _, shift2, _ = _tensors(11, shape, dtype, major)
        y = call(x2, shift2)
        expected = _checked(bound, lambda: call(x2, shift2))
    assert y.stride() == expected.stride() and torch.equal(y, expected)


@requires_cuda
def test_plain_forward_binds_only_calls_with_nothing_to_record(bound):
    x, _, _, shift, _ = _tensors(12, (1, 3, 4, 5, 6), torch.float32, False)
    shift.requires_grad_()
    y = rubiks_shift3d(x, shift)  # autograd records it: no key, no bound call
    assert y.requires_grad and not bound
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        assert rubiks_shift3d(x, shift).dtype == torch.bfloat16  # autocast: checked path
    assert not bound
    with torch.no_grad():
        rubiks_shift3d(x, shift)
        assert len(bound) == 1
        assert not rubiks_shift3d(x, shift).requires_grad  # the bound call
    y = rubiks_shift3d(x, shift)  # grad enabled again: recorded, whatever is bound
    y.sum().backward()
    assert shift.grad is not None


@requires_cuda
@pytest.mark.parametrize("shape,dtype,major,_", CASES)
@pytest.mark.parametrize("shifted", [False, True])
def test_bound_affine_relu_equals_checked_path(bound, shape, dtype, major, _, shifted):
    x, scale, bias, _, frames = _tensors(2, shape, dtype, major)
    frames = frames if shifted else None
    with torch.no_grad():
        _checked(bound, lambda: affine_relu(x, scale, bias, frames))
        assert len(bound) == 1 and callable(next(iter(bound.values())))
        scale.mul_(-1)  # values are read at every call
        y = affine_relu(x, scale, bias, frames)
        expected = _checked(bound, lambda: affine_relu(x, scale, bias, frames))
    assert y.stride() == expected.stride() and torch.equal(y, expected)


@requires_cuda
def test_bfloat16_pairs_follow_the_input_address(bound):
    """A bfloat16 clip at an odd element offset does not take the pairs bound for an
    aligned one."""
    x, scale, bias, _, _ = _tensors(3, (1, 2, 3, 4, 6), torch.bfloat16, False)
    storage = torch.randn(x.numel() + 1, device="cuda").to(torch.bfloat16)
    odd = storage[1:].view(x.shape)
    with torch.no_grad():
        affine_relu(x, scale, bias)
        y = affine_relu(odd, scale, bias)
        assert len(bound) == 2
        expected = _checked(bound, lambda: affine_relu(odd.clone(), scale, bias))
    assert torch.equal(y, expected)


@requires_cuda
def test_signatures_that_convert_are_not_bound(bound):
    x, scale, bias, shift, frames = _tensors(4, (1, 3, 4, 5, 6), torch.float32, False)
    with torch.no_grad():
        y = affine_relu_shift3d(x, scale.double(), bias, shift)  # scale converted per call
        y2 = affine_relu(x, scale, bias, frames.long())  # frame shift converted per call
        again = affine_relu_shift3d(x, scale.double(), bias, shift)
        y2_again = affine_relu(x, scale, bias, frames.long())
    assert list(bound.values()) == [None, None]
    assert torch.equal(y, again) and torch.equal(y2, y2_again)


@requires_cuda
def test_checks_still_apply_after_binding(bound):
    x, scale, bias, shift, _ = _tensors(5, (1, 3, 4, 5, 6), torch.float32, False)
    with torch.no_grad():
        affine_relu_shift3d(x, scale, bias, shift)
        affine_relu(x, scale, bias)
    assert len(bound) == 2
    with pytest.raises(RuntimeError, match="no gradient"):
        affine_relu_shift3d(x.requires_grad_(), scale, bias, shift)
    with pytest.raises(RuntimeError, match="no gradient"):
        affine_relu(x, scale, bias)
    x.requires_grad_(False)
    with torch.no_grad(), pytest.raises(TypeError, match="stride"):
        affine_relu_shift3d(x, scale, bias, shift, stride=(True, 1, 1))


@requires_cuda
def test_bound_calls_in_a_cuda_graph(bound):
    x, scale, bias, shift, frames = _tensors(6, (2, 8, 6, 14, 14), torch.bfloat16, True)
    with torch.no_grad():
        eager_a = affine_relu(x, scale, bias, frames)
        eager_y = affine_relu_shift3d(eager_a, scale, bias, shift)
        eager_z = rubiks_shift3d(eager_y, shift)
        assert len(bound) == 3
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            a = affine_relu(x, scale, bias, frames)
            y = affine_relu_shift3d(a, scale, bias, shift)
            z = rubiks_shift3d(y, shift)
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, eager_y) and torch.equal(z, eager_z)


@requires_cuda
def test_a_new_tuning_unbinds(bound):
    from rubiks_shift import _cuda

    x, scale, bias, shift, _ = _tensors(7, (1, 3, 4, 5, 6), torch.float32, False)
    with torch.no_grad():
        affine_relu_shift3d(x, scale, bias, shift)
    assert bound
    with _cuda.tuned(_cuda.TUNING):
        assert not bound


def test_only_plain_int_arguments_make_keys():
    """Bools compare equal to ints: a key holding one would match an int's signature."""
    from rubiks_shift._ops import _int_or_triple

    assert _int_or_triple(1) and _int_or_triple((1, 2, 1))
    for value in (True, (True, 1, 1), (1, 1), [1, 1, 1], (1.0, 1, 1), None):
        assert not _int_or_triple(value)


@requires_cuda
@pytest.mark.parametrize("shape,dtype,major,quantize", CASES[:3])
def test_registered_calls_bind_like_eager_ones(bound, shape, dtype, major, quantize):
    """The registered op (what compiled code calls) binds a signature that passed its
    check, in the same table; a later call of it equals the checked path."""
    op = torch.ops.rubiks_shift.affine_relu_shift3d

    def call(x, scale, bias, shift):
        return op(x, scale, bias, shift, [1, 1, 1], [0, 0, 0], quantize)

    x, scale, bias, shift, _ = _tensors(8, shape, dtype, major)
    with torch.no_grad():
        _checked(bound, lambda: call(x, scale, bias, shift))
        assert len(bound) == 1 and callable(next(iter(bound.values())))
        x2, scale2, bias2, shift2, _ = _tensors(9, shape, dtype, major)
        y = call(x2, scale2, bias2, shift2)
        expected = _checked(bound, lambda: call(x2, scale2, bias2, shift2))
        eager = affine_relu_shift3d(x2, scale2, bias2, shift2, quantize=quantize)
        with pytest.raises(ValueError, match="shift must be a floating"):
            call(x2, scale2, bias2, shift2[:2])  # another signature: checked again
    assert y.stride() == expected.stride() and torch.equal(y, expected)
    assert torch.equal(y, eager)


def test_registered_call_memo_checks_once_per_signature(monkeypatch):
    """Without a GPU, against a stand-in backend: a registered CUDA call checks and runs
    the checked path once per signature, then takes its bound call while x's device is
    current; another signature, or a signature without a bound call, is checked again."""
    from types import SimpleNamespace

    from rubiks_shift import _ops

    log = []
    backend = SimpleNamespace(
        BOUND={},
        forward_affine=lambda x, *a: log.append("checked path") or x.clone(),
        bind_affine=lambda x, *a: lambda x, *b: log.append("bound") or x.clone(),
    )
    monkeypatch.setattr(_ops, "_cuda_backend", lambda: backend)
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: -1)  # CPU tensors: device -1
    x, scale, bias = torch.randn(1, 2, 3, 4, 4), torch.ones(3), torch.zeros(3)
    shift = torch.zeros(3, 3)
    args = ([1, 1, 1], [0, 0, 0], False)
    for _ in range(3):
        _ops._affine_cuda(x, scale, bias, shift, *args)
    assert log == ["checked path", "bound", "bound"] and len(backend.BOUND) == 1
    with pytest.raises(ValueError, match="shift must be a floating"):
        _ops._affine_cuda(x, scale, bias, shift[:2], *args)
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 0)  # another device current
    _ops._affine_cuda(x, scale, bias, shift, *args)
    assert log[-1] == "checked path"
    backend.bind_affine = lambda *a: None  # a signature that converts: never bound
    log.clear()
    for _ in range(2):
        _ops._affine_cuda(x, scale, bias, shift, [2, 1, 1], [0, 0, 0], False)
    assert log == ["checked path", "checked path"]


def test_plain_forward_memo_binds_once_per_signature(monkeypatch):
    """Without a GPU, against a stand-in backend: an eager rubiks_shift3d call with
    nothing to record runs the checked path once per signature, then its bound call;
    calls autograd records, other arguments and another current device do not take it."""
    from types import SimpleNamespace

    from rubiks_shift import _ops, functional

    log = []
    backend = SimpleNamespace(
        BOUND={}, bind_forward=lambda *a: lambda x, s: log.append("bound") or x.clone()
    )
    monkeypatch.setattr(_ops, "_cuda_backend", lambda: backend)
    monkeypatch.setattr(functional, "_cuda_backend", lambda: backend)
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: -1)  # CPU tensors: device -1
    x, shift = torch.randn(1, 2, 3, 4, 4), torch.rand(3, 3) - 0.5
    expected = rubiks_shift3d(x, shift)  # a CPU tensor: never a key
    assert not backend.BOUND
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
    with torch.no_grad():
        assert torch.equal(rubiks_shift3d(x, shift), expected)  # checked path, binds
        assert len(backend.BOUND) == 1 and log == []
        rubiks_shift3d(x, shift)
        assert log == ["bound"]
        rubiks_shift3d(x, shift, normalize_t_factor=2.0)  # another signature
        assert len(backend.BOUND) == 2 and log == ["bound"]
        with pytest.raises(TypeError, match="stride"):
            rubiks_shift3d(x, shift, stride=(True, 1, 1))  # no key: checked
        with pytest.raises(ValueError, match="normalize_t_factor"):
            rubiks_shift3d(x, shift, normalize_t_factor=float("nan"))
        monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 0)  # another device current
        rubiks_shift3d(x, shift)
        assert log == ["bound"]
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: -1)
    shift.requires_grad_()
    y = rubiks_shift3d(x, shift)  # recorded: the checked path
    assert y.requires_grad and log == ["bound"]


def test_call_and_bind_refuses_other_ops():
    with pytest.raises(TypeError, match="call_and_bind: op must be one of"):
        call_and_bind(torch.relu, torch.zeros(1))


def test_call_and_bind_has_no_bound_form_off_cuda():
    """On the CPU (no bound launches) it is the op's call and None."""
    x, shift = torch.randn(1, 2, 3, 4, 4), torch.rand(3, 3) - 0.5
    scale, bias = torch.rand(3) + 0.5, torch.randn(3)
    with torch.no_grad():
        for op, args in (
            (rubiks_shift3d, (x, shift)),
            (affine_relu_shift3d, (x, scale, bias, shift)),
            (affine_relu, (x, scale, bias)),
        ):
            y, again = call_and_bind(op, *args)
            assert again is None and torch.equal(y, op(*args))


def test_call_and_bind_returns_the_bound_call(monkeypatch):
    """Without a GPU, against a stand-in backend: the call binds its signature as a
    plain call does and returns that bound call, which later calls with other tensors
    of the signature launch; another current device is made current around it."""
    from types import SimpleNamespace

    from rubiks_shift import _ops, functional, fused

    log = []
    backend = SimpleNamespace(
        BOUND={},
        bound_generation=0,
        bind_affine=lambda *a: lambda x, s, b, sh: log.append(("bound", x)) or x + 1,
    )
    for module in (_ops, fused, functional):
        monkeypatch.setattr(module, "_cuda_backend", lambda: backend)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
    devices, current = [], [-1]  # CPU tensors: device -1
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: current[0])
    x, scale, bias = torch.randn(1, 2, 3, 4, 4), torch.ones(3), torch.zeros(3)
    shift = torch.zeros(3, 3)
    with torch.no_grad():
        y, again = call_and_bind(affine_relu_shift3d, x, scale, bias, shift, stride=1)
        # the op's call (on the CPU kernels: x's device type), which binds its signature
        assert torch.equal(y, x.relu()) and len(backend.BOUND) == 1 and log == []
        x2 = torch.randn(1, 2, 3, 4, 4)
        assert torch.equal(again(x2, scale, bias, shift), x2 + 1) and log[-1][1] is x2
        current[0] = 1  # another device current
        monkeypatch.setattr(torch.cuda, "device", lambda i: devices.append(i) or nullcontext())
        again(x2, scale, bias, shift)
        assert devices == [-1] and len(log) == 2
        current[0] = -1
        backend.BOUND.clear()  # a new tuning (use_tuning): the op's own call from now on
        backend.bound_generation += 1
        assert torch.equal(again(x2, scale, bias, shift), x2.relu()) and len(log) == 2
    with torch.inference_mode(False):
        _, none = call_and_bind(rubiks_shift3d, x, shift.clone().requires_grad_())
    assert none is None  # autograd records it: no bound form


@requires_cuda
@pytest.mark.parametrize("shape,dtype,major,quantize", CASES)
def test_call_and_bind_repeats_the_op(bound, shape, dtype, major, quantize):
    """On the GPU: each op's bound call on new tensors of the signature equals the op."""
    x, scale, bias, shift, frames = _tensors(20, shape, dtype, major)
    x2, scale2, bias2, shift2, frames2 = _tensors(21, shape, dtype, major)
    calls = [
        (rubiks_shift3d, (x, shift), (x2, shift2), {"quantize": quantize}),
        (affine_relu_shift3d, (x, scale, bias, shift), (x2, scale2, bias2, shift2),
         {"quantize": quantize}),
        (affine_relu, (x, scale, bias, frames), (x2, scale2, bias2, frames2), {}),
        (affine_relu, (x, scale, bias, None), (x2, scale2, bias2, None), {}),
    ]  # fmt: skip
    with torch.no_grad():
        for op, args, args2, kwargs in calls:
            bound.clear()
            y, again = call_and_bind(op, *args, **kwargs)
            assert again is not None and torch.equal(y, op(*args, **kwargs))
            bound.clear()  # the op's checked path below
            expected = op(*args2, **kwargs)
            got = again(*args2)
            assert got.stride() == expected.stride() and torch.equal(got, expected)
