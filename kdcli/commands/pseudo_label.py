"""pseudo-label: the teacher labels unlabeled data (Noisy Student, Xie et al. 2020).

The teacher sees clean inputs. Records are filtered by confidence and, optionally, balanced per
class as noisystudent's main.py does: frequent classes keep their most confident samples, rare
classes are duplicated up to the same count.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console

from kdcli.commands.checkpoints import load_teacher
from kdcli.console import table
from kdcli.data.labels import job_labels
from kdcli.data.splits import Split, load_split
from kdcli.errors import BadInput, DataError
from kdcli.metrics import collect
from kdcli.profile import Profile, PseudoSpec
from kdcli.run import Run
from kdcli.runtime.distributed import Session, session, shard
from kdcli.runtime.files import atomic_write_text, check_writable


@dataclass
class PseudoLabelResult:
    output: str
    total: int
    kept: int          # records written (class balancing repeats rare classes)
    kept_samples: int  # distinct inputs among them
    summary: dict[str, dict[str, int]]  # per class: labelled, kept, dropped, in_output

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self, out: Console) -> None:
        rows = [[name, c["labelled"], c["kept"], c["dropped"], c["in_output"]] for name, c in self.summary.items()]
        out.print(table(f"pseudo-label: {self.kept} records of {self.total} samples",
                        ["class", "labelled", "kept", "dropped", "records"], rows))
        out.print(f"written to {self.output}")


def pseudo_label(profile: Profile, input_path: Path | None = None, output: Path | None = None,
                 on_batch: Callable[[int, int], None] | None = None) -> PseudoLabelResult:
    """Label `data.unlabeled` (or input_path) with the teacher; write labels.jsonl."""
    if profile.task.pseudo == "completions":
        return _pseudo_lm(profile, input_path, output, on_batch)
    if profile.task.pseudo not in ("classes", "tags"):
        raise BadInput(f"pseudo-label needs a classification task; this profile's task is {profile.task}")
    if profile.task.pseudo == "tags" and profile.pseudo.balance:
        raise BadInput("pseudo.balance balances sentences by class, and tagged sentences hold many classes",
                       hint="set pseudo.balance: false for token classification")
    if profile.teacher is None:
        raise BadInput("pseudo-label needs a teacher: the profile has no `teacher:` section")
    classes = job_labels(profile)  # the teacher's names (or data.classes): label_name says which class
    out = Path(output) if output else Run(profile.output).pseudo_labels
    check_writable(out)  # before the teacher labels everything
    teacher = load_teacher(profile)
    assert teacher is not None
    split = load_split(profile, "unlabeled", teacher, labels=False, source=input_path)
    spec = profile.pseudo
    with session(profile.train.device) as where:  # under torchrun, each rank labels its share of the batches
        teacher.to(where.device).module.eval()
        probs = _teacher_probs(teacher, split, profile.train.batch_size, spec.temperature, where, on_batch)
        names = list(classes.names) if classes is not None else [str(i) for i in range(probs.shape[1])]
        if len(names) != probs.shape[1]:
            raise BadInput(f"the teacher has {probs.shape[1]} outputs, and the job names {len(names)} classes",
                           hint="list one name per teacher output in data.classes")
        if profile.task.pseudo == "tags":  # one record per sentence, kept when every word passes
            records = tag_records(split, probs, names)
            kept = select(records, spec)
            if where.main:
                atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in kept))
            return PseudoLabelResult(output=str(out), total=len(records), kept=len(kept), kept_samples=len(kept),
                                     summary=summarize_tags(records, kept, names))
        records = [_record(i, split, p, names, spec.topk) for i, p in enumerate(probs)]
        kept = select(records, spec)
        if where.main:
            atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in kept))
    return PseudoLabelResult(output=str(out), total=len(records), kept=len(kept),
                             kept_samples=len({r["id"] for r in kept}), summary=summarize(records, kept, names))


def _pseudo_lm(profile: Profile, input_path: Path | None, output: Path | None,
               on_batch: Callable[[int, int], None] | None) -> PseudoLabelResult:
    """Sequence-level KD: the teacher's completions for the prompts (kdcli/commands/pseudo_lm.py)."""
    from kdcli.commands.pseudo_lm import generate_completions, write_records
    teacher = load_teacher(profile)
    if teacher is None:
        raise BadInput("pseudo-label needs a teacher: the profile has no `teacher:` section")
    source = input_path or profile.data.unlabeled
    if source is None:
        raise BadInput("data.unlabeled is not set in the profile", hint="add data.unlabeled: PROMPTS.jsonl or .txt")
    out = Path(output) if output else Run(profile.output).pseudo_labels
    with session(profile.train.device) as where:
        teacher.to(where.device).module.eval()
        records = generate_completions(profile, teacher, Path(source), where.device, on_batch)
        if where.main:
            write_records(out, records)
    return PseudoLabelResult(output=str(out), total=len(records), kept=len(records), kept_samples=len(records),
                             summary={})


