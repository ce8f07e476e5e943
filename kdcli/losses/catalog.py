"""Every loss kind's torch module, registered in LOSSES by its family module, and how a stage builds them."""

from __future__ import annotations

from typing import Any

from kdcli.losses import feature, relation, response, token
from kdcli.losses.base import LOSSES, DistillLoss
from kdcli.models.base import Adapter

FAMILIES = (response, feature, relation, token)


def build_losses(specs: list[Any], student: Adapter, teacher: Adapter | None) -> list[DistillLoss]:
    """Build each loss of a stage, checking layer maps against both models."""
    return [LOSSES.get(spec.kind).build(spec, student, teacher) for spec in specs]


def needs(losses: list[DistillLoss]) -> tuple[frozenset[str], frozenset[str]]:
    """What the student and the teacher must compute for these losses (nothing more)."""
    student = frozenset({"logits"}).union(*(loss.student_needs for loss in losses))
    teacher = frozenset().union(*(loss.teacher_needs for loss in losses))
    return student, teacher


__all__ = ["DistillLoss", "FAMILIES", "LOSSES", "build_losses", "needs"]
