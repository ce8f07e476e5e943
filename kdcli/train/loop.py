"""The training loop of one stage, readable top to bottom; `Job` holds what every stage shares.

Batch order and MLM masks are pure functions of (seed, epoch, step), and a checkpoint holds every
RNG state, so `--resume` reproduces an uninterrupted run on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from kdcli.card import read_facts, student_facts, training_facts, update_card
from kdcli.data.augment import Augment, consistent_augment
from kdcli.data.labels import LabelMap
from kdcli.data.splits import Split
from kdcli.errors import BadInput
from kdcli.losses import build_losses, needs
from kdcli.metrics import PairMetrics, evaluate_pair
from kdcli.models import Adapter
from kdcli.profile import Profile, StageSpec
from kdcli.run import Run
from kdcli.runtime.distributed import Session, barrier, mean_terms
from kdcli.runtime.files import append_jsonl
from kdcli.runtime.signals import StoppedAt, finish_the_step, raise_if_stopped
from kdcli.train.cache import TeacherCache
from kdcli.train.checkpoint import save_checkpoint
from kdcli.train.schedule import make_schedule, precision_context
from kdcli.train.sparse_cache import SparseLogitCache
from kdcli.train.state import TrainState
from kdcli.train.step import Feed, StudentStep, optimizer_step, special_tokens
from kdcli.train.tracking import Tracker
from kdcli.train.transfer import TransferFeed, transfer_batch_size

OnStep = Callable[[dict[str, Any]], None]


@dataclass
class Job:
    """What every stage of a distill run shares: the profile, where it runs and writes, models and data."""

    profile: Profile
    run: Run
    session: Session
    student: Adapter
    teacher: Adapter | None
    reader: Adapter  # the teacher, or the student without one: its tokenizer and label ids define the data
    train: Split
    evalset: Split | None
    pseudo: tuple[Split, Tensor] | None
    teacher_eval: Tensor | None  # the frozen teacher's eval outputs, computed once
    transfer: Split | None = None  # data.transfer beside labelled data (train/transfer.py)
    classes: LabelMap | None = None  # the job's class names, in output order (classification tasks)
    losses: list[dict[str, Any]] = field(default_factory=list)  # every stage's losses, layer maps resolved
    samples: dict[str, int] = field(default_factory=dict)  # rows read per data file

    tracker: Tracker | None = None

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (stamped with the wall-clock time), and the same to the trackers."""
        record = {"time": round(time.time(), 3), **record}
        append_jsonl(self.run.metrics, record)
        if self.tracker is not None:
            self.tracker.log(record)

    def evaluate(self) -> PairMetrics:
        self.student.module.eval()
        return evaluate_pair(self.student, self.teacher, self.evalset, self.profile.task,
                             self.profile.train.batch_size, self.session.device, self.teacher_eval)


