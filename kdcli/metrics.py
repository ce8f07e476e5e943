"""Metrics over a split: the task metric of one model, and how closely a student follows its teacher."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcli.data.splits import Split, loader, to_device
from kdcli.lm_metrics import evaluate_lm
from kdcli.models import Adapter
from kdcli.runtime.distributed import World, gather_rows, shard
from kdcli.tag_metrics import entity_scores
from kdcli.tasks import Task

Forward = Callable[[dict[str, Tensor]], Tensor]


def outputs_of(model: Adapter, task: Task) -> Forward:
    """The tensor a model is judged on: the task's output (logits, or the pooled embedding)."""
    need = frozenset({task.output})

    def run(batch: dict[str, Tensor]) -> Tensor:
        return getattr(model.forward(batch, need), task.output)
    return run


@torch.inference_mode()
def collect(forward: Forward, split: Split, batch_size: int, device: torch.device, world: World = World(),
            on_batch: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor | None]:
    """Run a model over a split; return its outputs [N, ...] (float32, CPU) and the labels, in the split's
    order. Under torchrun each rank runs its share of the batches and every rank gets all rows."""
    outs, labels, index, words = [], [], [], []
    width = max(split.lengths, default=0)  # tagged words: every row padded alike, so rows gather across ranks
    batches = shard(world, split.order(batch_size, shuffle=False))
    for done, (indices, batch) in enumerate(zip(batches, loader(split, batches, device)), 1):
        index.append(torch.as_tensor(indices))
        out = forward(to_device(batch, device)).float().cpu()
        label = batch.get("labels")
        if out.dim() == 3 and "word_mask" in batch:  # one row per word (its first sub-token), after the gather
            out, words = _widen(out, width, 0.0), [*words, _widen(batch["word_mask"], width, False)]
            label = _widen(label, width, -100) if label is not None else None
        elif out.dim() == 3:  # per-token logits: keep the first token, enough for agreement statistics
            out = out[:, 0]
        labels.append(label)
        outs.append(out)
        if on_batch:
            on_batch(done, len(batches))
    have_labels = bool(labels) and all(lab is not None for lab in labels)
    empty = torch.empty(0)  # a rank with no batch (more ranks than batches) still joins the gather
    out, label, mask = gather_rows(world, torch.cat(index) if index else empty.long(),
                                   torch.cat(outs) if outs else empty, torch.cat(labels) if have_labels else None,
                                   torch.cat(words) if words else None)
    if mask is not None:  # [N, L, C] -> [words, C], sentence after sentence
        out, label = out[mask], label[mask] if label is not None else None
    return out, label


def _widen(x: Tensor, width: int, value: float | bool) -> Tensor:
    """Pad dimension 1 to `width` with `value`."""
    pad = torch.full((x.shape[0], width - x.shape[1], *x.shape[2:]), value, dtype=x.dtype)
    return torch.cat([x.cpu(), pad], dim=1)


def task_metrics(outputs: Tensor, labels: Tensor | None, split: Split | None = None) -> dict[str, float]:
    """Accuracy and macro-F1 over rows; for tagged words (a split with tag names), entity-level precision,
    recall and F1 and token accuracy, sentence by sentence as `collect` returns the words."""
    if labels is None or outputs.dim() != 2 or labels.dim() != 1:
        return {}
    pred = outputs.argmax(-1)
    if split is not None and split.classes:
        return entity_scores(*_tag_sentences(split, labels, pred))
    return {"accuracy": (pred == labels).float().mean().item(), "macro_f1": macro_f1(pred, labels)}


def _tag_sentences(split: Split, labels: Tensor, pred: Tensor) -> tuple[list[list[str]], list[list[str]]]:
    names, sizes = split.classes, [len(f["words"]) for f in split.features]
    gold = [[names[i] for i in part.tolist()] for part in labels.split(sizes)]
    return gold, [[names[i] for i in part.tolist()] for part in pred.split(sizes)]


