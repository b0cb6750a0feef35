"""rubiks-eval: RubiksNet evaluation by the TSM protocol, distributed evaluation, training.

- :func:`rubiks_eval.evaluate.evaluate`: score every listed video (mean raw logits over
  views), shard over torch.distributed ranks, gather, compute metrics.
- :mod:`rubiks_eval.metrics`: top-1/top-5, mean per-class accuracy, confusion matrix.
- :mod:`rubiks_eval.cli`: the ``rubiks-eval`` command; :mod:`rubiks_eval.demo`: the
  embedded default; :mod:`rubiks_eval.training`: training / fine-tuning;
  :mod:`rubiks_eval.check`: the installation check.
"""

from .evaluate import EvalResult, evaluate
from .metrics import Metrics, aggregate_views, compute_metrics

__version__ = "0.1.0"

__all__ = [
    "EvalResult",
    "Metrics",
    "__version__",
    "aggregate_views",
    "compute_metrics",
    "evaluate",
]
