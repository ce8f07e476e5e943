"""The profile's teacher and student, loaded from local files for its task."""

from __future__ import annotations

from pathlib import Path

from kdcli.data.labels import LabelMap
from kdcli.errors import BadInput
from kdcli.models import Adapter, detect_source, load_model
from kdcli.profile import Profile


def load_teacher(profile: Profile) -> Adapter | None:
    t = profile.teacher
    if t is None:
        return None
    teacher = load_model(t.source, t.path, profile.task, arch=t.arch, num_classes=t.num_classes)
    teacher.pairs = profile.data.text_pair_column is not None
    _keep_token_types(profile, teacher)
    return teacher


def load_student(profile: Profile, path: Path | None = None, classes: LabelMap | None = None) -> Adapter:
    """The student (profile's student.path, or `path`), its outputs named by the job's classes.

    A student may start without a head (an encoder fine-tuned from labels): it gets one output per class."""
    path = Path(path or profile.student.path)
    student = load_model(detect_source(path), path, profile.task, allow_new_head=True,
                         classes=classes.names if classes is not None else None)
    student.pairs = profile.data.text_pair_column is not None
    return student


def _keep_token_types(profile: Profile, teacher: Adapter) -> None:
    """Text pairs through a teacher that reads token types: a student without them (token types folded into
    the positions, or DistilBERT) would see every pair as one segment, silently unlike its teacher."""
    init = profile.student.init
    if not (teacher.pairs and teacher.token_types):
        return
    if init.architecture == "distilbert":
        what = "student.init.architecture: distilbert (no token-type table)"
    elif "token_type_embeddings" in init.drop:
        what = "student.init.drop: [token_type_embeddings]"
    else:
        return
    raise BadInput(f"{what} folds the teacher's token types away, and data.text_pair_column gives text pairs whose "
                   "second text the teacher marks with token type 1",
                   hint="keep the token types for pairs: remove token_type_embeddings from student.init.drop "
                        "(and use architecture: same)")
