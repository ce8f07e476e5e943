"""distill: train the student against the frozen teacher, stage by stage.

`distill()` is the loop, readable top to bottom; the helpers below it hold the details (devices,
schedules, checkpoints). Batch order and MLM masks are pure functions of (seed, epoch, step), and the
checkpoint holds every RNG state, so `--resume` reproduces an uninterrupted run on CPU.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import kdcli
from kdcli.data.splits import Split, train_and_eval
from kdcli.train.cache import TeacherCache
from kdcli.models import load_student, load_teacher
from kdcli.train.checkpoint import restore, save_checkpoint
from kdcli.data import check_train_labels
from kdcli.runtime.distributed import (
    World,
    barrier,
    join,
    leave,
    mean_terms,
    pick_device,
    place,
)
from kdcli.errors import BadInput
from kdcli.runtime.files import append_jsonl, atomic_write_text
from kdcli.runtime.lock import run_lock
from kdcli.losses import LOSSES, build_losses, needs
from kdcli.metrics import collect, evaluate_pair, outputs_of
from kdcli.models import Adapter
from kdcli.profile import Profile, profile_json
from kdcli.data.pseudo import pseudo_split
from kdcli.train.schedule import make_schedule, precision_context, seed_everything
from kdcli.train.step import StudentStep, optimizer_step
from kdcli.run import Run

Progress = Callable[[dict[str, Any]], None]


def distill(profile: Profile, *, resume: bool = False, on_step: Progress | None = None) -> dict[str, Any]:
    """Train the student the profile names; return a summary. Writes the run folder as it goes."""
    # One run per output folder: a second distill there refuses (exit 2) instead of overwriting this one.
    # Rank 0 alone holds it under torchrun: the other ranks write nothing.
    with run_lock(profile.output) if os.environ.get("RANK", "0") == "0" else nullcontext():
        return _distill(profile, resume=resume, on_step=on_step)


def _distill(profile: Profile, *, resume: bool, on_step: Progress | None) -> dict[str, Any]:
    cfg = profile.train
    run = Run(profile.output)
    device = pick_device(cfg.device)
    world = join(device.type)
    device = place(world, device)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    teacher = load_teacher(profile) if profile.needs_teacher() else None
    student = load_student(profile).to(device)
    if teacher is not None:
        teacher.to(device).module.requires_grad_(False)
        teacher.module.eval()  # frozen: no dropout, no grads, ever
    if cfg.compile:
        student.module.compile()  # in place: parameter names (and so checkpoints) stay as they are
    reader = teacher or student  # the teacher's tokenizer and label ids define the data
    train, evalset = train_and_eval(profile, reader)
    label_loss = next((s.kind for s in profile.loss_specs() if LOSSES.get(s.kind).uses_labels), None)
    check_train_labels(train, str(profile.data.train), num_classes=reader.num_labels, needed_by=label_loss,
                       label_column=profile.data.label_column)
    pseudo = pseudo_split(profile, reader) if profile.data.pseudo else None
    state = _start(run, profile, resume, world)
    if state.get("student") is not None:  # resumed: the checkpoint's weights, even past the last stage
        student.module.load_state_dict(state["student"])
    main = world.main  # rank 0 alone evaluates and writes
    teacher_eval = _teacher_eval_outputs(teacher, evalset, profile, device) if main else None
    best = state.get("best")

    for stage_index, stage in enumerate(profile.stages()):
        if stage_index < state["stage"]:
            continue
        losses = nn.ModuleList(build_losses(stage.losses, student, teacher)).to(device)
        s_needs, t_needs = needs(list(losses))
        batches_per_epoch = len(train.order(cfg.batch_size, shuffle=True, seed=cfg.seed))
        per_step = cfg.grad_accum * world.size  # batches one optimizer step consumes, all ranks together
        if batches_per_epoch < per_step:
            raise BadInput(f"data.train gives {batches_per_epoch} batches of {cfg.batch_size}, fewer than one "
                           f"step needs ({cfg.grad_accum} x {world.size} processes)",
                           hint="lower train.batch_size or train.grad_accum, or add data")
        steps_per_epoch = batches_per_epoch // per_step
        total_steps = cfg.max_steps or max(1, math.ceil((stage.epochs or cfg.epochs) * steps_per_epoch))
        params = [p for p in list(student.module.parameters()) + list(losses.parameters()) if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=stage.lr or cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = make_schedule(optimizer, cfg.schedule, total_steps, cfg.warmup_ratio)
        autocast, scaler = precision_context(cfg.precision, device)
        step = 0
        if resume and stage_index == state["stage"] and state.get("student"):
            step = restore(state, student, losses, optimizer, scheduler, scaler)
            if world.distributed:  # ranks draw different dropout masks, as in an uninterrupted run
                torch.manual_seed(cfg.seed + world.rank * 1_000_003 + step)
        mask_spec = next((spec for spec in stage.losses if spec.kind == "mlm"), None)
        cache = _teacher_cache(cfg, teacher, train, t_needs, losses, device, run, stage_index, world)
        step_module: nn.Module = StudentStep(student, losses, s_needs, profile, reader, pseudo,
                                             world.rank, world.size)
        if world.distributed:
            step_module = DistributedDataParallel(step_module, find_unused_parameters=True,
                                                  device_ids=[device.index] if device.type == "cuda" else None)

        student.module.train()
        started, seen = time.perf_counter(), 0
        try:
            while step < total_steps:
                epoch, position = divmod(step, steps_per_epoch)
                order = train.order(cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch)
                first = position * per_step + world.rank  # this rank's batches: every world.size-th one
                chunk = [order[first + j * world.size] for j in range(cfg.grad_accum)]
                terms = optimizer_step(step_module, chunk, step, train, teacher, t_needs, cache,
                                       mask_spec.mlm_probability if mask_spec else None, reader, cfg, optimizer,
                                       scheduler, scaler, params, autocast, device)
                terms = mean_terms(world, terms)
                step += 1
                seen += sum(len(indices) for indices in chunk) * world.size
                record = {"stage": stage.name, "step": step, "epoch": round(step / steps_per_epoch, 4),
                          "loss": sum(terms.values()), **{f"loss/{k}": v for k, v in terms.items()},
                          "lr": scheduler.get_last_lr()[0],
                          "samples_per_s": seen / max(time.perf_counter() - started, 1e-9)}
                if main and (step % cfg.log_every == 0 or step == total_steps):
                    append_jsonl(run.metrics, record)
                if main and _eval_due(step, total_steps, steps_per_epoch, cfg.eval_every) and evalset is not None:
                    metrics = _evaluate(student, teacher, evalset, profile, device, teacher_eval)
                    append_jsonl(run.metrics, {"stage": stage.name, "step": step, "eval": metrics})
                    score = primary(metrics)
                    if score is not None and (best is None or score > best):
                        best = score
                        student.save(run.best)
                    student.module.train()
                if main and _checkpoint_due(step, total_steps, steps_per_epoch, cfg):
                    save_checkpoint(run.checkpoint, stage_index, step, student, losses, optimizer, scheduler,
                                    scaler, best)
                if on_step and main:
                    on_step({**record, "total_steps": total_steps})
        except KeyboardInterrupt:
            # Ctrl-C: keep every finished step; a half-done step is dropped, not saved.
            optimizer.zero_grad(set_to_none=True)
            if main:
                save_checkpoint(run.checkpoint, stage_index, step, student, losses, optimizer, scheduler,
                                scaler, best)
            raise
        if main:
            save_checkpoint(run.checkpoint, stage_index + 1, 0, student, None, None, None, None, best)

    student.module.eval()
    summary = {"output_dir": str(run.root), "student": str(run.student), "best": str(run.best) if best is not None
               else None, "eval": {}, "best_score": best, "device": str(device), "world_size": world.size}
    if main:
        student.save(run.student)
        summary["eval"] = _evaluate(student, teacher, evalset, profile, device, teacher_eval) if evalset else {}
        append_jsonl(run.metrics, {"final": True, "eval": summary["eval"]})
    barrier(world)
    leave(world)
    return summary


def _teacher_cache(cfg: Any, teacher: Adapter | None, train: Split, needs: frozenset[str], losses: nn.ModuleList,
                   device: torch.device, run: Run, stage: int, world: World) -> TeacherCache | None:
    """Rank 0 builds the cache file; the other ranks wait, then map the same file."""
    if not cfg.cache_teacher or teacher is None or not needs:
        return None
    path = run.root / "cache" / f"teacher-{stage}.pt"
    cache = TeacherCache.load_or_build(teacher, train, needs, losses, cfg.batch_size, device, path) \
        if world.main else None
    barrier(world)
    return cache or TeacherCache.load_or_build(teacher, train, needs, losses, cfg.batch_size, device, path)


def primary(metrics: dict[str, Any]) -> float | None:
    for name in ("accuracy", "cosine_to_teacher", "agreement_top1"):
        if name in metrics:
            return float(metrics[name])
    return None


def _evaluate(student: Adapter, teacher: Adapter | None, split: Split, profile: Profile, device: torch.device,
              teacher_outputs: Tensor | None) -> dict[str, Any]:
    student.module.eval()
    return evaluate_pair(student, teacher, split, profile.task, profile.train.batch_size, device, teacher_outputs)


def _teacher_eval_outputs(teacher: Adapter | None, split: Split | None, profile: Profile,
                          device: torch.device) -> Tensor | None:
    """The teacher never changes: its eval outputs are computed once for every evaluation."""
    if teacher is None or split is None:
        return None
    return collect(outputs_of(teacher, profile.task), split, profile.train.batch_size, device)[0]


def _eval_due(step: int, total: int, per_epoch: int, every: int | None) -> bool:
    return step == total or (step % every == 0 if every else step % per_epoch == 0)


def _checkpoint_due(step: int, total: int, per_epoch: int, cfg: Any) -> bool:
    every = cfg.checkpoint_every or cfg.eval_every or per_epoch
    return step < total and step % every == 0


# --- the run folder ----------------------------------------------------------------------------------


def _start(run: Run, profile: Profile, resume: bool, world: World) -> dict[str, Any]:
    """Open the run folder: fresh, or resumed from its last checkpoint. Every rank checks; rank 0 writes."""
    if resume:
        if not run.checkpoint.is_file():
            raise BadInput(f"--resume: no checkpoint at {run.checkpoint}", hint="run distill without --resume first")
        state = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
        if world.main:
            _forget_metrics_after(run, [stage.name for stage in profile.stages()], state)
        barrier(world)
        return state
    if run.checkpoint.is_file():
        raise BadInput(f"{run.root} holds an earlier run (checkpoints/last.pt)",
                       hint="pass --resume to continue it, or point `output` at a new folder")
    if world.main:
        _write_lock(run, profile)
    barrier(world)
    return {"stage": 0}


def _forget_metrics_after(run: Run, stages: list[str], state: dict[str, Any]) -> None:
    """Drop the records a killed run logged after its last checkpoint: the resumed run logs them again."""
    if not run.metrics.is_file():
        return
    kept = []
    for line in run.metrics.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        stage = stages.index(record["stage"]) if record.get("stage") in stages else None
        if stage is not None and (stage, record.get("step", 0)) <= (state["stage"], state["step"]):
            kept.append(line)
    atomic_write_text(run.metrics, "".join(line + "\n" for line in kept))


def _write_lock(run: Run, profile: Profile) -> None:
    import yaml
    run.root.mkdir(parents=True, exist_ok=True)
    lock = {"profile": profile_json(profile), "versions": {"kdcli": kdcli.__version__, "torch": str(torch.__version__)}}
    atomic_write_text(run.root / "profile.lock.yaml", yaml.safe_dump(lock, sort_keys=False))
    run.metrics.unlink(missing_ok=True)
