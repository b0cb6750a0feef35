"""The tuning of the CUDA backend: one frozen, validated object (no Numba, no torch).

``TUNING`` holds the defaults every kernel is built with and every launch is planned
with. The kernels (``_cuda_kernels.Kernels``) take their compile-time values from it, the
launch plans (``_cuda_plan``) their block sizes and layouts, and the on-disk kernel cache
keys its entries on its kernel-defining fields (:meth:`Tuning.kernel_values`), so a
process that loads every kernel from the cache never imports Numba. Benchmarks and tests
that try other values pass a ``dataclasses.replace(TUNING, ...)`` to the kernel registry
and the plans; nothing in the environment changes a kernel or a launch.

Each value was chosen on an H200 on 2026-12-01 unless marked H100; the figures are
forward ms at (8, 8, 72, 56, 56) float32 unless stated (``benchmarks/sweep_kernels.py``;
``BENCHMARKS.md``, "Tuning defaults").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

_KERNEL = {"kernel": True}  # field metadata: the value is compiled into a kernel


def _kernel(default):
    """A field whose value is compiled into a kernel (part of the kernel cache's key)."""
    return field(default=default, metadata=_KERNEL)


@dataclass(frozen=True)
class Tuning:
    """Compile-time values of the CUDA kernels and the layouts of their launches.

    Row walk: the gathers ``gather`` / ``gather_narrow`` (every stride but temporal and
    row stride 1). Frame walk: ``gather_frames`` (temporal and row stride 1), except
    where the fused form's affine gathers take the row walk (``*_affine_rows``) or the
    pixel walk (``gather_pixels_affine``, ``pixel_walk_*``). Shift
    gradient: ``grad_shift`` and ``finalize``. The prologue alone: ``affine_relu``. Training
    batch norm: ``bn_partial`` and its per-channel and elementwise kernels. The stem:
    ``stem``. Fields
    made with ``_kernel`` are compiled into a kernel; the others only shape launches."""

    # no spills, 5 blocks of 256 threads per SM; the best of 48 / 64 / 96, within 2 %
    row_walk_registers: int | None = _kernel(48)
    # rows per unrolled row group: the group's loads are all issued before its stores
    row_walk_group: int = _kernel(8)
    # threads per block (5 resident at 48 registers); not swept since
    row_walk_threads: int = 256
    # fewest tasks before rows per task are halved (keeps the GPU filled)
    row_walk_min_tasks: int = 1 << 18
    # grid capped at this many waves of resident blocks, threads looping over tasks (0:
    # one thread per task): 6-7 % at 56 x 56, no partial last wave
    row_walk_waves: int = 1
    # task order: "auto" (a channel's frames side by side where tuned and a row is at
    # least frames_inner_min_width wide, else planes in memory order), "frames", "planes"
    row_walk_order: str = "auto"
    # frames side by side from this row width: +3.5 % at 256 channels, +8 % strided;
    # narrower planes keep memory order (frames side by side loses 6 % at 7 x 7)
    frames_inner_min_width: int = 32
    # tasks to aim for with one thread per task, for the layouts not swept (dtypes other
    # than float32, quantize): about two waves of H100-sized residency (untuned)
    one_task_per_thread_tasks: int = 1 << 19
    # the walk of the stride-1 forms (temporal and row stride 1, W > 1): "frames" reads
    # each source frame once; "rows" takes the row walk there too
    stride_one_walk: str = "frames"
    # rows per frame-walk task, a compile-time bound (each pass keeps R + 1 rows of loads
    # in flight and 2R values in registers): 0.0401; 12 rows at 72 registers 0.0437, 16
    # at 80 0.0436
    frame_walk_rows: int = _kernel(8)
    # 0.0401 at 72, 0.0407 at 64 (the driver's JIT spilled 8 B), 0.0455 at 56; a cap of
    # 80 compiled to the same 72-register binary
    frame_walk_registers: int | None = _kernel(72)
    # 7 resident blocks of 128 per SM against 3 of 256 at 72 registers, a finer last
    # wave: 0.0361 against 0.0404
    frame_walk_threads: int = 128
    # fewest tasks before frames, then rows, are split: at (8, 8, 576, 7, 7) 8 frames per
    # task (32k tasks) 0.0112, 4 (65k) 0.0104, 1 (258k) 0.0187
    frame_walk_min_tasks: int = 1 << 15
    # the fused form's affine gathers (``*_affine``: the shift with its batch norm + ReLU
    # prologue) over float32 planes of this many pixels (inclusive; (0, 0): none) take the
    # row walk (H200, 2026-12-04, graph replay, channel-major clips, µs per call, frame /
    # row walk: 72 channels at 56² 63.8 / 54.1, 144 at 28² 46.5 / 31.6; the frame walk
    # stays ahead at 112², 165.0 / 189.1, and at 7², 12.8 / 14.0; 14² 20.2 / 20.6)
    float32_affine_rows: tuple[int, int] = (784, 3136)
    # affine gathers over one-frame clips (a 2-D shift: no source frame is read twice)
    # take the row walk, every dtype (same call, bfloat16 at 14², 288 channels: 21.9 /
    # 16.5; at 112², 72 channels: 241.5 / 147.8); not quantized ones (not measured)
    one_frame_affine_rows: bool = True
    # quantized affine gathers that the elementwise pass below does not take (padded, or a
    # column stride) over planes of at most this many pixels take the row walk (0: none;
    # one tap per value: the walks give the same bits). Measured at stride 1: bfloat16 at 28²,
    # 144 channels, 31.6 / 22.3, at 14² 18.7 / 16.4, at 7² 12.2 / 9.3; float32 46.2 /
    # 31.7, 19.8 / 15.9, 11.9 / 10.7; the frame walk stays ahead at 56² (29.8 / 52.0)
    quantized_affine_rows: int = 784
    # quantized shifts at stride 1 without padding (forward, its affine form and grad_x)
    # run as the elementwise pass ``shift_integer`` (one read per value), not as a gather:
    # H100, 2026-12-05, graph replay, 8 clips x 8 frames, the hardened AQ's 2-D shift with
    # its prologue, channel-major, µs per call, the pass / the walk taken before: bfloat16
    # 28.3 / 54.8 at 56², 72 channels, 15.1 / 24.3 at 28², 8.5 / 16.6 at 14², 5.4 / 9.9 at
    # 7²; float32 41.7 / 70.4, 22.3 / 36.0, 9.0 / 16.8, 6.1 / 11.7
    integer_shift: bool = True
    # the fused form's interpolated affine gathers at stride 1 over clips of more than one
    # frame and planes of at most this many pixels take the pixel walk (0: none), which
    # gives the frame walk's values bit for bit; float32 and float64 storage here, 16-bit
    # storage below (H200, 2026-12-05, one row x 8 frames per task, bf16 / fp32,
    # channel-major, graph replay, µs per call, frame / pixel walk: 288 channels at 14²
    # 20.0 / 16.5 and 20.1 / 16.3, 576 at 7² 12.6 / 9.5 and 12.9 / 9.5; at 28² 31.5 /
    # 30.9, a tie, and 56² 50.4 / 60.2, slower)
    pixel_walk_affine_plane: int = 196
    # the same for 16-bit storage (bfloat16, float16), whose tasks take two columns: up to
    # 56² (H100, 2026-12-05, bf16, µs per call, the walk taken before / the pixel walk of
    # 2 x 2 x 4 tasks (rows x columns x frames) at 80 registers: 72 channels at 56² 53.5 /
    # 50.8, 144 at 28² 32.7 / 25.5, 288 at 14² 18.0 (2 x 1 x 4) / 16.8, 576 at 7² 11.5 /
    # 11.5)
    pixel_walk_affine_plane_16bit: int = 3136
    # destination rows and frames per pixel-walk task (each task's loads, (rows + 1) x
    # (cols + 1) taps per source frame of its frames + 1, all issued before any is used):
    # rows x frames 2 x 4 / 1 x 8 / 2 x 8 / 1 x 4 at 14², bf16 17.3 / 18.9 / 19.1 / 22.8,
    # fp32 17.3 / 20.7 / 19.6 / 24.1; at 7² bf16 11.0 / 11.2 / 12.2 / 12.4 (H100,
    # 2026-12-05)
    pixel_walk_rows: int = _kernel(2)
    pixel_walk_frames: int = _kernel(4)
    # destination columns per task (1 or 2: two share their middle column's taps) and the
    # register cap, float32 and float64 storage: one column, no cap (56 registers); two
    # columns took 93 registers and were slower (H100, 2026-12-05, fp32, µs per call, 1 /
    # 2 columns / 2 columns at 80 registers: 17.7 / 18.3 / 20.3 at 14², 11.1 / 12.2 / 14.1
    # at 7²)
    pixel_walk_cols: int = _kernel(1)
    pixel_walk_registers: int | None = _kernel(None)
    # 16-bit storage: two columns at 80 registers (117 uncapped); bf16 at 14² / 28² / 56²,
    # one column 18.0 / 33.2 / 67.5, two columns 17.9 / 29.0 / 67.5, two at 80 registers
    # 16.8 / 25.5 / 50.8 (the same call)
    pixel_walk_cols_16bit: int = _kernel(2)
    pixel_walk_registers_16bit: int | None = _kernel(80)
    # threads per block: 128 against 256, 16.5 against 17.3 µs at 14² (bf16, 1 x 8, H200)
    pixel_walk_threads: int = 128
    # 50 % occupancy (H100, 2026-11-23): 48 / 56 / 64 / 72 / 80 / 96 registers gave
    # 0.187 / 0.174 / 0.166 / 0.186 / 0.183 / 0.256 ms of shift gradient (another run:
    # 0.171 ms at 64 against 0.267 at 96)
    grad_shift_registers: int | None = _kernel(64)
    # rows per unrolled row group of the cell path: the best in its sweep at 64 registers
    grad_shift_group: int = _kernel(4)
    # threads per block, the width of the fixed shared-memory reduction tree (a power of
    # two): the same tree on every run, bit-identical shift gradients. 128: eight blocks
    # per SM at 64 registers, twice 256's blocks per channel, the grid of Large's 14² and
    # 28² layers 1,152 and 1,008 blocks instead of 576 (1.09 waves of 256 on 132 SMs);
    # bf16 channel-major 21.2 against 23.6 µs at 288 x 14², 29.1 against 35.0 at 144 x
    # 28² (H100, 2026-12-07, benchmarks/sweep_shift_grad.py)
    grad_shift_threads: int = _kernel(128)
    # whole-column tasks, two per thread: the best of its sweep (shift gradient 0.0589 ms)
    grad_shift_tasks_per_thread: int = 2
    # threads per block of the fixed-order cross-block sum (a power of two)
    finalize_threads: int = _kernel(128)
    # the prologue alone (``affine_relu``): bytes each thread loads (its values, one block
    # width apart, all loaded before any is stored: 16 bfloat16 or 8 float32 values)
    prologue_bytes: int = _kernel(32)
    # its threads per block
    prologue_threads: int = 128
    # bfloat16 values moved as 32-bit pairs where H * W is even and the tensors aligned
    # (one load instruction per two values; see BENCHMARKS.md, "The bn1 pass")
    prologue_pairs: bool = True
    # training batch norm: threads per block of the per-channel sums, the width of their
    # fixed reduction tree (a power of two); each thread loads ``prologue_bytes`` of
    # values per round, and grad_x's elementwise pass walks rows as ``affine_relu`` does
    batch_norm_threads: int = _kernel(256)
    # blocks the per-channel sums aim for in all (a channel's values are cut into
    # ceil(this / C) spans, at most one round of a block each at the least): about eight
    # resident blocks of 256 threads on each of an H200's 132 SMs
    batch_norm_blocks: int = 1056
    # a channel of at most this many values (B * H * W) is one block that does a whole
    # direction in one launch (sums, per-channel values, then the elementwise pass over
    # the channel again, from the cache): one launch per direction instead of three
    batch_norm_channel_values: int = 65536
    # such a block has ``batch_norm_threads`` where the channel has at most this many
    # values, else ``batch_norm_wide_threads``: at 64 images, 256 threads at 14² and 7²
    # (12,544 and 3,136 values), 512 at 28² (50,176: 57.4 against 66.2 µs for the spans
    # in bf16, 88.6 against 92.1 in fp32; H100, 2026-12-07, benchmarks/sweep_batch_norm.py)
    batch_norm_narrow_values: int = 16384
    # the one-block kernels' widest block, the size of their shared reduction arrays: they
    # read their block's width at run time, so one kernel serves both widths
    batch_norm_wide_threads: int = _kernel(512)
    # the one-block kernels' values per thread and round (at most the prologue's) and
    # register cap: 8 and 64 keep four blocks of 256 threads on an SM without spills
    # (bfloat16 at 16 values took 111 registers: two blocks per SM, 288 blocks at 14² in
    # 1.09 waves)
    batch_norm_channel_per_thread: int = _kernel(8)
    batch_norm_channel_registers: int | None = _kernel(64)
    # every training batch-norm kernel moves bfloat16 values as 32-bit words of two and
    # float32 values as 64-bit ones where H * W is even and the tensors aligned (one load
    # instruction and half the index arithmetic per two values), as ``prologue_pairs``
    # does for ``affine_relu``
    batch_norm_pairs: bool = True
    # the stem (``stem``, a 3x3 stride-2 convolution of 3-channel frames): output pixels
    # per thread (adjacent pixels share their overlapping input loads, and each weight
    # read from shared memory serves ``stem_pixels`` multiply-adds): µs per call for
    # 64 x 3 x 224² frames, 72 / 54 channels, bf16, graph replay (H200, 2026-12-05,
    # ``benchmarks/bench_stem_kernel.py --sweep``): 1 pixel 593 / 447, 2 pixels 324 / 242,
    # 4 pixels 213 / 156, cuDNN's NCHW convolution 305 / 206
    stem_pixels: int = _kernel(4)
    # output channels a block takes at most (its weights in shared memory); the plan
    # splits C into the fewest groups of equal size: 32 against 24 at 4 pixels, Tiny's
    # 54 channels 156 / 176 µs (2 groups of 27 against 3 of 18), Large's 72 equal
    stem_group: int = _kernel(32)
    stem_registers: int | None = _kernel(None)
    # threads per block: 128 against 64 / 256 at 4 pixels, 213 against 218 / 257 µs
    stem_threads: int = 128

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = _ALLOWED[f.name]
            if not allowed[0](value):
                raise ValueError(f"Tuning.{f.name} must be {allowed[1]}, got {value!r}")
        if self.batch_norm_wide_threads < self.batch_norm_threads:
            raise ValueError(
                "Tuning.batch_norm_wide_threads must be at least batch_norm_threads, got "
                f"{self.batch_norm_wide_threads} < {self.batch_norm_threads}"
            )

    def kernel_values(self) -> dict[str, object]:
        """The fields compiled into a kernel, by name (part of the kernel cache's key)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("kernel")
        }


def _integer(low: int, high: int | None = None):
    def check(value) -> bool:
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        return low <= value and (high is None or value <= high)

    return check


def _registers(value) -> bool:
    return value is None or _integer(16, 255)(value)


def _threads(value) -> bool:
    return _integer(32, 1024)(value) and value % 32 == 0


def _power_of_two_threads(value) -> bool:
    return _threads(value) and value & (value - 1) == 0


_REGISTERS = (_registers, "None (no cap) or a register cap from 16 to 255")
_THREADS = (_threads, "a multiple of 32 from 32 to 1024")
_TREE = (_power_of_two_threads, "a power of two from 32 to 1024")
_POSITIVE = (_integer(1), "an integer >= 1")
_ALLOWED = {
    "row_walk_registers": _REGISTERS,
    "row_walk_group": _POSITIVE,
    "row_walk_threads": _THREADS,
    "row_walk_min_tasks": _POSITIVE,
    "row_walk_waves": (_integer(0), "an integer >= 0 (0: one thread per task)"),
    "row_walk_order": (lambda v: v in ("auto", "frames", "planes"), "'auto', 'frames' or 'planes'"),
    "frames_inner_min_width": _POSITIVE,
    "one_task_per_thread_tasks": _POSITIVE,
    "stride_one_walk": (lambda v: v in ("frames", "rows"), "'frames' or 'rows'"),
    # bit j of a pass's 32-bit row masks stands for its row j <= R, and bit j + 1 of the
    # prologue's shifted copy (bit 31, the sign, left unused)
    "frame_walk_rows": (_integer(1, 29), "an integer from 1 to 29"),
    "frame_walk_registers": _REGISTERS,
    "frame_walk_threads": _THREADS,
    "frame_walk_min_tasks": _POSITIVE,
    "float32_affine_rows": (
        lambda v: isinstance(v, tuple) and len(v) == 2 and all(_integer(0)(i) for i in v),
        "a (smallest, largest) pair of plane sizes in pixels, each >= 0",
    ),
    "one_frame_affine_rows": (lambda v: isinstance(v, bool), "True or False"),
    "quantized_affine_rows": (_integer(0), "an integer >= 0 (0: none)"),
    "integer_shift": (lambda v: isinstance(v, bool), "True or False"),
    "pixel_walk_affine_plane": (_integer(0), "an integer >= 0 (0: none)"),
    "pixel_walk_affine_plane_16bit": (_integer(0), "an integer >= 0 (0: none)"),
    "pixel_walk_rows": (lambda v: v in (1, 2) and not isinstance(v, bool), "1 or 2"),
    "pixel_walk_frames": (_integer(1, 16), "an integer from 1 to 16"),
    "pixel_walk_cols": (lambda v: v in (1, 2) and not isinstance(v, bool), "1 or 2"),
    "pixel_walk_registers": _REGISTERS,
    "pixel_walk_cols_16bit": (lambda v: v in (1, 2) and not isinstance(v, bool), "1 or 2"),
    "pixel_walk_registers_16bit": _REGISTERS,
    "pixel_walk_threads": _THREADS,
    "grad_shift_registers": _REGISTERS,
    "grad_shift_group": _POSITIVE,
    "grad_shift_threads": _TREE,
    "grad_shift_tasks_per_thread": _POSITIVE,
    "finalize_threads": _TREE,
    "prologue_bytes": (_integer(8, 64), "an integer from 8 to 64 (32 values at most per thread)"),
    "prologue_threads": _THREADS,
    "prologue_pairs": (lambda v: isinstance(v, bool), "True or False"),
    "batch_norm_threads": _TREE,
    "batch_norm_blocks": _POSITIVE,
    "batch_norm_channel_values": (_integer(0), "an integer >= 0 (0: never one block)"),
    "batch_norm_narrow_values": (_integer(0), "an integer >= 0"),
    "batch_norm_wide_threads": _TREE,
    "batch_norm_channel_per_thread": (_integer(1, 32), "an integer from 1 to 32"),
    "batch_norm_channel_registers": _REGISTERS,
    "batch_norm_pairs": (lambda v: isinstance(v, bool), "True or False"),
    "stem_pixels": (_integer(1, 8), "an integer from 1 to 8"),
    "stem_group": (_integer(1, 64), "an integer from 1 to 64"),
    "stem_registers": _REGISTERS,
    "stem_threads": _THREADS,
}

TUNING = Tuning()


ELEMENT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


class PixelWalk(NamedTuple):
    """The pixel walk for one storage: the largest plane it takes (pixels), and its
    tasks' destination rows, frames and columns and its register cap."""

    plane: int
    rows: int
    frames: int
    cols: int
    registers: int | None


def pixel_walk(storage: str, tuning: Tuning = TUNING) -> PixelWalk:
    """The pixel walk of ``storage`` tensors under ``tuning``: 16-bit storage takes the
    ``pixel_walk_*_16bit`` fields, wider storage the others."""
    if ELEMENT_BYTES[storage] == 2:
        plane = tuning.pixel_walk_affine_plane_16bit
        cols, registers = tuning.pixel_walk_cols_16bit, tuning.pixel_walk_registers_16bit
    else:
        plane = tuning.pixel_walk_affine_plane
        cols, registers = tuning.pixel_walk_cols, tuning.pixel_walk_registers
    return PixelWalk(plane, tuning.pixel_walk_rows, tuning.pixel_walk_frames, cols, registers)


def prologue_per_thread(storage: str, tuning: Tuning = TUNING) -> int:
    """Values each thread of ``affine_relu`` takes for ``storage`` tensors."""
    return max(1, tuning.prologue_bytes // ELEMENT_BYTES[storage])
