"""Causal-LM metrics, streamed batch by batch (logits [B, L, V] are never all kept).

perplexity = exp(Σ NLL / Σ tokens) over the learned (completion) tokens, token-weighted: a long document
counts in proportion to its tokens. Agreement with the teacher on the same tokens: next-token top-1 agreement
and the mean KL(teacher || student). Retention (the task's declaration) = teacher perplexity / student
perplexity (1 = as good as the teacher, 0.5 = twice as perplexed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcli.data.splits import Split, to_device
from kdcli.runtime.distributed import World, shard

# A model's forward on a batch dict (as kdcli.metrics.Forward); not imported from there: metrics calls into here.
Forward = Callable[[dict[str, Tensor]], Tensor]


@dataclass
class _Sums:
    nll: float = 0.0
    correct: float = 0.0
    tokens: int = 0

    def metrics(self) -> dict[str, float]:
        if not self.tokens:
            return {}
        return {"perplexity": math.exp(self.nll / self.tokens), "nll": self.nll / self.tokens,
                "next_token_accuracy": self.correct / self.tokens, "tokens": float(self.tokens)}


@dataclass
class LmEval:
    student: dict[str, float]
    teacher: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)


@torch.inference_mode()
def evaluate_lm(student: Forward, teacher: Forward | None, split: Split, batch_size: int, device: torch.device,
                world: World = World()) -> LmEval:
    """Both models over the split's batches; sums on this rank (reduced across ranks under torchrun)."""
    sums = {"student": _Sums(), "teacher": _Sums()}
    top1 = kl = 0.0
    for indices in shard(world, split.order(batch_size, shuffle=False)):
        batch = to_device(split.collate(indices), device)
        labels = batch["labels"]
        keep = labels != -100
        s_logits = student(batch).float()[keep]
        _add(sums["student"], s_logits, labels[keep])
        if teacher is not None:
            t_logits = teacher(batch).float()[keep]
            _add(sums["teacher"], t_logits, labels[keep])
            width = min(s_logits.shape[-1], t_logits.shape[-1])  # padding rows past the shared vocabulary
            s_log, t_log = F.log_softmax(s_logits[:, :width], -1), F.log_softmax(t_logits[:, :width], -1)
            top1 += (s_log.argmax(-1) == t_log.argmax(-1)).sum().item()
            kl += F.kl_div(s_log, t_log, log_target=True, reduction="sum").item()
    totals = _reduce(world, [sums["student"].nll, sums["student"].correct, sums["student"].tokens,
                             sums["teacher"].nll, sums["teacher"].correct, top1, kl])
    s_sums = _Sums(totals[0], totals[1], int(totals[2]))
    result = LmEval(s_sums.metrics())
    if teacher is not None and s_sums.tokens:
        result.teacher = _Sums(totals[3], totals[4], s_sums.tokens).metrics()
        result.agreement = {"top1": totals[5] / s_sums.tokens, "kl": totals[6] / s_sums.tokens}
    return result


def _add(sums: _Sums, logits: Tensor, labels: Tensor) -> None:
    sums.nll += F.cross_entropy(logits, labels, reduction="sum").item()
    sums.correct += (logits.argmax(-1) == labels).sum().item()
    sums.tokens += int(labels.numel())


def _reduce(world: World, values: list[float]) -> list[float]:
    if not world.distributed:
        return values
    import torch.distributed as dist
    parts: list = [None] * world.size
    dist.all_gather_object(parts, values)  # objects: the same call on gloo and nccl
    return [sum(column) for column in zip(*parts)]

