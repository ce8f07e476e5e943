"""Pseudo-labels read back: labels.jsonl (from pseudo-label) as a Split with soft or one-hot targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdcli.data import TextExample, tokenize
from kdcli.data.labels import job_labels
from kdcli.data.splits import Split, load_split, pseudo_tags_split, subset
from kdcli.errors import DataError
from kdcli.models import Adapter
from kdcli.profile import Profile


def read_labels(path: Path) -> list[dict[str, Any]]:
    """labels.jsonl back, checked line by line."""
    if not Path(path).is_file():
        raise DataError(f"data.pseudo: {path} not found", hint="run kdcli pseudo-label first")
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            int(row["label"]), row["topk"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{n}: not a pseudo-label record ({exc})",
                            hint="the file should come from kdcli pseudo-label") from None
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no pseudo-labelled samples")
    return rows


def pseudo_split(profile: Profile, model: Adapter) -> tuple[Split, Tensor]:
    """The pseudo-labelled samples of data.pseudo, and their targets (soft top-k or one-hot)."""
    if profile.task.pseudo == "tags":  # {tokens, tags} rows: the teacher's tag for each word, as hard labels
        if not Path(profile.data.pseudo).is_file():
            raise DataError(f"data.pseudo: {profile.data.pseudo} not found", hint="run kdcli pseudo-label first")
        classes = job_labels(profile, model.path if profile.teacher is None else None)
        assert classes is not None, "a task with classes has a label mapping"
        split = pseudo_tags_split(profile, model, classes)
        return split, torch.zeros(split.size, 0)  # no per-sample targets: the split's labels are per word
    rows = read_labels(Path(profile.data.pseudo))
    classes = model.num_labels or 1 + max(int(r["label"]) for r in rows)
    if profile.task.data == "image":
        split = subset(load_split(profile, "unlabeled", model, labels=False), [int(r["id"]) for r in rows])
        stray = next((r for r, source in zip(rows, split.sources) if r.get("source") != source), None)
        if stray is not None:  # ids are positions in data.unlabeled: labels from another file would misalign
            raise DataError(f"data.pseudo: record {stray['id']} was made from {stray.get('source')!r}, but "
                            f"data.unlabeled has {split.sources[rows.index(stray)]!r} there",
                            hint="pseudo-label the same file that data.unlabeled names")
    else:
        examples = [TextExample(text=r["text"], label=None, source=str(r.get("source", r["id"])),
                                pair=r.get("text_pair")) for r in rows]
        features = tokenize(examples, model.tokenizer, profile.data.max_length)
        split = Split(kind="text", size=len(features), lengths=[len(f["input_ids"]) for f in features],
                      features=features, sources=[e.source for e in examples], texts=[e.text for e in examples],
                      pad_token_id=model.tokenizer.pad_token_id or 0)
    targets = torch.zeros(len(rows), classes)
    for i, row in enumerate(rows):
        if profile.pseudo.soft:
            for label, prob in row["topk"]:
                targets[i, int(label)] = float(prob)
            targets[i] /= targets[i].sum().clamp_min(1e-12)
        else:
            targets[i, int(row["label"])] = 1.0
    return split, targets
