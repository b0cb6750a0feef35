"""Training and fine-tuning of RubiksNet (TSM recipe, docs/spec.md §3.5), on one or many processes.

Defaults follow TSM scaled to the batch: SGD momentum 0.9, lr 0.01 per 64 clips, weight
decay 5e-4 (none on shifts, BN and biases, via rubiks-models' parameter groups; shifts get
an lr multiplier), dropout 0.5 before the classifier, gradient-norm clipping at 20, step
schedule x0.1 at 40 % and 80 % of the epochs (TSM: 20 and 40 of 50) or cosine, optional
linear warm-up. One-clip validation after every epoch; atomic, resumable checkpoints
(see :mod:`rubiks_eval.checkpoint`); JSONL logs with throughput (clips/s).

Modules:

- :mod:`~rubiks_eval.training.config`: :class:`TrainConfig` and the lr schedule :func:`lr_at`;
- :mod:`~rubiks_eval.training.loop`: :func:`train` (setup, epochs, validation, finish;
  DistributedDataParallel under ``torchrun``);
- :mod:`~rubiks_eval.training.aq`: temperature annealing, budget penalty and hardening of
  AQ models;
- :mod:`~rubiks_eval.training.state`: the run's state, RNG states, JSONL log, checkpoints
  and resumption;
- :mod:`~rubiks_eval.training.sampling`: the seeded, resumable data order and per-sample
  augmentation seeds;
- :mod:`~rubiks_eval.training.cli`: the ``tools/train.py`` / ``rubiks-train`` command line.
"""

from .cli import build_parser, config_from_args, main
from .config import TrainConfig, lr_at
from .loop import train

__all__ = ["TrainConfig", "build_parser", "config_from_args", "lr_at", "main", "train"]
