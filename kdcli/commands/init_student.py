"""init-student: derive a smaller student from the teacher, weights copied bit for bit."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

from kdcli.card import student_facts, update_card
from kdcli.commands.checkpoints import load_teacher
from kdcli.console import human_bytes, table
from kdcli.data.labels import LabelMap, job_labels
from kdcli.data.splits import load_split, loader, subset
from kdcli.errors import BadInput
from kdcli.models import Adapter, dir_size
from kdcli.models.derive import Calibration, calibration_samples, derive_student, fresh_student, needs_calibration
from kdcli.profile import Profile
from kdcli.runtime.files import check_writable


@dataclass
class InitReport:
    teacher: dict[str, Any]
    student: dict[str, Any]
    layer_map: list[int]                      # student layer i came from teacher layer layer_map[i]
    dropped: list[str] = field(default_factory=list)
    copied_tensors: int = 0
    output_dir: str = ""
    pruned: dict[str, Any] | None = None      # width pruning: sizes before and after, calibration samples

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self, out: Console) -> None:
        t, s = self.teacher, self.student
        rows = [[field, t.get(key), s.get(key)] for field, key in
                (("architecture", "architecture"), ("layers", "layers"), ("parameters", "params"))]
        if self.pruned:
            before, after = self.pruned["teacher"], self.pruned["student"]
            rows += [[f"{name} per layer", before[name], after[name]] for name in ("heads", "ffn", "hidden")]
        rows.append(["size on disk", human_bytes(t.get("size_bytes")), human_bytes(s.get("size_bytes"))])
        out.print(table("init-student", ["", "teacher", "student"], rows))
        if self.layer_map:
            out.print("student layer ← teacher layer: " + ", ".join(f"{i}←{t_}" for i, t_ in enumerate(self.layer_map)))
        if self.pruned:
            out.print(f"ranked on {self.pruned['calibration_samples']:,} calibration samples")
        out.print(f"student written to {self.output_dir} ({self.copied_tensors} tensors copied)")


def init_student(profile: Profile, on_event: Callable[[str], None] | None = None,
                 force: bool = True) -> InitReport:
    """Build the student the profile describes from its teacher and save it to student.path (refused where a
    model already lies, unless `force`: the CLI asks for --force)."""
    say = on_event or (lambda message: None)
    init = profile.student.init
    out = profile.student.path
    if not force and Path(out).is_dir() and any(Path(out).iterdir()):
        raise BadInput(f"student.path: {out} already holds files (a student made earlier?)",
                       hint="pass --force to write the new student over it, or set student.path to a new folder")
    check_writable(out)
    if profile.teacher is None:
        return _fresh_student(profile)
    say(f"init-student: loading the teacher from {profile.teacher.path}")
    teacher = load_teacher(profile)
    assert teacher is not None
    if needs_calibration(init):
        say(f"init-student: ranking by activation importance on {calibration_samples(init):,} samples")
    else:
        say("init-student: copying the kept weights")
    derived = derive_student(teacher, init, _calibration(profile, teacher))
    student, layers, copied = derived.student, derived.layers, derived.copied
    classes = job_labels(profile, head=teacher.num_labels)
    _name_classes(student, classes)
    say(f"init-student: saving the student to {out}")
    student.save(out)
    update_card(out, {**student_facts(profile, student, out, classes), "layer_map": layers or None,
                      "dropped": list(init.drop) or None, "copied_tensors": copied,
                      "architecture": init.architecture if init.architecture != "same" else None,
                      "pruned": derived.pruned,
                      "teacher_params": teacher.param_count(),
                      "teacher_size_bytes": dir_size(teacher.path) if teacher.path else None})
    return InitReport(
        teacher=_describe(teacher, teacher.path), student=_describe(student, out), layer_map=layers,
        dropped=list(init.drop), copied_tensors=copied, output_dir=str(out), pruned=derived.pruned)


def _calibration(profile: Profile, teacher: Adapter) -> Calibration | None:
    """Batches of the job's own data (data.transfer, else data.train), a seeded random subset, for ranking."""
    which = "transfer" if profile.data.transfer else "train" if profile.data.train else None
    if which is None:
        return None

    def batches(samples: int) -> Iterable[dict[str, Tensor]]:
        split = load_split(profile, which, teacher, labels=False)
        generator = torch.Generator().manual_seed(profile.train.seed)
        chosen = subset(split, torch.randperm(split.size, generator=generator)[:samples].tolist())
        return loader(chosen, chosen.order(profile.train.batch_size, shuffle=False), torch.device("cpu"))
    return batches


def _fresh_student(profile: Profile) -> InitReport:
    """No teacher: a timm architecture with timm's initialisation (a first teacher, or a baseline)."""
    init = profile.student.init
    if init.architecture in ("same", "distilbert") or profile.task.data != "image":
        raise BadInput("init-student needs a teacher (`teacher:`), or a timm architecture to build from scratch",
                       hint="set student.init.architecture: resnet18 and student.init.num_classes")
    # The job's classes size the head when init.num_classes does not: data.classes, else the training data's.
    classes = job_labels(profile, head=init.num_classes) if init.num_classes is None or _named(profile) else None
    count = init.num_classes or (len(classes) if classes is not None else None)
    args = {**init.model_args, **({"num_classes": count} if count else {})}
    student = fresh_student(init.architecture, args)
    _name_classes(student, classes)
    student.save(profile.student.path)
    update_card(profile.student.path, {**student_facts(profile, student, profile.student.path, classes),
                                       "architecture": init.architecture})
    described = _describe(student, profile.student.path)
    return InitReport(teacher={}, student=described, layer_map=[], copied_tensors=0,
                      output_dir=str(profile.student.path))


def _describe(adapter: Adapter, path: Path | None) -> dict[str, Any]:
    return {"family": adapter.family, "architecture": adapter.architecture, "layers": adapter.depth,
            "params": adapter.param_count(), "size_bytes": dir_size(path) if path else None,
            "path": str(path) if path else None}


def _named(profile: Profile) -> bool:
    """Whether something can name a fresh student's classes: data.classes, or labelled training data."""
    return bool(profile.data.classes or profile.data.train)


def _name_classes(student: Adapter, classes: LabelMap | None) -> None:
    """The job's class names on the new student (saved with it), when its head has one output per class."""
    if classes is not None and student.num_labels == len(classes):
        student.set_classes(classes.names)
