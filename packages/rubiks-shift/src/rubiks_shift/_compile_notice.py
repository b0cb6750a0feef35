"""A one-line notice when a kernel's first call is slow because Numba is compiling it.

Cold compilation takes about a minute for the CPU kernels (then they load from Numba's
disk cache) and several seconds per CUDA kernel and dtype (then they load from the
package's kernel cache, ``_kernel_cache``). Without a word the first forward pass of a
model looks hung, so a call that is still running after :data:`DELAY_S` seconds logs one
warning on the ``rubiks_shift`` logger, saying whether the kernel is being compiled or
loaded from a cache. Calls that load from a cache finish before the timer and print
nothing.
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
    what: str, key: Hashable, when: str = "first use", source: str | None = None
) -> AbstractContextManager[None]:
    """Around the first call of a kernel identified by ``key``: if it is still running
    after ``DELAY_S`` seconds, log that ``what`` is being compiled (``when`` says in the
    message how often that happens) or, with ``source``, loaded from there (once per
    key)."""
    if key in _finished:
        return _ALREADY
    if source is None:
        message = ("rubiks-shift: compiling %s with Numba (%s) ...", what, when)
    else:
        message = ("rubiks-shift: loading %s from %s ...", what, source)
    return _first_call(message, key)


@contextmanager
def _first_call(message: tuple, key: Hashable) -> Iterator[None]:
    timer = threading.Timer(DELAY_S, log.warning, message)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
    _finished.add(key)
