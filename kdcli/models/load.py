"""Loading checkpoints from local files: a teacher, a student, any saved folder (no hub, no remote code)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from kdcli.data.labels import LabelMap
from kdcli.models.base import Adapter
from kdcli.profile import Profile


def load_model(source: str, path: Path, task: str, *, arch: str | None = None, num_classes: int | None = None,
               allow_new_head: bool = False, classes: Sequence[str] | None = None) -> Adapter:
    """Load a checkpoint from local files for `task`; `classes` names its outputs (the job's LabelMap)."""
    if source == "timm":
        from kdcli.models.timm import load_timm
        model = load_timm(Path(path), arch, num_classes)
        if classes and len(classes) == model.num_labels:  # otherwise check_train_labels names the stray class
            model.set_classes(classes)
        return model
    from kdcli.models.hf import load_hf
    return load_hf(Path(path), task, num_classes, allow_new_head=allow_new_head, classes=classes)


def load_tokenizer(path: Path) -> object | None:
    """The tokenizer saved in a transformers folder (None without its files)."""
    from kdcli.models.hf import load_tokenizer as from_folder
    return from_folder(Path(path))


def detect_source(path: Path) -> str:
    """transformers or timm, from what a saved folder holds."""
    config = Path(path) / "config.json"
    if config.is_file():
        try:
            if "architecture" in json.loads(config.read_text()):
                return "timm"
        except ValueError:
            pass
    elif Path(path).is_file():
        return "timm"
    return "transformers"


def load_teacher(profile: Profile) -> Adapter | None:
    t = profile.teacher
    if t is None:
        return None
    return load_model(t.source, t.path, profile.task, arch=t.arch, num_classes=t.num_classes)


def load_student(profile: Profile, path: Path | None = None, classes: LabelMap | None = None) -> Adapter:
    """The student (profile's student.path, or `path`), its outputs named by the job's classes.

    A student may start without a head (an encoder fine-tuned from labels): it gets one output per class."""
    path = Path(path or profile.student.path)
    return load_model(detect_source(path), path, profile.task, allow_new_head=True,
                      classes=classes.names if classes is not None else None)
