"""Loading checkpoints from local files: any saved folder or weights file (no hub, no remote code)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from kdcli.models.base import Adapter
from kdcli.tasks import Task


def load_model(source: str, path: Path, task: Task | str, *, arch: str | None = None, num_classes: int | None = None,
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
