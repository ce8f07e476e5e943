"""Training checkpoints for --resume: a TrainState's state_dict on disk.

Written atomically (a temporary file, fsynced, then one rename), and loadable with weights_only=True.
A full disk fails the write with a KdcliError naming the file; the previous checkpoint stays intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import torch

from kdcli.errors import BadInput
from kdcli.runtime.files import atomic_path


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        sink = _Sink(handle)
        try:
            torch.save(state, sink)
        except RuntimeError:
            if sink.error is not None:  # torch reports a failed write as "unexpected pos": say why
                raise sink.error from None
            raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BadInput(f"--resume: no checkpoint at {path}", hint="run distill without --resume first")
    return torch.load(path, map_location="cpu", weights_only=True)


class _Sink:
    """A file torch.save writes through, keeping the OSError (disk full, EFBIG) that torch swallows."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()