def new_state(job: Job, stage_index: int, stage: StageSpec, total_steps: int, best: float | None) -> TrainState:
    """A fresh optimizer, schedule and loss scaler for a stage, over the student and the stage's learned losses."""
    cfg, device = job.profile.train, job.session.device
    losses = nn.ModuleList(build_losses(stage.losses, job.student, job.teacher)).to(device)
    params = [p for p in [*job.student.module.parameters(), *losses.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr or cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_schedule(optimizer, cfg.schedule, total_steps, cfg.warmup_ratio)
    _, scaler = precision_context(cfg.precision, device)
    return TrainState(job.student, losses, optimizer, scheduler, scaler, stage=stage_index, best=best)


def steps_of(job: Job, stage: StageSpec) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for a stage; each step takes grad_accum batches per rank."""
    cfg, world = job.profile.train, job.session.world
    batches_per_epoch = len(job.train.order(cfg.batch_size, shuffle=True, seed=cfg.seed))
    per_step = cfg.grad_accum * world.size
    if batches_per_epoch < per_step:
        raise BadInput(f"data.train gives {batches_per_epoch} batches of {cfg.batch_size}, fewer than one "
                       f"step needs ({cfg.grad_accum} x {world.size} processes)",
                       hint="lower train.batch_size or train.grad_accum, or add data")
    steps_per_epoch = batches_per_epoch // per_step
    return steps_per_epoch, cfg.max_steps or max(1, math.ceil((stage.epochs or cfg.epochs) * steps_per_epoch))


def train_stage(job: Job, state: TrainState, stage: StageSpec, steps_per_epoch: int, total_steps: int,
                on_step: OnStep | None = None) -> None:
    """Train one stage from state.step to total_steps, logging, evaluating and checkpointing on the way."""
    cfg, world, run, main = job.profile.train, job.session.world, job.run, job.session.main
    feed = _feed(job, state, stage)
    step_module = _step_module(job, state)
    job.student.module.train()
    started, seen, orders = time.perf_counter(), 0, {}
    try:
        with finish_the_step():
            while state.step < total_steps:
                chunk = _chunk(job, state.step, steps_per_epoch, orders)
                terms = mean_terms(world, optimizer_step(step_module, chunk, state, feed, cfg))
                state.step += 1
                seen += sum(len(indices) for indices in chunk) * world.size
                record = _record(stage, state, terms, steps_per_epoch, seen, started)
                if main and (state.step % cfg.log_every == 0 or state.step == total_steps):
                    job.log(record)
                if main and job.evalset is not None and _eval_due(state.step, total_steps, steps_per_epoch, cfg):
                    _evaluate_and_keep_best(job, state, stage)
                if main and _checkpoint_due(state.step, total_steps, steps_per_epoch, cfg):
                    save_checkpoint(run.checkpoint, state.state_dict())
                if on_step and main:
                    on_step({**record, "total_steps": total_steps})
                raise_if_stopped()
    except KeyboardInterrupt as stop:
        # Ctrl-C or SIGTERM: keep every finished step; a half-done step (a second signal) is dropped.
        state.optimizer.zero_grad(set_to_none=True)
        if main:
            save_checkpoint(run.checkpoint, state.state_dict())
        stop.stopped_at = StoppedAt(stage.name, state.step, total_steps)  # type: ignore[attr-defined]
        raise


def _record(stage: StageSpec, state: TrainState, terms: dict[str, float], steps_per_epoch: int, seen: int,
            started: float) -> dict[str, Any]:
    elapsed = time.perf_counter() - started
    return {"stage": stage.name, "step": state.step, "epoch": round(state.step / steps_per_epoch, 4),
            "loss": sum(terms.values()), **{f"loss/{k}": v for k, v in terms.items()},
            "lr": state.scheduler.get_last_lr()[0], "samples_per_s": seen / max(elapsed, 1e-9),
            "elapsed_s": round(elapsed, 3)}


def _evaluate_and_keep_best(job: Job, state: TrainState, stage: StageSpec) -> None:
    result = job.evaluate()
    job.log({"stage": stage.name, "step": state.step, "eval": result.to_json()})
    score = result.primary(job.profile.task)
    if score is not None and (state.best is None or score > state.best):
        state.best = score
        job.student.save(job.run.best)
        write_card(job, job.run.best, result.to_json(), state.step)
    job.student.module.train()


def write_card(job: Job, folder: Path, evaluation: dict[str, Any] | None, steps: int | None) -> None:
    """README.md in a saved student folder: the init card's facts (teacher, layer map), then training and eval."""
    profile = job.profile
    facts = {**read_facts(profile.student.path), **student_facts(profile, job.student, folder, job.classes),
             "training": training_facts(profile, job.losses, job.samples, steps)}
    if evaluation:
        facts["eval"] = {"samples": job.evalset.size if job.evalset is not None else None, **evaluation}
    update_card(folder, facts)


def _chunk(job: Job, step: int, steps_per_epoch: int, orders: dict[int, list[list[int]]]) -> list[list[int]]:
    """This rank's batches for a step: every world.size-th one of the epoch's seeded order (built once an epoch)."""
    cfg, world = job.profile.train, job.session.world
    epoch, position = divmod(step, steps_per_epoch)
    if epoch not in orders:
        orders.clear()
        orders[epoch] = job.train.order(cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch)
    order = orders[epoch]
    first = position * cfg.grad_accum * world.size + world.rank
    return [order[first + j * world.size] for j in range(cfg.grad_accum)]


def _feed(job: Job, state: TrainState, stage: StageSpec) -> Feed:
    cfg = job.profile.train
    _, teacher_needs = needs(list(state.losses))
    mask = next((spec for spec in stage.losses if spec.kind == "mlm"), None)
    autocast, _ = precision_context(cfg.precision, job.session.device)
    cache = _teacher_cache(job, state, job.train, teacher_needs, job.run.teacher_cache(state.stage))
    transfer = None
    if job.transfer is not None:
        transfer = TransferFeed(job.transfer, transfer_batch_size(job.profile.data.transfer_ratio, cfg.batch_size),
                                cfg.seed)
        transfer.cache = _teacher_cache(job, state, job.transfer, teacher_needs, job.run.transfer_cache(state.stage))
    return Feed(job.train, job.teacher, teacher_needs, cache, job.reader, mask.mlm_probability if mask else None,
                autocast, job.session.device, _augment(job, stage), transfer, job.session.world.rank,
                job.session.world.size)


def _augment(job: Job, stage: StageSpec) -> Augment | None:
    """train.augment as a function of (batch, generator); refused where a loss cannot read its view."""
    spec, reader = job.profile.train.augment, job.reader
    if (spec.mixup or spec.cutmix) and any(loss.kind == "dkd" for loss in stage.losses):
        raise BadInput("train.augment mixup/cutmix turns labels into mixed soft targets, and loss 'dkd' reads "
                       "hard labels", hint="use ce and hinton with mixup/cutmix, or turn them off")
    tokenizer, config = reader.tokenizer, reader.data_config or {}
    return consistent_augment(
        spec, mask_token_id=getattr(tokenizer, "mask_token_id", None),
        special=(lambda batch: special_tokens(batch, tokenizer)) if tokenizer is not None else None,
        mean=config.get("mean"), std=config.get("std"), num_classes=reader.num_labels)


def _step_module(job: Job, state: TrainState) -> nn.Module:
    """The student and the learned loss parts as one module: what DistributedDataParallel wraps."""
    world, device = job.session.world, job.session.device
    student_needs, _ = needs(list(state.losses))
    module: nn.Module = StudentStep(job.student, state.losses, student_needs, job.profile, job.reader, job.pseudo,
                                    world.rank, world.size)
    if world.distributed:
        module = DistributedDataParallel(module, find_unused_parameters=True,
                                         device_ids=[device.index] if device.type == "cuda" else None)
    return module


def _teacher_cache(job: Job, state: TrainState, split: Split, teacher_needs: frozenset[str], path: Path
                   ) -> TeacherCache | SparseLogitCache | None:
    """Rank 0 builds the cache file; the other ranks wait, then map the same file."""
    cfg, world = job.profile.train, job.session.world
    if not cfg.cache_teacher or job.teacher is None or not teacher_needs:
        return None
    if cfg.augment.active():
        raise BadInput("train.cache_teacher cannot serve train.augment: the teacher sees a new view every step",
                       hint="set train.cache_teacher: false (consistent augmentation needs the live teacher)")

    def build() -> TeacherCache | SparseLogitCache:
        if job.profile.task.cache == "sparse":
            return SparseLogitCache.load_or_build(job.teacher, split, state.losses, cfg.batch_size,
                                                  job.session.device, path, cfg.cache_topk)
        return TeacherCache.load_or_build(job.teacher, split, teacher_needs, state.losses, cfg.batch_size,
                                          job.session.device, path)
    cache = build() if world.main else None
    barrier(world)
    return cache or build()


def _eval_due(step: int, total: int, per_epoch: int, cfg: Any) -> bool:
    return step == total or (step % cfg.eval_every == 0 if cfg.eval_every else step % per_epoch == 0)


def _checkpoint_due(step: int, total: int, per_epoch: int, cfg: Any) -> bool:
    every = cfg.checkpoint_every or cfg.eval_every or per_epoch
    return step < total and step % every == 0
