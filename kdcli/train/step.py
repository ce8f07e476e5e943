"""One optimizer step: teacher on clean (or consistently augmented) input, student on the same view
(plus its own noise), weighted loss terms, the transfer and pseudo-labelled shares, gradient
accumulation, clipping.

`StudentStep` is an nn.Module holding the student and the learned parts of the losses, so that
DistributedDataParallel can wrap exactly what trains.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcli.data.augment import Augment
from kdcli.data.noise import add_noise
from kdcli.data.splits import Split, to_device
from kdcli.errors import TrainingDiverged
from kdcli.losses.functional import mask_tokens, soft_cross_entropy
from kdcli.models import Adapter, Outputs
from kdcli.profile import Profile, TrainSpec
from kdcli.train.cache import TeacherCache
from kdcli.train.sparse_cache import SparseLogitCache
from kdcli.train.state import TrainState
from kdcli.train.transfer import TransferFeed

Part = tuple[dict[str, Tensor], Outputs | None]  # a batch and the teacher's outputs on it


class StudentStep(nn.Module):
    """forward(batch, teacher outputs, micro index) -> (loss, {term: value})."""

    def __init__(self, student: Adapter, losses: nn.ModuleList, student_needs: frozenset[str],
                 profile: Profile, reader: Adapter, pseudo: tuple[Split, Tensor] | None,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world_size
        self.student_model = student.module  # registered, so DDP sees the student's parameters
        self.losses = losses
        self.adapter = student
        self.student_needs = student_needs
        self.profile = profile
        self.reader = reader
        self.pseudo = pseudo
        # Label-using losses (ce, dkd) skip transfer samples: a plain list, so nothing registers twice.
        self.label_free = [loss for loss in losses if not loss.uses_labels]
        self.transfer_needs = frozenset({"logits"}).union(*(loss.student_needs for loss in self.label_free))

    def forward(self, batch: dict[str, Tensor], t_out: Outputs | None, micro: int, transfer: Part | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.profile.train
        position = micro * self.world_size + self.rank  # ranks draw different noise and pseudo samples
        generator = torch.Generator().manual_seed(cfg.seed * 7_919 + position)
        s_out = self.adapter.forward(self._noised(batch, generator), self.student_needs)
        loss, parts = weighted_total(self.losses, s_out, t_out, batch, micro)
        if transfer is not None:
            ratio = self.profile.data.transfer_ratio
            t_s_out = self.adapter.forward(self._noised(transfer[0], generator), self.transfer_needs)
            t_loss, t_parts = weighted_total(self.label_free, t_s_out, transfer[1], transfer[0], micro)
            loss = loss + ratio * t_loss
            parts.update({f"transfer/{k}": ratio * v for k, v in t_parts.items()})
        if self.pseudo is not None and self.profile.pseudo.ratio > 0:
            p_loss = self._pseudo_loss(len(batch["index"]), position, generator, batch["index"].device)
            loss = loss + self.profile.pseudo.ratio * p_loss
            parts["pseudo"] = self.profile.pseudo.ratio * p_loss.detach()
        return loss, parts

    def _pseudo_loss(self, labelled: int, position: int, generator: torch.Generator, device: torch.device
                     ) -> Tensor:
        """Soft (or one-hot) cross entropy on ratio × batch pseudo-labelled samples (noisystudent main.py).

        A separate forward from the labelled part, so BatchNorm statistics are per part (main.py
        concatenates the two into one batch)."""
        split, targets = self.pseudo  # type: ignore[misc]
        count = max(1, round(self.profile.pseudo.ratio * labelled))
        picked = cycle_indices(split.size, count, position, self.profile.train.seed)
        p_batch = to_device(split.collate(picked), device)
        logits = self.adapter.forward(self._noised(p_batch, generator), frozenset({"logits"})).logits
        if logits.dim() == 3:  # tagged words: the teacher's tag on each word's first sub-token, -100 elsewhere
            p_loss = F.cross_entropy(logits.float().flatten(0, 1), p_batch["labels"].flatten(), ignore_index=-100)
        else:
            p_loss = soft_cross_entropy(logits.float(), targets[picked].to(logits.device))
        if not torch.isfinite(p_loss):
            raise TrainingDiverged(f"micro-batch {position + 1}: loss term 'pseudo' is {p_loss.item()}")
        return p_loss

    def _noised(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        noise = self.profile.train.noise
        if not (noise.token_mask or noise.randaugment):
            return batch
        tokenizer, config = self.reader.tokenizer, self.reader.data_config or {}
        special = special_tokens(batch, tokenizer) if tokenizer is not None and "input_ids" in batch else None
        return add_noise(batch, noise, mask_token_id=getattr(tokenizer, "mask_token_id", None), special=special,
                         mean=config.get("mean"), std=config.get("std"), generator=generator)


def teacher_outputs(teacher: Adapter | None, needs: frozenset[str], cache: TeacherCache | SparseLogitCache | None,
                    batch: dict[str, Tensor]) -> Outputs | None:
    """The frozen teacher's outputs for a clean batch: from the cache, or a no-grad forward."""
    if cache is not None:
        return cache.outputs(batch["index"], batch, batch["index"].device)
    if teacher is None or not needs:
        return None
    with torch.no_grad():
        return teacher.forward(batch, needs)