def macro_f1(pred: Tensor, labels: Tensor) -> float:
    scores = []
    for c in torch.unique(torch.cat([pred, labels])):
        tp = ((pred == c) & (labels == c)).sum().item()
        fp = ((pred == c) & (labels != c)).sum().item()
        fn = ((pred != c) & (labels == c)).sum().item()
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(sum(scores) / len(scores)) if scores else 0.0


def agreement(student: Tensor, teacher: Tensor, task: Task) -> dict[str, float]:
    """Logits: top-1 agreement and mean KL(teacher || student). Embeddings: mean cosine and
    nearest-neighbour agreement (does each sample's nearest other sample stay the same)."""
    if task.output == "embedding":
        cos = F.cosine_similarity(student, teacher, dim=-1).mean().item()
        return {"cosine_to_teacher": cos, "nn_agreement": _nn_agreement(student, teacher)}
    kl = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                  reduction="batchmean").item()
    return {"top1": (student.argmax(-1) == teacher.argmax(-1)).float().mean().item(), "kl": kl}


def int8_score(task: Task, fp32: Tensor, int8: Tensor, labels: Tensor | None, target: Tensor | None,
               split: Split | None = None) -> tuple[dict[str, float], str, float, float]:
    """An int8 model beside its fp32 one, as its users judge it: (agreement with fp32, metric, fp32's, int8's).

    The metric is the task's own (accuracy; entity F1 for tags; `split` holds their names) where the task has
    classes and the data labels, the cosine to the teacher's
    embeddings where `target` holds them, else agreement with the fp32 model (whose own value is then 1)."""
    if task.output == "embedding":
        name, agree = "cosine", _cosine(int8, fp32)
    else:
        name, agree = "top1", (int8.argmax(-1) == fp32.argmax(-1)).float().mean().item()
    if labels is not None and task.has_classes:  # the task's own metric where it has one (tags: entity F1)
        metric = task.primary[1] if task.primary[0] == "metrics" else "accuracy"
        return ({name: agree}, metric, task_metrics(fp32, labels, split)[metric],
                task_metrics(int8, labels, split)[metric])
    if target is not None:
        return {name: agree}, "cosine_to_teacher", _cosine(fp32, target), _cosine(int8, target)
    return {name: agree}, f"{name}_to_fp32", 1.0, agree


def _cosine(a: Tensor, b: Tensor) -> float:
    return F.cosine_similarity(a, b, dim=-1).mean().item()


def _nn_agreement(student: Tensor, teacher: Tensor) -> float:
    if len(student) < 3:
        return 1.0

    def nearest(x: Tensor) -> Tensor:
        x = F.normalize(x, dim=-1)
        sim = x @ x.T
        sim.fill_diagonal_(-2.0)
        return sim.argmax(-1)
    return (nearest(student) == nearest(teacher)).float().mean().item()


@dataclass
class PairMetrics:
    """A model's task metrics and its agreement with the teacher: the keys of eval.json and metrics.jsonl."""

    metrics: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)

    def primary(self, task: Task) -> float | None:
        return task.primary_metric(self.metrics, self.agreement)[1]

    def to_json(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics), "agreement": dict(self.agreement)}


def evaluate_pair(student: Adapter, teacher: Adapter | None, split: Split, task: Task, batch_size: int,
                  device: torch.device, teacher_outputs: Tensor | None = None) -> PairMetrics:
    """The metrics used during training: the student's task metric and its agreement with the teacher."""
    if task.streamed:  # per-token logits, streamed: the teacher runs beside the student
        lm = evaluate_lm(outputs_of(student, task), outputs_of(teacher, task) if teacher else None, split,
                         batch_size, device)
        return PairMetrics(lm.student, lm.agreement)
    s_out, labels = collect(outputs_of(student, task), split, batch_size, device)
    result = PairMetrics(task_metrics(s_out, labels, split))
    if teacher is not None or teacher_outputs is not None:
        if teacher_outputs is None:
            teacher_outputs, _ = collect(outputs_of(teacher, task), split, batch_size, device)
        result.agreement = agreement(s_out, teacher_outputs, task)
    return result
