"""init-student's student from its teacher, whatever library the teacher comes from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdcli.models.base import Adapter
from kdcli.models.causal_lm import shrink_decoder
from kdcli.models.hf import HFAdapter
from kdcli.models.shrink import shrink_timm, shrink_transformer
from kdcli.models.timm import TimmAdapter, create

if TYPE_CHECKING:
    from kdcli.profile import StudentInit  # models/ imports no profile/ at run time


def derive_student(teacher: Adapter, init: StudentInit) -> tuple[Adapter, list[int], int]:
    """(student, the teacher layers it kept, tensors copied): a decoder or an encoder cut to its kept layers,
    or a timm student (the same architecture cut, or another one seeded where names and shapes match)."""
    if isinstance(teacher, HFAdapter) and teacher.task.causal:
        return shrink_decoder(teacher, init)
    if isinstance(teacher, HFAdapter):
        student, layers, copied = shrink_transformer(teacher, init, teacher.task)
        student.pipeline = teacher.pipeline  # a sentence-transformers teacher's modules, over the student's weights
        return student, layers, copied
    return shrink_timm(teacher, init)  # type: ignore[arg-type]


def fresh_student(architecture: str, args: dict[str, Any]) -> Adapter:
    """A timm architecture with timm's initialisation, no teacher (a first teacher, or a baseline)."""
    return TimmAdapter(create(architecture, **args).eval(), architecture, args)
