"""The profile's teacher and student, loaded from local files for its task."""

from __future__ import annotations

from pathlib import Path

from kdcli.data.labels import LabelMap
from kdcli.models import Adapter, detect_source, load_model
from kdcli.profile import Profile


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
