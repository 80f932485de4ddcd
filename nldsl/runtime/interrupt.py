"""Ctrl-C held until a unit of work is whole.

A training step (the optimizer update) or a streamed segment (its memory, gradient sums and slow
level steps) either happens completely or not at all: a SIGINT that arrives inside one waits for
it to finish, so what is saved after the interrupt is a consistent state. During `nldsl train` a
SIGTERM is taken as a SIGINT (`terminate_as_interrupt`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block has finished, and a
    SIGTERM where `terminate_as_interrupt` made it one."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread handles signals
        return
    held = [number for number in (signal.SIGINT, signal.SIGTERM) if _acts_as_interrupt(number)]
    received: list[int] = []
    previous: dict[int, Any] = {}
    try:  # inside the try: a signal between two installs still has each installed one put back
        for number in held:
            previous[number] = signal.signal(number, lambda number, _frame: received.append(number))
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        raise Terminated() if received[0] == signal.SIGTERM else KeyboardInterrupt


def _acts_as_interrupt(number: int) -> bool:
    """SIGINT unless the process was started to ignore it (`&` in a script), which goes on; SIGTERM
    inside `terminate_as_interrupt`."""
    handler = signal.getsignal(number)
    return handler is not signal.SIG_IGN if number == signal.SIGINT else handler is _terminate


class Terminated(KeyboardInterrupt):
    """A SIGTERM (a scheduler ending a job, `timeout`, `kill`) taken as a Ctrl-C."""


def _terminate(_number: int, _frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def terminate_as_interrupt(enabled: bool = True) -> Iterator[None]:
    """Inside the block a SIGTERM acts as Ctrl-C does (the work in progress is finished and saved,
    then the command stops), instead of ending the process where it stands. Off under torchrun,
    whose agent sends SIGTERM to the other processes when one fails: they keep the last
    checkpoint, as they do on Ctrl-C."""
    if not enabled or threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield  # a handler someone else installed stays theirs
        return
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def signal_number(stop: BaseException) -> int:
    """The signal an interrupt stands for: SIGTERM for `Terminated`, else SIGINT (Ctrl-C)."""
    return int(signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


class ReportedInterrupt(KeyboardInterrupt):
    """A Ctrl-C (or a SIGTERM taken as one) whose outcome (what was saved, how to go on) has been
    told to the user already; its argument is the signal's number, for the exit status."""