@dataclass(frozen=True)
class Feed:
    """Where a step's batches and teacher outputs come from."""

    split: Split
    teacher: Adapter | None
    teacher_needs: frozenset[str]
    cache: TeacherCache | SparseLogitCache | None
    reader: Adapter
    mask_probability: float | None  # MLM masking, the same for teacher and student
    autocast: Callable
    device: torch.device
    augment: Augment | None = None  # consistent augmentation: one view for teacher and student
    transfer: TransferFeed | None = None
    rank: int = 0
    world_size: int = 1


def optimizer_step(step_module: nn.Module, chunk: list[list[int]], state: TrainState, feed: Feed,
                   cfg: TrainSpec) -> dict[str, float]:
    """Accumulate gradients over the chunk's micro-batches, clip, step. Returns the mean loss terms."""
    terms: dict[str, Tensor] = {}
    for j, indices in enumerate(chunk):
        micro = state.step * cfg.grad_accum + j
        batch = to_device(feed.split.collate(indices), feed.device)
        if feed.mask_probability is not None:
            batch = mlm_mask(batch, feed.reader, feed.mask_probability, cfg.seed, micro)
        # Under DDP, only the last micro-batch all-reduces its gradients.
        sync = nullcontext() if j == len(chunk) - 1 or not hasattr(step_module, "no_sync") else step_module.no_sync()
        with sync, feed.autocast():
            batch, t_out = view_and_teacher(feed, batch, feed.cache, micro, 0, cfg.seed)
            loss, parts = step_module(batch, t_out, micro, transfer_part(feed, micro, cfg.seed))
            state.scaler.scale(loss / len(chunk)).backward()
        for name, value in parts.items():
            terms[name] = terms[name] + value / len(chunk) if name in terms else value / len(chunk)
    if cfg.max_grad_norm:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.params(), cfg.max_grad_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    names = list(terms)
    return dict(zip(names, torch.stack([terms[n].float() for n in names]).tolist()))  # one sync per step


def view_and_teacher(feed: Feed, batch: dict[str, Tensor], cache: TeacherCache | None, micro: int, part: int,
                     seed: int) -> Part:
    """The view both models see (augmented alike when train.augment is on) and the teacher's outputs on it."""
    if feed.augment is not None:
        position = micro * feed.world_size + feed.rank
        batch = feed.augment(batch, torch.Generator().manual_seed(seed * 1_000_033 + 2 * position + part))
    return batch, teacher_outputs(feed.teacher, feed.teacher_needs, cache, batch)


def transfer_part(feed: Feed, micro: int, seed: int) -> Part | None:
    """This micro-batch's transfer batch (see train/transfer.py) and the teacher's outputs on it."""
    if feed.transfer is None:
        return None
    indices = feed.transfer.indices(micro * feed.world_size + feed.rank)
    batch = to_device(feed.transfer.split.collate(indices), feed.device)
    if feed.mask_probability is not None:  # MLM needs no labels: transfer text is masked like the rest
        batch = mlm_mask(batch, feed.reader, feed.mask_probability, seed + 1, micro)
    return view_and_teacher(feed, batch, feed.transfer.cache, micro, 1, seed)


def weighted_total(losses: nn.ModuleList | list, s_out: Outputs, t_out: Outputs | None, batch: dict[str, Tensor],
                   micro: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the loss terms (detached copies per term, for the log); a NaN or inf stops the
    run, naming the step and the term. One device sync per micro-batch, not one per term."""
    values = [loss(s_out, t_out, batch) for loss in losses]
    total = sum(loss.weight * value for loss, value in zip(losses, values))
    if not torch.isfinite(total):
        i = next(i for i, value in enumerate(values) if not torch.isfinite(value))
        raise TrainingDiverged(f"step {micro + 1}: loss term '{losses[i].kind}' (#{i}) is {values[i].item()}",
                               hint="lower train.lr, check the data; the last good checkpoint is kept")
    kinds = [loss.kind for loss in losses]
    return total, {(kind if kinds.count(kind) == 1 else f"{kind}.{i}"): (loss.weight * value).detach()
                   for i, (kind, loss, value) in enumerate(zip(kinds, losses, values))}  # type: ignore[return-value]


def cycle_indices(size: int, count: int, micro: int, seed: int) -> list[int]:
    """Micro-batch `micro`'s share of an endless, reshuffled-each-pass walk over `size` samples."""
    start = micro * count
    orders: dict[int, list[int]] = {}  # one permutation per pass touched, not one per sample
    picked = []
    for position in range(start, start + count):
        cycle, offset = divmod(position, size)
        if cycle not in orders:
            orders[cycle] = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 31 + cycle)).tolist()
        picked.append(orders[cycle][offset])
    return picked


def mlm_mask(batch: dict[str, Tensor], reader: Adapter, probability: float, seed: int, micro: int
             ) -> dict[str, Tensor]:
    """MLM masking, the same for teacher and student, seeded by position so a resumed run masks alike."""
    tokenizer = reader.tokenizer  # type: ignore[attr-defined]
    ids = batch["input_ids"]
    special = special_tokens(batch, tokenizer)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + micro)
    masked, labels = mask_tokens(ids.cpu(), special.cpu(), tokenizer.mask_token_id, len(tokenizer),
                                 probability, generator=generator)
    return {**batch, "input_ids": masked.to(ids.device), "mlm_labels": labels.to(ids.device)}


def special_tokens(batch: dict[str, Tensor], tokenizer: Any) -> Tensor:
    """True where a token must never be masked: [CLS], [SEP], padding."""
    ids = batch["input_ids"]
    special = torch.tensor([tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                            for row in ids.tolist()], dtype=torch.bool, device=ids.device)
    return special | (batch["attention_mask"] == 0)
