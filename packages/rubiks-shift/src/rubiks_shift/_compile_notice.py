"""A one-line notice when a kernel's first call is slow because Numba is compiling it.

Cold compilation takes about a minute for the CPU kernels (then they load from Numba's
disk cache) and several seconds per CUDA kernel and dtype in each process. Without a word
the first forward pass of a model looks hung, so a call that is still running after
:data:`DELAY_S` seconds logs one warning on the ``rubiks_shift`` logger. Calls that load
from the cache finish before the timer and print nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

log = logging.getLogger("rubiks_shift")
DELAY_S = 3.0
_finished: set[Hashable] = set()


_ALREADY = nullcontext()  # what every call after the first gets: no timer, no generator


def compile_notice(
    what: str, key: Hashable, when: str = "first use"
) -> AbstractContextManager[None]:
    """Around the first call of a kernel identified by ``key``: if it is still running
    after ``DELAY_S`` seconds, log that ``what`` is being compiled (once per key);
    ``when`` says in the message how often that happens."""
    return _ALREADY if key in _finished else _first_call(what, key, when)


@contextmanager
def _first_call(what: str, key: Hashable, when: str) -> Iterator[None]:
    timer = threading.Timer(
        DELAY_S,
        log.warning,
        ("rubiks-shift: compiling %s with Numba (%s) ...", what, when),
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    _finished.add(key)
