"""Precision (autocast + GradScaler), learning-rate schedules and seeding."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch


def precision_context(precision: str, device: torch.device) -> tuple[Callable, Any]:
    """autocast + GradScaler: bf16 where the GPU has it, fp16 with loss scaling otherwise, fp32 on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext, torch.amp.GradScaler("cpu", enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def make_schedule(optimizer: torch.optim.Optimizer, kind: str, total: int, warmup_ratio: float
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
