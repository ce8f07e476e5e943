"""What every loss module is: a weighted term over student and teacher Outputs."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from kdcli.models.base import Adapter, Outputs


class DistillLoss(nn.Module):
    """A loss term. Learned parts (projections, regressors) are submodules: they train and are
    checkpointed with the student, and never go into the exported student."""

    kind: str = ""
    student_needs: frozenset[str] = frozenset()
    teacher_needs: frozenset[str] = frozenset()
    uses_labels: bool = False

    def __init__(self, spec: Any) -> None:
        super().__init__()
        self.spec = spec
        self.weight = float(spec.weight)

    @classmethod
    def build(cls, spec: Any, student: Adapter, teacher: Adapter | None) -> "DistillLoss":
        return cls(spec)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "weight": self.weight}


def projection(student_width: int, teacher_width: int) -> nn.Module:
    """A learned Linear when widths differ (TinyBERT's W_h), identity otherwise."""
    return nn.Identity() if student_width == teacher_width else nn.Linear(student_width, teacher_width)
