"""check: validate a profile and, where the checkpoints exist, run one batch through both models."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from kdcli.errors import BadInput
from kdcli.losses import build_losses
from kdcli.losses.layermap import select_layers
from kdcli.models import Adapter, load_student, load_teacher
from kdcli.profile import Profile, profile_json


@dataclass
class ModelProbe:
    """One model as check saw it: loaded and run on one batch, or why not."""

    loaded: bool
    status: str = "ok"
    family: str | None = None
    architecture: str | None = None
    layers: int | None = None
    params: int | None = None
    output_shape: list[int] | None = None


@dataclass
class CheckReport:
    profile: dict[str, Any]
    teacher: ModelProbe | None = None
    student: ModelProbe | None = None
    init_layers: list[int] | None = None  # the teacher layers student.init.layers keeps, resolved
    losses: list[dict[str, Any]] = field(default_factory=list)  # per stage: kind, weight, resolved layer map

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_profile(profile: Profile) -> CheckReport:
    report = CheckReport(profile=profile_json(profile))
    teacher = student = None
    if profile.teacher is not None:
        if profile.teacher.path.exists():
            teacher = load_teacher(profile)
            report.teacher = _probe(teacher)
            if profile.student.init.architecture == "same" and teacher.family == "transformers":
                report.init_layers = select_layers(profile.student.init.layers, teacher.depth)
        else:
            report.teacher = ModelProbe(loaded=False, status=f"not found: {profile.teacher.path}")
    if profile.student.path.exists():
        student = load_student(profile)
        report.student = _probe(student)
    else:
        report.student = ModelProbe(loaded=False,
                                    status=f"not there yet: {profile.student.path} (run init-student)")
    if student is not None and (teacher is not None or not profile.needs_teacher()):
        _check_heads(profile, student, teacher)
        for stage in profile.stages():
            for loss in build_losses(stage.losses, student, teacher):
                report.losses.append({"stage": stage.name, **loss.describe()})
    return report


def _probe(model: Adapter) -> ModelProbe:
    with torch.inference_mode():
        out = model.forward(model.example_batch(2), frozenset({"logits", "embedding"}))
    logits = out.logits if out.logits is not None else out.embedding
    return ModelProbe(loaded=True, family=model.family, architecture=type(model.module).__name__,
                      layers=model.depth, params=model.param_count(),
                      output_shape=list(logits.shape) if logits is not None else None)


def _check_heads(profile: Profile, student: Adapter, teacher: Adapter | None) -> None:
    """Response losses compare logits class by class: both heads must have the same classes."""
    if profile.task == "causal-lm" and teacher is not None:  # next-token logits: the same vocabulary
        from kdcli.models.causal_lm import shared_vocab
        shared_vocab(teacher, student)  # type: ignore[arg-type]
        return
    response = {"hinton", "dkd"} & {loss.kind for loss in profile.loss_specs()}
    if teacher is None or not response or student.num_labels == teacher.num_labels:
        return
    raise BadInput(f"the student has {student.num_labels} output classes and the teacher {teacher.num_labels}; "
                   f"{', '.join(sorted(response))} compare them one to one",
                   hint="re-run init-student from this teacher, or drop the response losses")

