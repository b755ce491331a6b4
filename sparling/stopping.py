"""Stopping a run early without losing its work: a stop request, and the signals that set it.

A machine about to go away (a spot instance reclaimed, a pod deleted, a deadline, Ctrl-C)
asks a run to stop. The training loop (:class:`sparling.train.Trainer`) looks at its
:class:`StopRequest` before every step; once it is set, the loop writes its ``last``
checkpoint at the current step (the format of every other checkpoint, so the run
resumes from it exactly) and raises :class:`TrainingStopped`, which the caller turns
into "stopped, resumable": a process exit status of ``128 + signal`` (143 for SIGTERM,
130 for SIGINT), what a shell reports for a process that signal ended.

:func:`stop_on_signals` makes SIGTERM and SIGINT set the request instead of ending the
process. Handlers can only be installed from the main thread; elsewhere (a Ray Train
worker's training thread) nothing is installed and the request is set by other means.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

#: what a run stops on by default: a termination request and Ctrl-C
STOP_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
#: the exit status of a run stopped without a signal (a deadline, a stop request file)
STOPPED_EXIT_CODE = 128 + signal.SIGTERM
#: how long whoever asked a run to stop waits for it to finish its step (or a validation
#: under way) and write its checkpoint, before it gives up on it
STOP_GRACE_SECONDS = 120.0


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``signal 99`` for a number no name belongs to."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stopped_exit_code(signum: int | None) -> int:
    """The exit status of a run stopped by ``signum`` (``128 + signum``, as a shell reports
    a process that signal ended); :data:`STOPPED_EXIT_CODE` when no signal asked."""
    return 128 + signum if signum is not None else STOPPED_EXIT_CODE


def is_stopped_exit_code(code: int | None) -> bool:
    """Whether a process exit status says "stopped by a stop request or signal, resumable":
    ``128 + SIGTERM|SIGINT`` from a run that stopped cleanly, or ``-SIGTERM|-SIGINT`` for a
    process the signal ended while no handler was installed, before training or after it
    (evaluating): all it trained is in its last checkpoint then too."""
    if code is None:
        return False
    return any(code in (128 + s, -s) for s in STOP_SIGNALS)


class StopRequest:
    """A request for a run to stop at its next step; safe to set from a signal handler or
    another thread. ``reason`` is ``None`` until it is set; the first reason is kept."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        #: the signal that asked, when one did
        self.signum: int | None = None

    def set(self, reason: str, signum: int | None = None) -> None:
        if self.reason is None:
            self.reason, self.signum = reason, signum
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request is set (or ``timeout`` seconds pass); whether it is."""
        return self._event.wait(timeout)


class TrainingStopped(Exception):  # noqa: N818 (a stop, not an error)
    """The run stopped on request after writing its checkpoint at the current step; run
    it again to resume from there. Not an error: ``exit_code`` is what a process ending
    this way returns (``128 + signal``)."""

    def __init__(
        self,
        run_id: str,
        samples: int,
        reason: str,
        checkpoint: Path | None,
        signum: int | None = None,
    ) -> None:
        self.run_id = run_id
        self.samples = samples
        self.reason = reason
        self.checkpoint = checkpoint
        self.signum = signum
        where = f"its checkpoint {checkpoint}" if checkpoint is not None else "its checkpoint"
        super().__init__(
            f"run {run_id} stopped at sample {samples} ({reason}); {where} resumes it when "
            "it is run again"
        )

    @property
    def exit_code(self) -> int:
        return stopped_exit_code(self.signum)


@contextlib.contextmanager
def stop_on_signals(
    request: StopRequest, signals: Sequence[int] = STOP_SIGNALS
) -> Iterator[StopRequest]:
    """Within the block, each of ``signals`` sets ``request`` instead of ending the
    process; the handlers before it are restored after. A second SIGINT ends the block
    with ``KeyboardInterrupt`` (Ctrl-C twice: stop now, without the checkpoint); other
    repeated signals are absorbed. Outside the main thread nothing is installed."""
    if not signals or threading.current_thread() is not threading.main_thread():
        yield request
        return
    seen: set[int] = set()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and signum in seen:
            raise KeyboardInterrupt
        seen.add(signum)
        request.set(signal_name(signum), signum)

    previous: dict[int, Any] = {}
    try:
        for s in signals:
            previous[s] = signal.signal(s, handler)
        yield request
    finally:
        for s, old in previous.items():
            # None: a handler not set from Python; the default is the nearest there is
            signal.signal(s, old if old is not None else signal.SIG_DFL)
