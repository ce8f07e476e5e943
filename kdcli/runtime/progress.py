"""Progress for long work: a rich bar on a terminal, plain lines at a steady pace in a pipe (CI logs).

A CI runner (or `kubectl logs`) sees stderr as a pipe; a bar would print nothing until the end and trip
"no output for N minutes" timeouts. There, one line goes out on the first update, then whenever a tenth
of the work is done or KDCLI_PROGRESS_SECONDS (default 30) have passed, and on the last update:

    distill [distill] step 40/400 (10%) · loss 0.6931 · 118 samples/s · elapsed 0:00:34 · ETA 0:05:06
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("KDCLI_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


class Task:
    """One piece of work (a stage, an evaluation, a phase) counted in `unit`s."""

    def __init__(self, progress: Progress, name: str, unit: str, total: int | None) -> None:
        self.progress, self.name, self.unit, self.total = progress, name, unit, total
        self._bar_id = progress.bar.add_task(name, total=total, info="") if progress.bar else None
        self._started: tuple[float, int] | None = None  # (time, done) at the first update: the rate's origin
        self._last: tuple[float, int] | None = None

    def update(self, done: int, total: int | None = None, *, name: str | None = None, **info: float) -> None:
        """`done` units of `total`; info (loss, samples_per_s) is shown beside them."""
        self.total = total if total is not None else self.total
        self.name = name or self.name
        now = time.monotonic()
        if self._last is not None and done < self._last[1]:
            self._started = self._last = None  # a new stage or round counts from its own step 1
        if self._started is None:
            self._started = (now, done)
        if self.progress.bar is not None and self._bar_id is not None:
            self.progress.bar.update(self._bar_id, completed=done, total=self.total, description=self.name,
                                     info=_info(info))
        elif self.progress.lines and self._due(now, done):
            self._last = (now, done)
            self.progress.console.print(self._line(now, done, info), markup=False, highlight=False,
                                        soft_wrap=True)

    def _due(self, now: float, done: int) -> bool:
        if self._last is None or (self.total is not None and done >= self.total):
            return True
        last_time, last_done = self._last
        tenth = max(1, (self.total or 0) // 10) if self.total else None
        return now - last_time >= _interval() or (tenth is not None and done - last_done >= tenth)

    def _line(self, now: float, done: int, info: dict[str, float]) -> str:
        assert self._started is not None
        start_time, start_done = self._started
        elapsed = now - start_time
        parts = [f"{self.name} {self.unit} {done}/{self.total}" if self.total else f"{self.name} {self.unit} {done}"]
        if self.total:
            parts[0] += f" ({100 * done // self.total}%)"
        if (text := _info(info)):
            parts.append(text)
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and done > start_done and elapsed > 0:
            parts.append(f"ETA {_clock(elapsed / (done - start_done) * (self.total - done))}")
        return " · ".join(parts)


def _info(info: dict[str, Any]) -> str:
    shown = []
    if "loss" in info:
        shown.append(f"loss {info['loss']:.4f}")
    if "samples_per_s" in info:
        shown.append(f"{info['samples_per_s']:.0f} samples/s")
    return " · ".join(shown)


class Progress:
    """`with Progress(console, quiet) as p: task = p.task("evaluate", "batch", 40); task.update(1)`."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        terminal = console.is_terminal
        self.lines = not quiet and not terminal
        self.bar = None if quiet or not terminal else RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)

    def task(self, name: str, unit: str = "step", total: int | None = None) -> Task:
        return Task(self, name, unit, total)

    def say(self, message: str) -> None:
        """A phase of work starting (export's phases, init-student's): one line unless quiet."""
        if self.bar is not None:
            self.bar.console.print(message, markup=False, highlight=False)
        elif self.lines:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.stop()
