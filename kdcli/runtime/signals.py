"""SIGTERM is Ctrl-C: how CI runners and Kubernetes cancel a job must save like an operator's Ctrl-C.

`terminate_as_interrupt()` turns SIGTERM into `Terminated`, a KeyboardInterrupt, so every
`except KeyboardInterrupt` that saves a checkpoint also saves on SIGTERM. Inside `finish_the_step()`
(a training loop) the first SIGINT or SIGTERM only asks to stop: the step in flight completes and the
loop calls `raise_if_stopped()` between steps; a second signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM: the process was asked to stop (exit 143 once saved)."""

    exit_code = 143


class Interrupted(KeyboardInterrupt):
    """SIGINT while a step was in flight: stopped after the step (exit 130)."""

    exit_code = 130


@dataclass
class StoppedAt:
    """Where a training loop stopped: the CLI names it in its one line."""

    stage: str
    step: int
    total: int


@dataclass
class _Request:
    signum: int | None = None
    deferring: bool = False


_request = _Request()


def _raise_for(signum: int) -> None:
    raise Terminated() if signum == signal.SIGTERM else Interrupted()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _request.deferring and _request.signum is None:
        _request.signum = signum  # finish the step; the loop raises between steps
        return
    _raise_for(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (and SIGINT Interrupted) in the main thread."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def finish_the_step() -> Iterator[None]:
    """A signal arriving inside the block waits for `raise_if_stopped()`; a second one raises at once."""
    _request.deferring, _request.signum = True, None
    try:
        yield
    finally:
        _request.deferring = False


def raise_if_stopped() -> None:
    """Between two steps: raise the interrupt a signal asked for during the last one."""
    if _request.signum is not None:
        signum, _request.signum = _request.signum, None
        _raise_for(signum)