@torch.inference_mode()
def _teacher_probs(teacher: Any, split: Split, batch_size: int, temperature: float, where: Session,
                   on_batch: Callable[[int, int], None] | None) -> torch.Tensor:
    """Softmax(logits / T) for every sample, in the split's order."""
    total = len(shard(where.world, split.order(batch_size, shuffle=False)))
    done = [0]

    def probs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = teacher.forward(batch, frozenset({"logits"})).logits.float()
        done[0] += 1
        if on_batch:
            on_batch(done[0], total)
        return F.softmax(logits / temperature, dim=-1)
    with torch.inference_mode():
        return collect(probs, split, batch_size, where.device, where.world)[0]


def _record(i: int, split: Split, probs: torch.Tensor, names: list[str], topk: int) -> dict[str, Any]:
    conf, label = probs.max(-1)
    values, labels = probs.topk(min(topk, probs.numel()))
    record: dict[str, Any] = {"id": i, "source": split.sources[i]}
    record["text" if split.kind == "text" else "path"] = split.texts[i] if split.kind == "text" else split.sources[i]
    if split.kind == "text" and split.features[i].get("text_pair") is not None:  # a pair: both texts
        record["text_pair"] = split.features[i]["text_pair"]
    record.update({"label": int(label), "label_name": names[int(label)], "confidence": round(float(conf), 6),
                   "topk": [[int(k), round(float(v), 6)] for k, v in zip(labels, values)]})
    return record


def tag_records(split: Split, probs: torch.Tensor, names: list[str]) -> list[dict[str, Any]]:
    """Per sentence: its words, the teacher's tag and confidence for each (its first sub-token's), and the
    sentence's confidence, the lowest of its words'. The record is also a JSONL {tokens, tags} training row."""
    records = []
    sizes = [len(f["words"]) for f in split.features]
    for i, part in enumerate(probs.split(sizes)):
        conf, label = part.max(-1)
        words = split.features[i]["tokens"][: sizes[i]]  # words past max_length were never tagged
        records.append({"id": i, "source": split.sources[i], "tokens": words,
                        "tags": [names[int(k)] for k in label], "labels": [int(k) for k in label],
                        "confidences": [round(float(c), 6) for c in conf],
                        "confidence": round(float(conf.min()), 6) if len(conf) else 0.0})
    return records


def summarize_tags(records: list[dict[str, Any]], kept: list[dict[str, Any]], names: list[str]
                   ) -> dict[str, dict[str, int]]:
    """Per tag: words tagged so, words kept (in kept sentences), words dropped."""
    labelled = Counter(k for r in records for k in r["labels"])
    kept_count = Counter(k for r in kept for k in r["labels"])
    return {name: {"labelled": labelled.get(c, 0), "kept": kept_count.get(c, 0),
                   "dropped": labelled.get(c, 0) - kept_count.get(c, 0), "in_output": kept_count.get(c, 0)}
            for c, name in enumerate(names)}


def select(records: list[dict[str, Any]], spec: PseudoSpec) -> list[dict[str, Any]]:
    """Confidence filter, then (optionally) class balance: top-N of frequent classes, rare ones repeated."""
    kept = [r for r in records if r["confidence"] >= spec.threshold]
    if not kept:
        best = max((r["confidence"] for r in records), default=0.0)
        raise DataError(f"pseudo.threshold {spec.threshold} keeps none of {len(records)} samples "
                        f"(the highest confidence is {best:.4f})", hint="lower pseudo.threshold")
    if not spec.balance:
        return kept
    by_class: dict[int, list[dict[str, Any]]] = {}
    for r in sorted(kept, key=lambda r: -r["confidence"]):
        by_class.setdefault(r["label"], []).append(r)
    target = spec.per_class or max(len(v) for v in by_class.values())
    balanced = []
    for label in sorted(by_class):
        rows = by_class[label]
        balanced += [rows[i % len(rows)] for i in range(target)]
    return balanced


def summarize(records: list[dict[str, Any]], kept: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    labelled = Counter(r["label"] for r in records)
    kept_ids: dict[int, set[int]] = {}
    for r in kept:
        kept_ids.setdefault(r["label"], set()).add(r["id"])
    kept_count = Counter(r["label"] for r in kept)
    return {names[c]: {"labelled": labelled.get(c, 0), "kept": len(kept_ids.get(c, ())),
                       "dropped": labelled.get(c, 0) - len(kept_ids.get(c, ())),
                       "in_output": kept_count.get(c, 0)}
            for c in range(len(names))}
