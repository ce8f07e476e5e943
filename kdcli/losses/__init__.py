"""Distillation losses: pure functions (functional.py), each kind's declaration (specs.py, no torch) and
the modules that YAML `kind` names build (catalog.py). The torch side loads on first use of its names, so
the profile schema can read the declarations without importing torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdcli.losses.catalog import LOSSES, DistillLoss, build_losses, needs

_TORCH_SIDE = {"DistillLoss", "LOSSES", "build_losses", "needs"}


def __getattr__(name: str) -> Any:
    if name not in _TORCH_SIDE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("kdcli.losses.catalog"), name)


__all__ = ["DistillLoss", "LOSSES", "build_losses", "needs"]
