"""Training checkpoints for --resume: weights, learned loss parts, optimizer, schedule, scaler, RNG.

Written atomically (a temporary file, fsynced, then one rename), and loadable with weights_only=True.
A full disk fails the write with a KdcliError naming the file; the previous checkpoint stays intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from kdcli.runtime.files import atomic_path
from kdcli.models import Adapter


def save_checkpoint(path: Path, stage: int, step: int, student: Adapter, losses: nn.ModuleList | None,
                     optimizer: Any, scheduler: Any, scaler: Any, best: float | None) -> None:
    state = {
        "stage": stage, "step": step, "best": best,
        "student": student.module.state_dict(),
        "losses": losses.state_dict() if losses is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        sink = _Sink(handle)
        try:
            torch.save(state, sink)
        except RuntimeError:
            if sink.error is not None:  # torch reports a failed write as "unexpected pos": say why
                raise sink.error from None
            raise


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


def _numpy_state() -> tuple:
    """numpy's RNG state as plain types and a tensor, so the checkpoint loads with weights_only."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))


def restore(state: dict, student: Adapter, losses: nn.ModuleList, optimizer: Any, scheduler: Any,
             scaler: Any) -> int:
    student.module.load_state_dict(state["student"])
    if state.get("optimizer") is None:  # saved between stages: only the weights carry over
        return 0
    losses.load_state_dict(state["losses"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"])
