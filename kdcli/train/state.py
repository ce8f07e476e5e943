"""Training state as one value: what a stage trains, and what --resume restores."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcli.models import Adapter


@dataclass
class TrainState:
    """The student, the learned loss parts, optimizer, schedule, loss scaler and counters of one stage."""

    student: Adapter
    losses: nn.ModuleList
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    stage: int = 0
    step: int = 0
    best: float | None = None

    def params(self) -> list[Tensor]:
        return [p for p in [*self.student.module.parameters(), *self.losses.parameters()] if p.requires_grad]

    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "step": self.step, "best": self.best,
                "student": self.student.module.state_dict(), "losses": self.losses.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The student's weights; and, for a checkpoint written mid-stage, everything else too."""
        self.student.module.load_state_dict(state["student"])
        self.best = state.get("best")
        if state.get("optimizer") is None:  # written between stages: only the weights carry over
            return
        self.step = int(state["step"])
        self.losses.load_state_dict(state["losses"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])


def stage_done(student: Adapter, next_stage: int, best: float | None) -> dict[str, Any]:
    """A checkpoint between stages: the next stage starts from these weights with a fresh optimizer."""
    return {"stage": next_stage, "step": 0, "best": best, "student": student.module.state_dict(),
            "losses": None, "optimizer": None, "scheduler": None, "scaler": None, "rng": rng_state()}


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _numpy_state() -> tuple:
    """numpy's RNG state as plain types and a tensor, so the checkpoint loads with weights_only."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
