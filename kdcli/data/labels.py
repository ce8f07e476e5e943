"""One label mapping per job: the class names, in output order, that every split and artifact goes through.

Where the names come from, first match wins:

1. `data.classes` in the profile (checked against the model's own names and head size, when it has them);
2. the teacher's names (transformers `id2label`, timm `label_names`), or, for a job without a teacher, the
   names a trained student head already carries;
3. the training data: the sorted distinct labels (integer labels are class ids: names "0".."max"); for
   image folders, the sorted class folders of data.train and data.eval together. A model whose names are
   not known (a timm weights file) gets these, padded to its head size with the remaining ids.

Every split (train, eval, unlabeled, class folders) is mapped through the result, so a split that lacks a
class never shifts the others, and a label outside it is one DataError that names it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from kdcli.errors import BadInput, DataError
from kdcli.profile import Profile

_DEFAULT_NAME = re.compile(r"LABEL_(\d+)")


@dataclass(frozen=True)
class LabelMap:
    """Class names in output order, and where they came from (profile, teacher, student, data)."""

    names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def id_of(self, raw: Any) -> int | None:
        """A label as written in the data: a class name, or an integer class id in range; None if neither."""
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)  # jsonl 1.0 means class 1
        key = str(raw).strip()
        index = self.label2id.get(key)
        if index is not None:
            return index
        value = _as_int(key)
        return value if value is not None and value < len(self.names) else None

    def known(self, limit: int = 12) -> str:
        """The names for a hint: 'negative'=0, 'positive'=1, ..."""
        shown = ", ".join(f"{name!r}={i}" for i, name in enumerate(self.names[:limit]))
        return shown + (f" and {len(self.names) - limit} more" if len(self.names) > limit else "")

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "source": self.source}


def is_default_names(names: Sequence[str]) -> bool:
    """transformers' placeholders (LABEL_0, LABEL_1, ...) or bare ids: names that name nothing."""
    return all(_DEFAULT_NAME.fullmatch(str(n)) or str(n) == str(i) for i, n in enumerate(names))


@dataclass(frozen=True)
class ModelClasses:
    """What a checkpoint says about its classes, read from its config.json without loading it."""

    names: list[str] | None = None          # real names; None when it names none (LABEL_0 placeholders)
    placeholders: list[str] | None = None   # its output names otherwise (transformers' LABEL_i)
    head: int | None = None                 # size of its trained classification head; None without one


CLASSIFIER_HEADS = ("ForSequenceClassification", "ForTokenClassification")


def peek_classes(path: Path, head: str | None = None) -> ModelClasses:
    """The classes a saved checkpoint folder declares (transformers id2label, timm label_names); `head`: the
    task's trained head (ForTokenClassification), any classifier head when None."""
    config_file = Path(path) / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ModelClasses()  # no folder, no config, a broken one: the loader names it
    if not isinstance(config, dict):
        return ModelClasses()
    if "architecture" in config:  # timm (save_for_hf): the head is built with num_classes
        names, count = config.get("label_names"), config.get("num_classes")
        return ModelClasses(names=[str(n) for n in names] if isinstance(names, list) and names else None,
                            head=int(count) if isinstance(count, int) and count > 0 else None)
    heads = (head,) if head else CLASSIFIER_HEADS
    trained = any(str(a).endswith(heads) for a in config.get("architectures") or [])
    raw = _transformers_names(Path(path), config)
    if not trained or not raw:
        return ModelClasses()
    return ModelClasses(names=None if is_default_names(raw) else raw, placeholders=raw, head=len(raw))


def _transformers_names(path: Path, config: dict[str, Any]) -> list[str]:
    """The output names as transformers reads them: its config object fills in `num_labels` LABEL_i names
    where config.json spells none (transformers 5 writes no id2label for 2 default-named classes)."""
    try:
        from transformers import AutoConfig
        loaded = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        return [str(loaded.id2label.get(i, f"LABEL_{i}")) for i in range(loaded.num_labels)]
    except (OSError, ValueError, KeyError, TypeError):  # a config transformers refuses: the loader names it
        id2label = config.get("id2label") if isinstance(config.get("id2label"), dict) else {}
        return [str(id2label.get(str(i), i)) for i in range(len(id2label))]


