"""Ctrl-C and SIGTERM as exceptions that are never lost.

Python raises a signal handler's exception wherever the interpreter is; when that is inside a finalizer
(``__del__``, run by the garbage collector) the exception is printed as "ignored" and the program goes on, so an
export interrupted at that moment would finish and exit 0. The handlers here also record the signal, and
``raise_if_interrupted`` raises it again at the points that must not be passed after one: before an export's
output is renamed into place, and when a command returns. Python's "Exception ignored ... Traceback" print for
such a swallowed signal is silenced (``_quiet_unraisable``): the signal is not lost, so the one-line
``error: interrupted`` is all the user should see.
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Iterator


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so ``finally`` / ``except BaseException`` cleanup runs."""


_pending: int | None = None  # the signal received since ``signals_as_exceptions`` began


def _exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _handler(signum, frame) -> None:
    global _pending
    _pending = signum
    raise _exception(signum)


def raise_if_interrupted() -> None:
    """Raise the recorded signal's exception again (it may have been swallowed inside a finalizer)."""
    if _pending is not None:
        raise _exception(_pending)


def _quiet_unraisable(previous):
    """``sys.unraisablehook`` that drops our own signal exceptions swallowed in a finalizer (recorded in
    ``_pending``, raised again later) and hands anything else to ``previous``."""

    def hook(unraisable) -> None:
        if _pending is not None and isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            return
        previous(unraisable)
    return hook


@contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """SIGINT -> KeyboardInterrupt, SIGTERM -> ``Terminated``, both recorded; only in the main thread (an embedding
    application's other threads keep its own handling)."""
    global _pending
    _pending = None
    try:
        previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        previous = {}
    hook = sys.unraisablehook
    if previous:
        sys.unraisablehook = _quiet_unraisable(hook)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = hook
        _pending = None
