"""noisy-student: pseudo-label, then train a noised student on labelled + pseudo-labelled data,
round after round; round r's student is round r+1's teacher (Xie et al. 2020).

Each round lives in OUTPUT/round-R/ (init, pseudo/labels.jsonl, student/, metrics.jsonl);
OUTPUT/noisy-student.json records finished rounds, so an interrupted loop resumes at the round it was in.
Every round's student starts from the same init (student.init applied to the first teacher): the
student's shape is the profile's, not a shrunk copy of the last student.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from kdcli.commands.distill import distill
from kdcli.commands.init_student import init_student
from kdcli.commands.pseudo_label import pseudo_label
from kdcli.console import table
from kdcli.errors import BadInput
from kdcli.profile import Profile
from kdcli.run import Run
from kdcli.runtime.files import atomic_write_json, check_writable
from kdcli.train.loop import OnStep


@dataclass
class NoisyStudentResult:
    output_dir: str
    rounds: list[dict[str, Any]]  # per round: round, teacher, student, pseudo counts, eval (as distill's)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self, out: Console) -> None:
        rows = [[r["round"], *(r["eval"].get("metrics", {}).get(k) for k in ("accuracy", "macro_f1")), r["student"]]
                for r in self.rounds]
        out.print(table("noisy-student", ["round", "accuracy", "macro_f1", "student"], rows))


def noisy_student(profile: Profile, rounds: int, *, resume: bool = False,
                  on_event: Callable[[str], None] | None = None, on_step: OnStep | None = None
                  ) -> NoisyStudentResult:
    """Run `rounds` rounds; return every round's metrics."""
    if profile.teacher is None:
        raise BadInput("noisy-student needs a first teacher (`teacher:`)",
                       hint="train one from labels first with a [ce] profile")
    if not profile.data.unlabeled:
        raise BadInput("noisy-student needs data.unlabeled", hint="add data.unlabeled: PATH")
    check_writable(profile.output)
    run = Run(profile.output)
    state_file = run.noisy_state
    state = (_read_json(state_file) or {"rounds": []}) if resume else {"rounds": []}
    # A loop stopped inside round 1 has no state file yet, but its round folder is there.
    if not resume and (state_file.exists() or run.round(1).root.exists()):
        raise BadInput(f"{profile.output} holds an earlier noisy-student loop",
                       hint="pass --resume to continue it, or point `output` at a new folder")
    teacher_path = Path(state["rounds"][-1]["student"]) if state["rounds"] else profile.teacher.path
    for r in range(len(state["rounds"]) + 1, rounds + 1):
        folder = run.round(r)
        round_profile = _round_profile(profile, teacher_path, folder)
        resuming = folder.checkpoint.is_file()
        if not resuming:
            _say(on_event, f"round {r}: pseudo-labelling with {teacher_path}")
            labelled = pseudo_label(round_profile, output=folder.pseudo_labels)
            atomic_write_json(folder.pseudo_summary, labelled.to_json())
            _say(on_event, f"round {r}: {labelled.kept_samples} of {labelled.total} samples kept, "
                           f"{labelled.kept} records")
            # timm draws a fresh head/blocks from the global RNG: seeded, a rerun builds the same init.
            torch.manual_seed(profile.train.seed)
            init_student(_round_profile(profile, profile.teacher.path, folder))
        _say(on_event, f"round {r}: training the noised student")
        summary = distill(_without_teacher_losses(round_profile), resume=resuming, on_step=on_step)
        pseudo = _read_json(folder.pseudo_summary) or {}
        state["rounds"].append({"round": r, "teacher": str(teacher_path), "student": summary.student,
                                "pseudo": {k: pseudo.get(k) for k in ("total", "kept_samples", "kept")},
                                "eval": summary.eval})
        atomic_write_json(state_file, state)
        teacher_path = Path(summary.student)
    return NoisyStudentResult(output_dir=str(profile.output), rounds=state["rounds"])


def _round_profile(profile: Profile, teacher: Path, folder: Run) -> Profile:
    data = profile.model_dump()
    data["teacher"]["path"] = str(teacher)
    data["teacher"]["source"] = profile.teacher.source if teacher == profile.teacher.path else _source_of(teacher)
    data["student"]["path"] = str(folder.init)
    data["data"]["pseudo"] = str(folder.pseudo_labels)
    data["output"] = str(folder.root)
    return Profile.model_validate(data)


def _without_teacher_losses(profile: Profile) -> Profile:
    """The student learns from labels and pseudo-labels; the teacher's part was the labelling."""
    if profile.needs_teacher():
        return profile
    return profile.model_copy(update={"teacher": None})


def _source_of(path: Path) -> str:
    from kdcli.models import detect_source  # torch-heavy: only once a round needs it
    return detect_source(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BadInput(f"{path}: not readable JSON ({exc})",
                       hint="the file is damaged; start again with a new `output`") from None


def _say(on_event: Callable[[str], None] | None, message: str) -> None:
    if on_event:
        on_event(message)