def job_labels(profile: Profile, student_dir: Path | None = None, head: int | None = None) -> LabelMap | None:
    """The job's classes: data.classes, else the teacher's names (the student's without a teacher), else the
    training data's. None for tasks without classes. Reads config files and labels only, no weights.

    student_dir: the student checkpoint that decides without a teacher (default student.path); head: the head
    size when the checkpoint cannot tell (init-student, before the student exists)."""
    if not profile.task.has_classes:
        return None
    teacher = profile.teacher
    if teacher is not None:
        found = peek_classes(teacher.path, profile.task.head) if Path(teacher.path).is_dir() \
            else ModelClasses(head=teacher.num_classes)
        who = "teacher"
        # A transformers teacher without names keeps its LABEL_i outputs: its order cannot be guessed from data.
        # A timm teacher without names follows the ImageFolder convention: classes are sorted folder names.
        guess = profile.task.data == "image"
    else:
        found, who, guess = peek_classes(Path(student_dir or profile.student.path), profile.task.head), "student", True
    declared = list(profile.data.classes) if profile.data.classes else None
    return resolve(declared=declared, names=found.names, placeholders=found.placeholders,
                   head=found.head or head, who=who, data_labels=(lambda: data_labels(profile)) if guess else None)


def data_labels(profile: Profile) -> tuple[list[str], bool]:
    """The labels the job's data shows, and whether they are class names in id order already: data.train's
    (data.eval's without train), as written; for images, the class folders of data.train and data.eval
    together, or the names an .npz file (or sklearn:digits) gives in id order."""
    d = profile.data
    if profile.task.data == "image":
        from kdcli.data.images import image_class_names
        names: list[str] = []
        for source in (d.train, d.eval):
            if source:
                found, ordered = image_class_names(source)
                if ordered and found:
                    return found, True  # the file fixes the ids: keep its order
                names += [n for n in found if n not in names]
        return names, False
    source = d.train or d.eval
    if not source or _is_scheme(str(source)):
        return [], False
    if profile.task.data == "tokens":
        from kdcli.data.tokens import read_tags, token_columns
        return read_tags(Path(source), *token_columns(profile), d.limit), False
    from kdcli.data.text import read_labels
    return read_labels(Path(source), d.text_column, d.label_column, d.limit), False


def _is_scheme(value: str) -> bool:
    return value.startswith("sklearn:")


def resolve(*, declared: list[str] | None, names: list[str] | None, placeholders: list[str] | None,
            head: int | None, who: str, data_labels: Callable[[], tuple[list[str], bool]] | None) -> LabelMap:
    """The job's LabelMap, for a task with classes.

    declared: data.classes; names: the deciding model's own class names (None when it names none);
    placeholders: what it calls its outputs otherwise (LABEL_0, ...); head: its head size (None when it has no
    trained head); who: "teacher" or "student"; data_labels: gives the training data's labels and whether
    they are already the names in id order, for names taken from the data (None: never guess them, the
    outputs keep their placeholders).
    """
    if declared:
        if names and list(names) != list(declared):
            raise BadInput(f"data.classes lists {_short(declared)}, but the {who} names its classes "
                           f"{_short(names)}", hint=f"drop data.classes (the {who}'s names are used), or list "
                                                    "the same names in the same order")
        if head and head != len(declared):
            raise BadInput(f"data.classes lists {len(declared)} classes, and the {who}'s head has {head}",
                           hint=f"list one name per output of the {who}, in output order")
        return LabelMap(tuple(declared), "profile")
    if names:
        return LabelMap(tuple(names), who)
    fallback = list(placeholders or [str(i) for i in range(head or 0)])
    found, ordered = data_labels() if data_labels is not None else ([], False)
    if not found:
        if fallback:
            return LabelMap(tuple(fallback), who)
        raise DataError(f"no class names: {_what_was_seen(who, data_labels is not None)}, and neither data.classes nor "
                        "the model names the classes",
                        hint="add a label column to data.train, or list data.classes in the profile")
    derived = list(found) if ordered else from_labels(found)
    if head and len(derived) < head:  # names for the ids the data does not show
        derived += [str(i) for i in range(len(derived), head)]
    return LabelMap(tuple(derived), "data")


def _what_was_seen(who: str, data_read: bool) -> str:
    if data_read:
        return "the training data shows no labels (no label column, or every label empty)"
    return f"the {who} has no trained classification head (its config.json names no *ForSequenceClassification " \
           "or *ForTokenClassification)"


def from_labels(raw: Iterable[Any]) -> list[str]:
    """Class names from labels found in data: integer ids (or LABEL_i) name classes 0..max; others sort."""
    distinct = {str(r).strip() for r in raw if r is not None and str(r).strip()}
    if distinct and all(_as_int(d) is not None for d in distinct):
        return [str(i) for i in range(max(_as_int(d) or 0 for d in distinct) + 1)]
    placeholder = [_DEFAULT_NAME.fullmatch(d) for d in distinct]
    if distinct and all(placeholder):
        return [f"LABEL_{i}" for i in range(max(int(m[1]) for m in placeholder if m) + 1)]
    return sorted(distinct)


def _as_int(key: str) -> int | None:
    if key.isascii() and key.isdigit() and len(key) < 10:
        return int(key)
    return None


def _short(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"
