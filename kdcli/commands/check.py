"""check: refuse what distill would refuse (the shared preflight), and describe both models and the data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.console import Console

from kdcli.commands.preflight import preflight
from kdcli.models import Adapter
from kdcli.models.layers import by_importance, select_layers
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
    classes: dict[str, Any] | None = None  # the job's one label mapping: names (in output order) and source
    samples: dict[str, int] = field(default_factory=dict)  # rows read per data file (data.limit honoured)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self, out: Console, profile: str) -> None:
        out.print(f"[green]profile ok[/]: {profile}")
        for role, probe in (("teacher", self.teacher), ("student", self.student)):
            if probe and probe.loaded:
                out.print(f"  {role}: {probe.architecture} · {probe.layers} layers · {probe.params:,} params · "
                          f"output {probe.output_shape}")
            elif probe:
                out.print(f"  {role}: {probe.status}")
        if self.init_layers is not None:
            out.print(f"  student.init.layers keeps teacher layers {self.init_layers}")
        for loss in self.losses:
            out.print(f"  loss {loss['kind']} (weight {loss['weight']})"
                      + (f": map {{student: teacher}} {loss['map']}" if loss.get("map") else ""))
        if self.classes:
            names = self.classes["names"]
            out.print(f"  classes ({self.classes['source']}): " + ", ".join(names[:12])
                      + (f" and {len(names) - 12} more" if len(names) > 12 else ""), markup=False, highlight=False)
        if self.samples:
            out.print("  data: " + ", ".join(f"{which} {n:,} rows" for which, n in self.samples.items()))


def check_profile(profile: Profile) -> CheckReport:
    """The preflight distill runs (exit 2 on what it would refuse), then one batch through each model."""
    found = preflight(profile, for_check=True)
    report = CheckReport(profile=profile_json(profile), losses=found.losses, samples=found.samples,
                         classes=found.classes.to_json() if found.classes is not None else None)
    teacher, student = found.teacher, found.student
    if teacher is not None:
        report.teacher = _probe(teacher)
        init = profile.student.init
        if init.architecture == "same" and teacher.cut_depth is not None and not by_importance(init.layers):
            report.init_layers = select_layers(profile.student.init.layers, teacher.cut_depth)
    if student is not None:
        if profile.task.causal and teacher is not None:  # next-token logits: the same vocabulary
            from kdcli.models.causal_lm import shared_vocab
            shared_vocab(teacher, student)  # type: ignore[arg-type]
        report.student = _probe(student)
    else:
        report.student = ModelProbe(loaded=False,
                                    status=f"not there yet: {profile.student.path} (run init-student)")
    return report


def _probe(model: Adapter) -> ModelProbe:
    with torch.inference_mode():
        out = model.forward(model.example_batch(2), frozenset({"logits", "embedding"}))
    logits = out.logits if out.logits is not None else out.embedding
    return ModelProbe(loaded=True, family=model.family, architecture=model.architecture,
                      layers=model.depth, params=model.param_count(),
                      output_shape=list(logits.shape) if logits is not None else None)
