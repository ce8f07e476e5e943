"""Distillation losses: pure functions (functional.py) and the modules that YAML `kind` names build."""

from __future__ import annotations

from typing import Any

from kdcli.losses.base import DistillLoss
from kdcli.losses.feature import (
    AttentionMse,
    AttentionTransfer,
    EmbeddingMse,
    Fitnet,
    HiddenCosine,
    HiddenMse,
)
from kdcli.losses.relation import Rkd, Similarity
from kdcli.losses.response import CrossEntropy, Dkd, Hinton, MaskedLM
from kdcli.models.base import Adapter
from kdcli.losses.registry import Registry

LOSSES: Registry[type[DistillLoss]] = Registry("loss kind")
for _cls in (CrossEntropy, Hinton, Dkd, MaskedLM, HiddenCosine, HiddenMse, EmbeddingMse, AttentionMse, Fitnet,
             AttentionTransfer, Rkd, Similarity):
    LOSSES.register(_cls.kind, _cls)


def build_losses(specs: list[Any], student: Adapter, teacher: Adapter | None) -> list[DistillLoss]:
    """Build each loss of a stage, checking layer maps against both models."""
    return [LOSSES.get(spec.kind).build(spec, student, teacher) for spec in specs]


def needs(losses: list[DistillLoss]) -> tuple[frozenset[str], frozenset[str]]:
    """What the student and the teacher must compute for these losses (nothing more)."""
    student = frozenset({"logits"}).union(*(loss.student_needs for loss in losses))
    teacher = frozenset().union(*(loss.teacher_needs for loss in losses))
    return student, teacher


__all__ = ["DistillLoss", "LOSSES", "build_losses", "needs"]
