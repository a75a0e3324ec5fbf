"""SIGTERM handled like Ctrl-C while a command runs.

``docker stop``, systemd and a cancelled CI job send SIGTERM, whose default action ends the
process on the spot: results finished since the last commit go unrecorded and the run lock
stays behind (the next run takes it over, with a warning). Raised as a ``KeyboardInterrupt``
instead, SIGTERM takes Ctrl-C's orderly path through the library (stop the transfers, record
what finished, release the lock) and the command exits 143 (128 + 15), as a shell reports it.

The handler is installed only in the main thread (the only one Python delivers signals to),
only while a command runs, and only over SIGTERM's default disposition: a SIGTERM ignored on
purpose, or handled by a program that embeds mlsync, is left alone. SIGINT needs nothing:
Python already raises ``KeyboardInterrupt`` for it (and leaves it ignored in a background job).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["Terminated", "exit_code", "interruption_name", "stop_signals_handled"]


class Terminated(KeyboardInterrupt):
    """A signal other than SIGINT asked the process to stop (``signum``: which one)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(interruption: KeyboardInterrupt) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM."""
    signum = interruption.signum if isinstance(interruption, Terminated) else signal.SIGINT
    return 128 + int(signum)


def interruption_name(interruption: KeyboardInterrupt) -> str:
    """What stopped the command, for its last line: "interrupted" or "terminated (SIGTERM)"."""
    if isinstance(interruption, Terminated):
        return f"terminated ({signal.Signals(interruption.signum).name})"
    return "interrupted"


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextmanager
def stop_signals_handled() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` in the block; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
