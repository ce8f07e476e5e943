"""The preflight that check and distill share: everything distill would refuse, refused before step 1.

In order: losses that read a teacher have one; the checkpoints load; the job's classes are settled once
(kdcli.data.labels); every data file exists and parses with its columns, and its labels map to those
classes (data.limit honoured); the model that reads the data has a tokenizer; the training labels suit the
label losses; response losses see heads of the same classes; every layer map fits both models. Every
refusal is a BadInput (exit 2) that names the field, file or line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from kdcli import data
from kdcli.commands.checkpoints import load_student, load_teacher
from kdcli.data.labels import LabelMap, job_labels
from kdcli.data.lm import read_lm
from kdcli.data.pseudo import pseudo_split
from kdcli.data.splits import Split, lm_columns, load_split, map_image_labels, train_and_eval, transfer_split
from kdcli.data.tokens import read_tagged, tag_ids, token_columns
from kdcli.errors import BadInput, CheckpointError, DataError
from kdcli.models import Adapter
from kdcli.profile import Profile


@dataclass
class Preflight:
    """What the preflight loaded: distill trains on it, check reports it."""

    classes: LabelMap | None
    teacher: Adapter | None
    student: Adapter | None                      # None only for check, before init-student
    reader: Adapter | None                       # reads the data: the teacher, else the student
    train: Split | None = None
    evalset: Split | None = None
    pseudo: tuple[Split, Tensor] | None = None
    transfer: Split | None = None
    losses: list[dict] = field(default_factory=list)  # per stage: kind, weight, resolved layer map
    samples: dict[str, int] = field(default_factory=dict)  # rows read per data file (train, eval, ...)


def preflight(profile: Profile, *, for_check: bool = False) -> Preflight:
    """Load what a distill run needs and refuse what it would refuse.

    for_check: also load a teacher the losses do not read (to describe it), accept a student that init-student
    has yet to write (the data is then parsed without its tokenizer), and read data.unlabeled too.
    """
    _teacher_losses(profile)
    teacher = load_teacher(profile) if profile.needs_teacher() or (for_check and profile.teacher) else None
    classes = job_labels(profile)
    if not for_check and not Path(profile.student.path).exists() and profile.teacher is not None:
        raise CheckpointError(f"student.path: no student at {profile.student.path} yet",
                              hint="run kdcli init-student first: it derives the student from the teacher there")
    student = load_student(profile, classes=classes) if Path(profile.student.path).exists() or not for_check else None
    reader = teacher if teacher is not None and profile.needs_teacher() else student or teacher
    if student is not None and teacher is not None and student.pipeline is None and teacher.pipeline is not None:
        student.pipeline = teacher.pipeline  # the embedding the student learns to give
    result = Preflight(classes, teacher, student, reader)
    if reader is None:
        _parse_only(profile, classes, result)
        return result
    task = profile.task
    if profile.data.train or profile.data.transfer or not for_check:
        result.train, result.evalset = train_and_eval(profile, reader, classes)
        result.samples.update(train=result.train.size, **({"eval": result.evalset.size} if result.evalset else {}))
        label_loss = next((s.kind for s in profile.loss_specs() if s.uses_labels), None)
        if task.data != "lm":  # a causal LM's labels are its next tokens
            data.check_train_labels(result.train, str(profile.data.train or profile.data.transfer),
                                    num_classes=reader.num_labels, needed_by=label_loss,
                                    label_column=profile.data.label_column)
    elif profile.data.eval:
        result.samples["eval"] = load_split(profile, "eval", reader, classes=classes).size
    if profile.data.pseudo and task.pseudo != "completions":  # completions are training data (distill reads them)
        result.pseudo = pseudo_split(profile, reader)
        result.samples["pseudo"] = result.pseudo[0].size
    result.transfer = transfer_split(profile, reader)  # read as distill reads it: check refuses what distill does
    if result.transfer is not None:
        result.samples["transfer"] = result.transfer.size
    if for_check and profile.data.unlabeled:
        result.samples["unlabeled"] = _unlabeled_rows(profile, reader)
    if student is not None:
        _check_heads(profile, student, teacher)
        result.losses = _resolved_losses(profile, student, teacher)
    return result


def _unlabeled_rows(profile: Profile, reader: Adapter) -> int:
    """data.unlabeled read as pseudo-label reads it: for a causal LM, prompts whose completions are to come."""
    if profile.task.pseudo == "completions":
        return len(read_lm(Path(profile.data.unlabeled), lm_columns(profile), prompts_only=True)[: profile.data.limit])
    return load_split(profile, "unlabeled", reader, labels=False).size


def _teacher_losses(profile: Profile) -> None:
    if profile.teacher is not None or not profile.needs_teacher():
        return
    kinds = sorted({loss.kind for loss in profile.loss_specs() if loss.teacher_needs})
    raise BadInput(f"loss{'es' if len(kinds) > 1 else ''} {', '.join(kinds)} learn{'' if len(kinds) > 1 else 's'} "
                   "from a teacher, and the profile has no `teacher:`",
                   hint="add teacher: {path: ...}, or train from labels alone with losses [ce]")


def _check_heads(profile: Profile, student: Adapter, teacher: Adapter | None) -> None:
    """Response losses compare logits class by class: both heads must have the same classes."""
    response = {"hinton", "dkd"} & {loss.kind for loss in profile.loss_specs()}
    if teacher is None or not response or student.num_labels == teacher.num_labels:
        return
    raise BadInput(f"the student has {student.num_labels} output classes and the teacher {teacher.num_labels}; "
                   f"{', '.join(sorted(response))} compare them one to one",
                   hint="re-run init-student from this teacher, or drop the response losses")


def _resolved_losses(profile: Profile, student: Adapter, teacher: Adapter | None) -> list[dict]:
    """Build every stage's losses once (layer maps checked against both depths), then drop them."""
    from kdcli.losses import build_losses
    described = []
    with torch.random.fork_rng(devices=[]):  # their projections draw from the RNG: training's draws stay as they were
        for stage in profile.stages():
            for loss in build_losses(stage.losses, student, teacher):
                described.append({"stage": stage.name, **loss.describe()})
    return described


def _parse_only(profile: Profile, classes: LabelMap | None, result: Preflight) -> None:
    """No model to read the data with yet (check before init-student, without a teacher): parse every file
    and map its labels, without tokenizing."""
    d = profile.data
    for which in ("train", "eval", "unlabeled", "transfer"):
        source = getattr(d, which)
        if source is None:
            continue
        labelled = which in ("train", "eval") and classes is not None
        if profile.task.data == "image":
            images = data.read_images(source, image_size=d.image_size or 32)
            if labelled and images.labels is not None:
                map_image_labels(str(source), images, classes)  # type: ignore[arg-type]
            result.samples[which] = min(len(images.images), d.limit or len(images.images))
        elif profile.task.data == "tokens":
            words, tags = token_columns(profile)
            sentences = read_tagged(Path(source), words, tags if labelled else None, d.limit)
            if labelled:
                tag_ids(sentences, Path(source), classes.id_of, classes.known())  # type: ignore[union-attr]
            result.samples[which] = len(sentences)
        else:
            rows = data.read_text(Path(source), d.text_column, d.label_column if labelled else None,
                                  label2id=classes.label2id if labelled else None, limit=d.limit,  # type: ignore[union-attr]
                                  pair_column=d.text_pair_column)
            result.samples[which] = len(rows)
    if d.pseudo and not Path(d.pseudo).is_file():
        raise DataError(f"data.pseudo: {d.pseudo} not found", hint="run kdcli pseudo-label first")
