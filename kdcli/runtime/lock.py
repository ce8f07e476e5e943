"""One kdcli run per output folder: an exclusive, non-blocking lock on OUTPUT/.lock.

Two `distill` runs pointed at the same folder would interleave their checkpoints, metrics and
students; the second one refuses instead. The lock is `flock(2)` on an open file, so the kernel
drops it when the holder exits, however it exits (kill -9 included): there is never a stale lock
to clean up by hand, and `--resume` after a crash just works. The file itself stays (unlinking a
lock file races with a process that has it open); it holds the holder's pid, for the message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdcli.errors import BadInput

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; runs go unlocked there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


@contextmanager
def run_lock(folder: Path) -> Iterator[Path]:
    """Hold OUTPUT/.lock for the duration of the block; BadInput (exit 2) when another run holds it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's pid stays
    except OSError as exc:
        raise BadInput(f"{folder}: cannot create the run folder's lock file ({exc.strerror})",
                       hint="check that `output` points at a writable folder") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                raise BadInput(f"{folder} is in use by another kdcli run (pid {holder})",
                               hint="wait for that run to finish, stop it, or point `output` at another "
                                    "folder (--set output=...)") from None
            except OSError:  # a file system without locks (some network mounts): run unlocked, as before
                pass
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield folder / LOCK_NAME
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def _holder(fd: int) -> str:
    """The pid the holder wrote, or '?' while it has not written it yet."""
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"


def held_by(folder: Path) -> int | None:
    """The pid of the run holding `folder`'s lock, or None when it is free (for status messages)."""
    path = Path(folder) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = _holder(fd)
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
