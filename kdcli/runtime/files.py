"""Atomic file writes: a killed process never leaves a torn file behind.

Every writer goes to a temporary sibling, fsyncs it, then renames it over the target, so a reader
(or a run resumed after kill -9) sees the old file or the new one, never half of one. A folder is
swapped with the old one in one step where Linux allows it (renameat2 RENAME_EXCHANGE), so it never
goes missing either. Temporaries a killed writer left behind are removed by the next write of the
same target. A full disk, a quota, a read-only mount or a folder without write permission becomes one
BadInput that names the file (exit 2: the environment, not the job, failed), and `check_writable` finds
an unwritable destination before the long work that would end in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdcli.errors import BadInput

_DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_DENIED_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR)


def sibling_tmp(path: Path, suffix: str = ".tmp") -> Path:
    """A unique temporary name beside `path` (same filesystem, so os.replace is atomic). Nothing is
    created: the writer creates the file, so it gets the usual umask permissions (mkstemp's are 0600)."""
    path = Path(path)
    _make_parent(path)
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}"


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_if_disk(exc, path)
        raise


def check_writable(path: Path) -> None:
    """Exit 2 now, naming `path`, when a file or folder could not be written there later.

    Permission bits do not tell (root ignores them; a read-only mount does not show in them), so a
    probe file is created and removed beside `path`.
    """
    path = Path(path)
    targets = [path, path / ".kdcli-probe"] if path.is_dir() else [path]  # beside it (renames), in it (files)
    for target in targets:
        try:
            probe = sibling_tmp(target, ".probe")
            probe.touch()
            probe.unlink()
        except OSError as exc:
            _raise_if_disk(exc, path)
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = sibling_tmp(path)
    _remove_stale(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _raise_if_disk(exc, path)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path (file or folder); on success it replaces `path` in one rename."""
    path = Path(path)
    _make_parent(path)
    _remove_stale(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        _fsync_tree(tmp)  # on disk before the rename: after a power cut, the old file or the whole new one
    except BaseException as exc:
        _remove(tmp)
        _raise_if_disk(exc, path)
        raise
    if path.is_dir() and not path.is_symlink():
        if _exchange(tmp, path):  # one step: `path` is never missing, tmp now holds the old folder
            _remove(tmp)
        else:
            # Two renames: for a moment `path` is missing; its old content is at `old` until the new is in.
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    rename = getattr(_libc(), "renameat2", None)
    if rename is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if rename(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):  # old kernel, some file systems
        return False
    raise OSError(code, os.strerror(code), str(b))


_LIBC: list[Any] = []


def _libc() -> Any:
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:  # pragma: no cover - no C library to load (unusual platforms)
            _LIBC.append(None)
    return _LIBC[0]


# The names temporaries get beside their target: tmp-PID, old-PID (atomic_path), PID.HEX8[.suffix] (sibling_tmp)
_TEMPORARY = re.compile(r"(?:tmp|old)-(\d{1,9})|(\d{1,9})\.[0-9a-f]{8}(?:\.[\w.]+)?")


def _remove_stale(path: Path) -> None:
    """Drop temporaries of `path` left by writers that died (kill -9, power cut); live writers' stay."""
    prefix = f".{path.name}."
    try:
        siblings = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for sibling in siblings:
        match = _TEMPORARY.fullmatch(sibling.name[len(prefix):])
        pid_text = match and (match.group(1) or match.group(2))
        if not pid_text or _alive(int(pid_text)):
            continue
        rest = sibling.name[len(prefix):]
        if rest.startswith("old-") and not path.exists():
            os.replace(sibling, path)  # died between the two renames: the old folder is the good one
            continue
        with contextlib.suppress(OSError):
            _remove(sibling)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # ours: atomic_path clears its own name; a sibling_tmp name may be another thread's write
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except (OverflowError, OSError):
        return False
    return True


def _fsync_tree(path: Path) -> None:
    if not path.exists():
        return  # the writer chose not to write (or wrote elsewhere)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if path.is_dir():
        _fsync_dir(path)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the folder that holds it (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def disk_error(exc: BaseException) -> tuple[str, bool] | None:
    """(reason, full) when `exc` means the disk refused a write: full (space, quota, file size limit),
    or not writable (read-only, permission, a file where a folder should be)."""
    seen: set[int] = set()
    codes = _DISK_ERRNOS + _DENIED_ERRNOS
    while exc is not None and id(exc) not in seen:  # the OSError may sit under a library's own error
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in codes:
            return os.strerror(exc.errno), exc.errno in _DISK_ERRNOS
        text = str(exc)
        for code in codes:
            if os.strerror(code) in text:  # safetensors: "I/O error: File too large (os error 27)"
                return os.strerror(code), code in _DISK_ERRNOS
        exc = exc.__cause__ or exc.__context__
    return None


def _raise_if_disk(exc: BaseException, path: Path) -> None:
    found = disk_error(exc)
    if found is None:
        return
    reason, full = found
    if full:
        hint = ("free some disk space (or raise the quota or file size limit), then run again; files written "
                "before are intact (distill --resume continues from the last checkpoint)")
    else:
        hint = ("make the folder writable, or write elsewhere (`output:` in the profile, or --output); "
                "files written before are intact")
    raise BadInput(f"cannot write {path}: {reason}", hint=hint) from exc


def refuse_inputs_among(paths: list[Path], inputs: dict[str, Path]) -> None:
    """Refuse (exit 2) when one of `paths` is or holds a path in `inputs` (field name to path)."""
    for field, item in inputs.items():
        where = Path(item).resolve()
        for path in paths:
            owned = Path(path).resolve()
            if where == owned or owned in where.parents:
                raise BadInput(f"--force would delete {path}, and the profile reads {item} from it ({field})",
                               hint=f"move {field} out of {path}, or point `output` at another folder")


def remove_owned(paths: list[Path], inputs: dict[str, Path]) -> None:
    """Remove `paths`, files or folders kdcli wrote, and nothing else; none goes if one holds an input."""
    refuse_inputs_among(paths, inputs)
    for path in paths:
        _remove(Path(path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one line; a line is one small write, so a crash loses at most the last record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(obj) + "\n").encode("utf-8")
    try:
        with open(path, "ab", buffering=0) as handle:  # unbuffered: each write is one system call
            end = handle.seek(0, os.SEEK_END)
            if end and _last_byte(path, end) != b"\n":
                # A writer killed mid-line (a multi-page write can be cut): drop the torn tail, so
                # that every line of the file parses. The record it held was lost with the process.
                end = _after_last_newline(path, end)
                handle.truncate(end)
            try:
                view = memoryview(line)
                while view:
                    view = view[handle.write(view):]
            except OSError:
                handle.truncate(end)  # a full disk wrote part of the line: take it back, keep the file whole
                raise
    except OSError as exc:
        _raise_if_disk(exc, path)
        raise


def _last_byte(path: Path, end: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(end - 1)
        return handle.read(1)


def _after_last_newline(path: Path, end: int) -> int:
    with open(path, "rb") as handle:
        chunk = 1 << 16
        position = end
        while position > 0:
            start = max(0, position - chunk)
            handle.seek(start)
            found = handle.read(position - start).rfind(b"\n")
            if found >= 0:
                return start + found + 1
            position = start
    return 0
