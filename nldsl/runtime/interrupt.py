"""Ctrl-C held until a unit of work is whole.

A training step (the optimizer update) or a streamed segment (its memory, gradient sums and slow
level steps) either happens completely or not at all: a SIGINT that arrives inside one waits for
it to finish, so what is saved after the interrupt is a consistent state.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block has finished."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # only the main thread handles signals; a process started to ignore SIGINT goes on ignoring it
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, _frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


class ReportedInterrupt(KeyboardInterrupt):
    """A Ctrl-C whose outcome (what was saved, how to go on) has been told to the user already."""
