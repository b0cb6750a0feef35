"""Small fakes and a local process-group launcher for tests (no real data or network).

:func:`run_local_group` runs ``fn(rank, *args)`` in ``world_size`` spawned processes that
share a gloo process group on loopback (127.0.0.1), as ``torchrun`` would set up.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.multiprocessing as mp
from torch import nn

__all__ = [
    "FakeSample",
    "FakeVideoDataset",
    "FakeVideoModel",
    "failing_rank_worker",
    "free_port",
    "run_local_group",
    "sleeping_worker",
]


@dataclass
class FakeSample:
    """Duck-typed ``rubiks_data.VideoSample``."""

    clip: torch.Tensor | None
    label: int
    video_id: str
    error: str | None = None


class FakeVideoDataset:
    """Deterministic random clips (V, T, 3, H, W) whose class is encoded in the pixels.

    Items listed in ``broken`` come back unreadable with a reason.
    """

    def __init__(
        self,
        n: int = 23,
        num_classes: int = 7,
        views: int = 2,
        frames: int = 4,
        size: int = 8,
        broken: tuple[int, ...] = (),
        seed: int = 0,
    ) -> None:
        self.n, self.num_classes, self.views = n, num_classes, views
        self.frames, self.size, self.broken, self.seed = frames, size, set(broken), seed

    def __len__(self) -> int:
        return self.n

    def label(self, i: int) -> int:
        return (i * 5 + 3) % self.num_classes

    def __getitem__(self, i: int) -> FakeSample:
        if not 0 <= i < self.n:
            raise IndexError(i)
        vid = f"video{i:04d}"
        if i in self.broken:
            return FakeSample(None, self.label(i), vid, "corrupt stream (fake)")
        g = torch.Generator().manual_seed(self.seed * 10_007 + i)
        clip = torch.randn(self.views, self.frames, 3, self.size, self.size, generator=g)
        clip[:, :, 0] += self.label(i) * 0.3
        return FakeSample(clip, self.label(i), vid)


class FakeVideoModel(nn.Module):
    """(B, T, 3, H, W) -> (B, K): per-channel means through a linear layer, with dropout."""

    def __init__(self, num_classes: int = 7, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(6, num_classes)
        self.bn = nn.BatchNorm1d(6)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(num_classes, 6, generator=g))
            self.fc.bias.zero_()
        self.drop = nn.Dropout(0.1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([x.mean(dim=(1, 3, 4)), x.std(dim=(1, 3, 4))], dim=1)
        return self.fc(self.drop(self.bn(feats)))


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    fn(rank, *args)


def run_local_group(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 600.0
) -> None:
    """Run ``fn(rank, *args)`` in ``world_size`` spawned processes (torchrun-like env).

    A rank that raises fails the call (the others are terminated); a group still running
    after ``timeout`` seconds is terminated and reported as a :class:`TimeoutError`, so a
    deadlocked collective fails a test instead of hanging it.
    """
    ctx = mp.spawn(_entry, args=(world_size, free_port(), fn, args), nprocs=world_size, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
                proc.join()
            raise TimeoutError(f"process group of {world_size} still running after {timeout} s")


def sleeping_worker(rank: int, seconds: float) -> None:
    """Sleep ``seconds`` (no group): stands in for a rank stuck in a collective."""
    time.sleep(seconds)


def failing_rank_worker(rank: int, failing: int) -> None:
    """Rank ``failing`` raises inside the group while the others wait in a collective."""
    import torch.distributed as dist

    from .distributed import setup_distributed

    with setup_distributed("cpu"):
        if rank == failing:
            raise RuntimeError(f"rank {rank}: deliberate failure")
        dist.all_gather_object([None] * dist.get_world_size(), rank)


def fake_eval_worker(rank: int, out_dir: str, dataset_kwargs: dict, batch_size: int) -> None:
    """Evaluate the fake model on the fake dataset in a process group; rank r saves its view."""
    from .distributed import setup_distributed
    from .evaluate import evaluate

    with setup_distributed("cpu") as env:
        dataset = FakeVideoDataset(**dataset_kwargs)
        model = FakeVideoModel(dataset.num_classes)
        result = evaluate(model, dataset, batch_size=batch_size, env=env, progress=False)
        torch.save(
            {
                "metrics": result.metrics.as_dict(),
                "video_ids": result.video_ids,
                "scores": result.scores,
                "labels": result.labels,
                "world_size": result.world_size,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )


def cli_worker(rank: int, argv: list[str]) -> None:
    """Run ``rubiks-eval`` with ``argv`` in a process of a local group."""
    from .cli import main

    if main(argv) != 0:
        raise SystemExit(f"rank {rank}: rubiks-eval failed")


def ddp_train_worker(rank: int, out_dir: str, cfg_kwargs: dict) -> None:
    """Train RubiksNet on random clips in a 2-process group, three times (uninterrupted;
    interrupted after ``cut_steps``; resumed), saving each rank's final parameters."""
    from .builders import build_model
    from .distributed import setup_distributed
    from .training import TrainConfig, train

    with setup_distributed("cpu"):  # the group outlives the three runs (train reuses it)
        kwargs = dict(cfg_kwargs)
        cut = kwargs.pop("cut_steps")
        runs = {
            "full": {},
            "cut": {"max_steps": cut},
            "resumed": {},
        }
        for name, extra in runs.items():
            folder = "cut" if name == "resumed" else name
            cfg = TrainConfig(output=os.path.join(out_dir, folder), **{**kwargs, **extra})
            captured: dict[str, Any] = {}

            torch.manual_seed(cfg.seed)  # the same initialisation for the three runs
            model, meta = build_model(cfg, dataset=None)
            summary = train(cfg, model=model, metadata=meta)
            captured["summary"] = {k: v for k, v in summary.items() if k != "history"}
            captured["history"] = summary["history"]
            captured["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            torch.save(captured, os.path.join(out_dir, f"{name}.rank{rank}.pt"))
