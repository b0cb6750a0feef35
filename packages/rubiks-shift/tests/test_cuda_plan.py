"""The CUDA launch plans without a GPU: which walk a gather takes, rows and frames per task,
task order and grid caps."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba.cuda", reason="numba-cuda (the 'cuda' extra) not installed")

from rubiks_shift import _cuda, _cuda_launch, _cuda_plan
from rubiks_shift._cuda_tuning import TUNING, Tuning

FRAME_ROWS = TUNING.frame_walk_rows


def _step(
    src, dst, stride=(1, 1, 1), quantize=False, adjoint=False, storage="float32", walk="rows"
):
    """The gather launch; the row walk unless ``walk`` says otherwise."""
    tuning = replace(TUNING, stride_one_walk=walk, integer_shift=False)
    (step,) = _cuda_plan.gather_plan(
        src, dst, stride, (0, 0, 0), quantize, adjoint, storage, tuning
    )
    return step


def _layout(step):
    """(frames inner, waves, rows, tasks) of a gather step, read from its scalars."""
    scalars = step.scalars
    return bool(scalars.frames_inner), step.waves, scalars.rows, scalars.tasks


@settings(max_examples=300, deadline=None)
@given(
    planes=st.integers(1, 1 << 16),
    rows=st.integers(1, 600),
    width=st.integers(1, 600),
    row_stride=st.integers(1, 4),
    adjoint=st.booleans(),
    group=st.sampled_from([1, 4, 8, 16]),
)
def test_task_rows_stay_in_range(planes, rows, width, row_stride, adjoint, group):
    tuning = replace(TUNING, row_walk_group=group)
    got = _cuda_plan.task_rows(planes, rows, width, row_stride, adjoint, tuning)
    assert 1 <= got <= rows
    again = _cuda_plan.task_rows_per_thread(planes, rows, width, tuning)
    assert 1 <= again <= rows


def test_float32_takes_the_swept_layout():
    frames, waves, rows, tasks = _layout(_step((8, 8, 72, 56, 56), (8, 8, 72, 56, 56)))
    assert (frames, waves, rows) == (True, TUNING.row_walk_waves, 16)
    assert tasks == 8 * 8 * 72 * (56 // 16 + 1) * 56


def test_narrow_rows_keep_planes_in_memory_order():
    frames, waves, rows, _ = _layout(_step((8, 8, 576, 7, 7), (8, 8, 576, 7, 7)))
    assert (frames, waves, rows) == (False, TUNING.row_walk_waves, 7)


def test_strided_walks_get_their_rows():
    src, dst = (8, 8, 72, 112, 112), (8, 8, 72, 56, 56)
    assert _layout(_step(src, dst, (1, 2, 2)))[2] == 8  # the generic strided walk
    assert _layout(_step(dst, src, (1, 2, 2), adjoint=True))[2] == 112  # adjoint, stride 2


@pytest.mark.parametrize(
    "storage,quantize", [("bfloat16", False), ("float16", False), ("float32", True)]
)
def test_unswept_cases_keep_one_task_per_thread(storage, quantize):
    shape = (16, 8, 256, 56, 56)
    frames, waves, rows, _ = _layout(_step(shape, shape, quantize=quantize, storage=storage))
    assert (frames, waves) == (False, 0)
    assert rows == _cuda_plan.task_rows_per_thread(16 * 8 * 256, 56, 56)


def test_small_problems_split_columns_to_fill_the_gpu():
    one_clip = (1, 8, 72, 56, 56)
    _, _, rows, tasks = _layout(_step(one_clip, one_clip))
    assert rows == 8  # 16-row tasks would leave 129k tasks, under row_walk_min_tasks
    assert tasks == 576 * 7 * 56


def test_grid_cap_applies_to_grid_stride_steps_only(monkeypatch):
    monkeypatch.setattr(_cuda_launch, "_resident_blocks", lambda handle, threads, index: 660)
    step = _step((8, 8, 72, 56, 56), (8, 8, 72, 56, 56))
    assert step.grid[0] > 660
    assert _cuda_launch._launch_grid(step, 0, 0) == (660 * step.waves, 1, 1)
    per_task = step._replace(waves=0)
    assert _cuda_launch._launch_grid(per_task, 0, 0) == step.grid


def test_stride_one_forms_take_the_frame_walk():
    shape = (8, 8, 72, 56, 56)
    for adjoint in (False, True):
        step = _step(shape, shape, adjoint=adjoint, walk="frames")
        assert step.name == "gather_frames"
        frames, rows = step.scalars.frames_per_task, step.scalars.rows
        # 8 * 72 * 7 * 56 tasks: above frame_walk_min_tasks
        assert (frames, rows) == (8, FRAME_ROWS)
        assert step.scalars.tasks == 8 * 72 * 1 * 7 * 56
    # a column stride keeps it; a row or temporal stride, or one-column planes, do not
    assert _step((8, 8, 72, 56, 112), shape, (1, 1, 2), walk="frames").name == "gather_frames"
    assert _step((8, 8, 72, 112, 112), shape, (1, 2, 2), walk="frames").name == "gather"
    assert _step((8, 16, 72, 56, 56), shape, (2, 1, 1), walk="frames").name == "gather"
    one_column = (2, 8, 4, 16, 1)
    assert _step(one_column, one_column, walk="frames").name == "gather_narrow"


@pytest.mark.parametrize(
    "shape,storage,quantize,walk",
    [
        ((8, 8, 144, 28, 28), "float32", False, "gather"),  # float32, 28² to 56²: rows
        ((8, 8, 72, 56, 56), "float32", False, "gather"),
        ((8, 8, 72, 112, 112), "float32", False, "gather_frames"),
        ((8, 8, 288, 14, 14), "float32", False, "gather_pixels"),  # up to 14²: pixels
        ((8, 8, 576, 7, 7), "float32", False, "gather_pixels"),
        ((8, 8, 576, 7, 7), "bfloat16", False, "gather_pixels"),  # 16-bit, up to 56²
        ((8, 8, 144, 28, 28), "bfloat16", False, "gather_pixels"),
        ((8, 8, 72, 56, 56), "float16", False, "gather_pixels"),
        ((8, 8, 72, 112, 112), "bfloat16", False, "gather_frames"),
        ((64, 1, 288, 14, 14), "bfloat16", False, "gather"),  # one-frame clips: rows
        ((64, 1, 72, 112, 112), "float32", False, "gather"),
        ((8, 8, 144, 28, 28), "bfloat16", True, "shift_integer"),  # quantized: one pass
        ((8, 8, 576, 7, 7), "float32", True, "shift_integer"),
        ((8, 8, 72, 56, 56), "bfloat16", True, "shift_integer"),
        ((64, 1, 72, 56, 56), "float32", True, "shift_integer"),
    ],
)
def test_affine_gathers_take_the_walk_that_was_faster(shape, storage, quantize, walk):
    """The shift with its prologue: the pixel walk on multi-frame planes up to 14² (56²
    in 16-bit storage; interpolated), the row walk on float32 planes of 28² to 56² and on
    one-frame clips, the elementwise pass where quantized; the plain forward and the
    adjoint keep the frame walk where interpolated."""
    args = (shape, shape, (1, 1, 1), (0, 0, 0), quantize)
    (step,) = _cuda_plan.gather_plan(*args, False, storage, affine=True)
    assert step.name == walk
    for adjoint in (False, True):
        (plain,) = _cuda_plan.gather_plan(*args, adjoint, storage)
        assert plain.name == ("shift_integer" if quantize else "gather_frames")
    off = replace(
        TUNING,
        float32_affine_rows=(0, 0),
        one_frame_affine_rows=False,
        quantized_affine_rows=0,
        integer_shift=False,
        pixel_walk_affine_plane=0,
        pixel_walk_affine_plane_16bit=0,
    )
    (step,) = _cuda_plan.gather_plan(*args, False, storage, off, affine=True)
    assert step.name == "gather_frames"
    key = (torch.Size(shape), getattr(torch, storage), torch.float32, (1, 1, 1), (0, 0, 0))
    (launched,) = _cuda._affine_plan((*key, quantize, False)).steps
    assert launched.name == walk + "_affine"


@pytest.mark.parametrize(
    "shape,walk",
    [((8, 8, 144, 28, 28), "gather"), ((8, 8, 72, 56, 56), "gather_frames")],
)
def test_quantized_gathers_without_the_elementwise_pass(shape, walk):
    """With ``integer_shift`` off a quantized affine gather takes the row walk on planes
    up to 28², the frame walk above; strided or padded, quantized shifts always gather."""
    args = (shape, shape, (1, 1, 1), (0, 0, 0), True, False, "bfloat16")
    off = replace(TUNING, integer_shift=False)
    assert _cuda_plan.gather_plan(*args, off, affine=True)[0].name == walk
    strided = (shape[0], shape[1], shape[2], shape[3] // 2, shape[4] // 2)
    (step,) = _cuda_plan.gather_plan(shape, strided, (1, 2, 2), (0, 0, 0), True, False)
    assert step.name == "gather"
    padded = (shape[0], shape[1] + 2, *shape[2:])
    (step,) = _cuda_plan.gather_plan(shape, padded, (1, 1, 1), (1, 0, 0), True, False)
    assert step.name != "shift_integer"


@pytest.mark.parametrize("channel_major", [False, True])
def test_integer_shift_tasks_are_pixels_through_groups_of_slabs(channel_major):
    """A task is one pixel of one channel through ``prologue_per_thread`` slabs (the last
    group short): every (channel, group, pixel) once, a thread each; slabs one plane
    apart channel-major, C planes contiguous. Clips whose offsets pass int32 gather."""
    shape = (2, 9, 5, 7, 9)  # 18 slabs: groups of 8, 8 and 2 in float32
    step = _cuda_plan.integer_shift_plan(shape, "float32", False, channel_major)
    sc = step.scalars
    assert _cuda_plan.prologue_per_thread("float32") == 8
    assert (sc.per_channel, sc.tasks, sc.S) == (3 * 63, 5 * 3 * 63, 18)
    assert step.grid[0] * step.block[0] >= sc.tasks > (step.grid[0] - 1) * step.block[0]
    strides = (18 * 63, 63) if channel_major else (63, 5 * 63)
    assert (sc.chan_stride, sc.slab_stride) == strides
    big = (1, 4, 1, 2**15, 2**14)
    assert not _cuda_plan.integer_shift_applies(big, (1, 1, 1), (0, 0, 0), "float32")
    (step,) = _cuda_plan.gather_plan(big, big, (1, 1, 1), (0, 0, 0), True, False)
    assert step.name == "gather_frames"


def test_small_problems_split_frames_then_rows():
    # 8 * 576 * 7 = 32k tasks with every frame, under frame_walk_min_tasks: two chunks of 4
    assert _cuda_plan.frame_walk_layout(8, 576, 8, 7, 7) == (4, 7)
    assert _cuda_plan.frame_walk_layout(1, 1, 4, 3, 3) == (1, 1)  # tiny: every split taken


@settings(max_examples=300, deadline=None)
@given(
    batch=st.integers(1, 64),
    channels=st.integers(1, 1024),
    t=st.integers(1, 64),
    h=st.integers(1, 600),
    w=st.integers(1, 600),
)
def test_frame_layout_stays_in_range(batch, channels, t, h, w):
    frames, rows = _cuda_plan.frame_walk_layout(batch, channels, t, h, w)
    assert 1 <= frames <= t
    assert 1 <= rows <= min(h, FRAME_ROWS)


def test_frame_walk_refuses_rows_above_its_bound():
    shape = (1, 2, 2, 32, 8)
    with pytest.raises(ValueError, match="at most"):
        _cuda_plan.gather_plan(
            shape, shape, (1, 1, 1), (0, 0, 0), False, False, "float32", rows=FRAME_ROWS + 1
        )


def test_make_current_switches_only_when_another_device_is_current(monkeypatch):
    """The forward and backward make the tensors' device current only where it is not,
    and report the device to restore (stand-ins for the runtime calls: no GPU needed)."""
    switched = []
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 1, raising=False)
    monkeypatch.setattr(torch.cuda, "set_device", switched.append)
    assert _cuda._make_current(-1) == -1  # CPU tensors (the simulator): nothing to do
    assert _cuda._make_current(1) == -1  # already current
    assert switched == []
    assert _cuda._make_current(0) == 1  # switched to 0, 1 to restore
    assert switched == [0]


def test_tuning_is_validated_and_frozen():
    with pytest.raises(ValueError, match=r"Tuning.row_walk_order must be 'auto', 'frames'"):
        Tuning(row_walk_order="frame")  # a typo is refused, not another order
    with pytest.raises(ValueError, match=r"Tuning.grad_shift_threads must be a power of two"):
        Tuning(grad_shift_threads=192)
    with pytest.raises(ValueError, match=r"Tuning.frame_walk_registers must be None"):
        Tuning(frame_walk_registers=0)
    with pytest.raises(ValueError, match=r"Tuning.row_walk_waves must be an integer >= 0"):
        Tuning(row_walk_waves=True)
    with pytest.raises(ValueError, match=r"Tuning.float32_affine_rows must be a \(smallest"):
        Tuning(float32_affine_rows=[784, 3136])  # a list: the tuning must stay hashable
    with pytest.raises(ValueError, match=r"Tuning.pixel_walk_rows must be 1 or 2"):
        Tuning(pixel_walk_rows=3)
    with pytest.raises(ValueError, match=r"batch_norm_wide_threads must be at least"):
        Tuning(batch_norm_threads=512, batch_norm_wide_threads=256)
    with pytest.raises(AttributeError):
        TUNING.row_walk_waves = 0  # frozen
    assert set(TUNING.kernel_values()) == {
        "row_walk_registers",
        "row_walk_group",
        "frame_walk_rows",
        "frame_walk_registers",
        "pixel_walk_rows",
        "pixel_walk_frames",
        "pixel_walk_cols",
        "pixel_walk_registers",
        "pixel_walk_cols_16bit",
        "pixel_walk_registers_16bit",
        "grad_shift_registers",
        "grad_shift_group",
        "grad_shift_threads",
        "finalize_threads",
        "prologue_bytes",
        "batch_norm_threads",
        "batch_norm_wide_threads",
        "batch_norm_channel_per_thread",
        "batch_norm_channel_registers",
        "stem_pixels",
        "stem_group",
        "stem_registers",
    }


def test_use_tuning_changes_launches_not_kernels():
    shape = (1, 2, 3, 4, 5)
    key = (shape, torch.float32, torch.float32, (1, 2, 1), (0, 0, 0), False, False)
    frames_inner = replace(TUNING, row_walk_order="frames")
    with _cuda.tuned(frames_inner) as previous:
        assert previous == TUNING
        assert _cuda._forward_plan(key).steps[0].scalars.frames_inner == 1
        with pytest.raises(ValueError, match="compile-time values: \\['frame_walk_rows'\\]"):
            _cuda.use_tuning(replace(TUNING, frame_walk_rows=4))
    assert _cuda._forward_plan(key).steps[0].scalars.frames_inner == 0
    with pytest.raises(KeyError), _cuda.tuned(frames_inner):  # restored after an error too
        raise KeyError
    assert _cuda._tuning == TUNING


@pytest.mark.parametrize(
    "shape,major,rows,inner,frame_stride",
    [
        ((2, 3, 4, 5, 6), False, 24, 30, 120),
        ((2, 3, 4, 5, 6), True, 4, 180, 30),
        ((1, 1, 1, 1, 1), True, 1, 1, 1),
    ],
)
@pytest.mark.parametrize("shifted", [False, True])
def test_affine_relu_plan_covers_every_row(shape, major, rows, inner, frame_stride, shifted):
    """One block per (row, chunk of threads x values per thread) of the rows of one
    channel: (N·T·C, H·W) contiguous, (C, N·T·H·W) channel-major; a frame is H·W values
    on channel-major, C·H·W contiguous."""
    from rubiks_shift._cuda_plan import affine_relu_plan

    tuning = replace(TUNING, prologue_threads=32)
    step = affine_relu_plan(shape, "bfloat16", major, shifted, tuning)
    span = 32 * TUNING.prologue_bytes // 2
    assert step.name == "affine_relu" and step.block == (32, 1, 1)
    assert (step.scalars.inner, step.scalars.C) == (inner, shape[2])
    assert (step.scalars.frame_stride, step.scalars.frames) == (frame_stride, shape[1])
    assert step.scalars.shifted == int(shifted)
    plane = shape[3] * shape[4]
    assert step.scalars.plane == plane
    assert step.scalars.segment == (shape[1] * plane if major else plane)
    assert step.scalars.segment_step == 32 % step.scalars.segment
    assert step.scalars.inv_chunks == 1.0 / step.scalars.chunks
    assert step.grid == (rows * -(-inner // span), 1, 1)
    assert step.scalars.chunks * span >= inner > (step.scalars.chunks - 1) * span


@pytest.mark.parametrize("major", [False, True])
def test_affine_relu_plan_pairs_bfloat16_on_even_planes(major):
    """bfloat16 clips with an even H·W on 4-byte boundaries move words of two values:
    every extent halves, each thread takes half as many units (the same bytes); odd
    planes, unaligned tensors, other dtypes and ``prologue_pairs=False`` do not."""
    from rubiks_shift._cuda_plan import affine_relu_plan

    tuning = replace(TUNING, prologue_threads=32)
    shape = (2, 3, 4, 5, 6)
    values = affine_relu_plan(shape, "bfloat16", major, True, tuning, word_aligned=False)
    pairs = affine_relu_plan(shape, "bfloat16", major, True, tuning, word_aligned=True)
    assert (values.scalars.paired, pairs.scalars.paired) == (0, 1)
    for name in ("inner", "plane", "segment", "frame_stride"):
        assert getattr(pairs.scalars, name) * 2 == getattr(values.scalars, name)
    assert pairs.scalars.segment_step == 32 % pairs.scalars.segment
    span = 32 * TUNING.prologue_bytes // 4  # words per block
    assert pairs.scalars.chunks * span >= pairs.scalars.inner > (pairs.scalars.chunks - 1) * span
    assert pairs.grid[0] == values.grid[0] // values.scalars.chunks * pairs.scalars.chunks
    unpaired = [
        affine_relu_plan((2, 3, 4, 5, 5), "bfloat16", major, True, tuning, word_aligned=True),
        affine_relu_plan(shape, "float16", major, True, tuning, word_aligned=True),
        affine_relu_plan(shape, "float32", major, True, tuning, word_aligned=True),
        affine_relu_plan(
            shape, "bfloat16", major, True, replace(tuning, prologue_pairs=False), word_aligned=True
        ),
    ]
    assert [step.scalars.paired for step in unpaired] == [0, 0, 0, 0]


@pytest.mark.parametrize("storage", ["bfloat16", "float32"])
def test_batch_norm_pairs_on_even_planes(storage):
    """Training batch norm's kernels move bfloat16 and float32 as words of two values
    where the plane is even and the tensors aligned: every extent of the elementwise
    pass, the spans' sums and the one-block form halves (each block and round covers the
    same bytes), the per-channel kernels keep counting values; odd planes, unaligned
    tensors, other dtypes and ``batch_norm_pairs=False`` take single values."""
    from rubiks_shift._cuda_plan import batch_norm_normalize_step, batch_norm_plan

    tuning = replace(TUNING, prologue_threads=32)
    shape = (5, 3, 14)
    values = batch_norm_normalize_step(shape, storage, tuning, word_aligned=False)
    pairs = batch_norm_normalize_step(shape, storage, tuning, word_aligned=True)
    assert (values.scalars.paired, pairs.scalars.paired) == (0, 1)
    assert (pairs.scalars.total * 2, pairs.scalars.P * 2) == (values.scalars.total, 14)
    assert (pairs.scalars.inv_P, pairs.scalars.step_rows, pairs.scalars.step_pos) == (1 / 7, 4, 4)
    value_bytes = 2 if storage == "bfloat16" else 4
    words = 32 * TUNING.prologue_bytes // (2 * value_bytes)  # words per block
    assert pairs.grid == (-(-5 * 3 * 7 // words), 1, 1)
    unpaired = [
        batch_norm_normalize_step((5, 3, 15), storage, tuning, word_aligned=True),
        batch_norm_normalize_step(shape, "float16", tuning, word_aligned=True),
        batch_norm_normalize_step(shape, "float64", tuning, word_aligned=True),
        batch_norm_normalize_step(
            shape, storage, replace(tuning, batch_norm_pairs=False), word_aligned=True
        ),
    ]
    assert [step.scalars.paired for step in unpaired] == [0, 0, 0, 0]

    spans = replace(tuning, batch_norm_channel_values=0, batch_norm_threads=32)
    plain = batch_norm_plan((50, 3, 14), storage, 1e-5, 0.1, spans)
    paired = batch_norm_plan((50, 3, 14), storage, 1e-5, 0.1, spans, word_aligned=True)
    assert (paired.normalize.scalars.paired, paired.grad_input.name) == (1, "bn_grad_input")
    assert paired.grad_input.scalars == paired.normalize.scalars
    ours, theirs = paired.partial.scalars, plain.partial.scalars
    assert (ours.paired, theirs.paired, ours.grads) == (1, 0, 0)
    assert (ours.P, ours.total, ours.step_rows, ours.step_pos) == (7, 350, 4, 4)
    assert ours.span * (ours.parts - 1) < ours.total <= ours.span * ours.parts
    assert paired.parts == ours.parts and paired.grad_partial.scalars.grads == 1
    assert paired.stats.scalars == plain.stats.scalars._replace(parts=ours.parts)
    assert paired.stats.scalars.count == 700.0

    one_block = replace(tuning, batch_norm_channel_values=2**40)
    plain = batch_norm_plan(shape, storage, 1e-5, 0.1, one_block).channel_forward.scalars
    ours = batch_norm_plan(shape, storage, 1e-5, 0.1, one_block, True).channel_backward.scalars
    assert (ours.paired, plain.paired) == (1, 0)
    assert (ours.P, ours.total, ours.step_rows, ours.step_pos) == (7, 35, 36, 4)
    assert (ours.count, ours.unbias) == (plain.count, plain.unbias) == (70.0, 70 / 69)
    odd = batch_norm_plan((5, 3, 15), storage, 1e-5, 0.1, one_block, True)
    assert odd.channel_forward.scalars.paired == 0


def test_batch_norm_pairs_must_be_a_bool():
    with pytest.raises(ValueError, match="batch_norm_pairs must be True or False"):
        replace(TUNING, batch_norm_pairs=1)


def test_prologue_pairs_must_be_a_bool():
    with pytest.raises(ValueError, match="prologue_pairs must be True or False"):
        replace(TUNING, prologue_pairs=1)


@pytest.mark.parametrize(
    "shape,threads",
    [
        ((64, 288, 196), TUNING.batch_norm_threads),  # Large's 14²: 12,544 values a channel
        ((1, 576, 3136), TUNING.batch_norm_threads),  # 7², a channel-major clip's rows
        ((64, 144, 784), TUNING.batch_norm_wide_threads),  # 28²: 50,176 values
        ((64, 72, 3136), None),  # 56²: 200,704 values, spans of several blocks
    ],
)
def test_batch_norm_plan_takes_one_block_per_small_channel(shape, threads):
    plan = _cuda_plan.batch_norm_plan(shape, "bfloat16", 1e-5, 0.1)
    batch, channels, plane = shape
    assert (plan.channel_forward is not None) == (threads is not None)
    if threads is not None:
        assert plan.parts == 0 and plan.partial is None and plan.normalize is None
        for step in (plan.channel_forward, plan.channel_backward):
            assert step.grid == (channels, 1, 1)
            assert step.block == (threads, 1, 1)
            s = step.scalars
            assert s.total == batch * plane and s.step_rows * plane + s.step_pos == step.block[0]
    else:
        assert plan.channel_backward is None and plan.parts >= 1
        assert plan.parts * plan.partial.scalars.span >= batch * plane
    never = replace(TUNING, batch_norm_channel_values=0)
    assert _cuda_plan.batch_norm_plan(shape, "bfloat16", 1e-5, 0.1, never).channel_forward is None


def test_task_overrides_ask_for_the_frame_walk_not_the_pixel_walk():
    """A sweep's rows or frames per task are the frame walk's; the pixel walk's tasks are
    compile-time values, so an override never lands on it unnoticed."""
    shape = (8, 8, 288, 14, 14)
    args = (shape, shape, (1, 1, 1), (0, 0, 0), False, False, "bfloat16")
    (default,) = _cuda_plan.gather_plan(*args, affine=True)
    assert default.name == "gather_pixels"
    assert default.scalars.tasks == 8 * 288 * 2 * 7 * 7  # 4 frames x 2 rows x 2 columns
    (swept,) = _cuda_plan.gather_plan(*args, rows=4, affine=True)
    assert swept.name == "gather_frames" and swept.scalars.rows == 4
    (swept,) = _cuda_plan.gather_plan(*args, frames=2, affine=True)
    assert swept.name == "gather_frames" and swept.scalars.frames_per_task == 2
