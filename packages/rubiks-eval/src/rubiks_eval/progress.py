"""Progress bars and one-line notices together.

While a tqdm bar is drawn, a warning printed by Python's last-resort logging handler (no
logging configured) lands in the middle of the bar's line: rubiks-shift's one-time
"compiling ..." notice on a first run, for one. :func:`notices_above` writes such
warnings above the bar instead. A program that configures logging keeps its own
handlers; nothing changes for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["notices_above"]

LOGGERS = ("rubiks_shift", "rubiks_models", "rubiks_data", "rubiks_eval")


class _AboveBar(logging.Handler):
    def __init__(self, bar: Any) -> None:
        super().__init__(logging.WARNING)
        self.bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.bar.write(self.format(record), file=getattr(self.bar, "fp", None))
        except Exception:  # pragma: no cover - a notice must never break the run
            self.handleError(record)


@contextmanager
def notices_above(bar: Any | None) -> Iterator[None]:
    """While ``bar`` (a tqdm bar, or None for no bar) is drawn, warnings of this project's
    loggers that nothing else would handle are written above it."""
    loggers = [logging.getLogger(name) for name in LOGGERS]
    loggers = [log for log in loggers if not log.hasHandlers()]
    if bar is None or not loggers:
        yield
        return
    handler = _AboveBar(bar)
    for log in loggers:
        log.addHandler(handler)
    try:
        yield
    finally:
        for log in loggers:
            log.removeHandler(handler)
