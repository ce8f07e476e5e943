"""What every loss module is: a weighted term over student and teacher Outputs."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from kdcli.losses.registry import Registry
from kdcli.losses.specs import Cacheable, LossSpecBase, kind_of
from kdcli.models.base import Adapter, Outputs


class DistillLoss(nn.Module):
    """A loss term. Learned parts (projections, regressors) are submodules: they train and are
    checkpointed with the student, and never go into the exported student.

    A subclass names its kind's declaration, `class Hinton(DistillLoss, spec=HintonSpec)`: it takes the kind,
    the needs, `uses_labels` and `cacheable` from it and is registered in LOSSES under that kind."""

    Spec: ClassVar[type[LossSpecBase]]
    kind: ClassVar[str] = ""
    student_needs: ClassVar[frozenset[str]] = frozenset()
    teacher_needs: ClassVar[frozenset[str]] = frozenset()
    uses_labels: ClassVar[bool] = False
    cacheable: ClassVar[Cacheable] = "always"

    def __init_subclass__(cls, spec: type[LossSpecBase] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if spec is not None:
            cls.Spec, cls.kind = spec, kind_of(spec)
            cls.student_needs, cls.teacher_needs = spec.student_needs, spec.teacher_needs
            cls.uses_labels, cls.cacheable = spec.uses_labels, spec.cacheable
            LOSSES.register(cls.kind, cls)

    def __init__(self, spec: Any) -> None:
        super().__init__()
        self.spec = spec
        self.weight = float(spec.weight)

    @classmethod
    def build(cls, spec: Any, student: Adapter, teacher: Adapter | None) -> DistillLoss:
        return cls(spec)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "weight": self.weight}


LOSSES: Registry[type[DistillLoss]] = Registry("loss kind")


def projection(student_width: int, teacher_width: int) -> nn.Module:
    """A learned Linear when widths differ (TinyBERT's W_h), identity otherwise."""
    return nn.Identity() if student_width == teacher_width else nn.Linear(student_width, teacher_width)
