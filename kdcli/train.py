"""distill: train the student against the frozen teacher, stage by stage.

`distill()` is the loop, readable top to bottom; the helpers below it hold the details (devices,
schedules, checkpoints). Batch order and MLM masks are pure functions of (seed, epoch, step), and the
checkpoint holds every RNG state, so `--resume` reproduces an uninterrupted run on CPU.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

import kdcli
from kdcli.batches import Split, pseudo_split, to_device, train_and_eval
from kdcli.cache import TeacherCache
from kdcli.check import load_student, load_teacher
from kdcli.checkpoint import restore, save_checkpoint
from kdcli.errors import BadInput, TrainingDiverged
from kdcli.io import append_jsonl, atomic_write_text
from kdcli.losses import build_losses, needs
from kdcli.losses.functional import mask_tokens, soft_cross_entropy
from kdcli.metrics import collect, evaluate_pair, outputs_of
from kdcli.models import Adapter
from kdcli.noise import add_noise
from kdcli.profile import Profile, profile_json

Progress = Callable[[dict[str, Any]], None]


@dataclass
class Run:
    """Where a run writes: everything under the profile's output folder."""

    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def best(self) -> Path:
        return self.root / "student-best"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"


def distill(profile: Profile, *, resume: bool = False, on_step: Progress | None = None) -> dict[str, Any]:
    """Train the student the profile names; return a summary. Writes the run folder as it goes."""
    cfg = profile.train
    run = Run(profile.output)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    teacher = load_teacher(profile) if profile.needs_teacher() else None
    student = load_student(profile).to(device)
    if teacher is not None:
        teacher.to(device).module.requires_grad_(False)
        teacher.module.eval()  # frozen: no dropout, no grads, ever
    reader = teacher or student  # the teacher's tokenizer and label ids define the data
    train, evalset = train_and_eval(profile, reader)
    pseudo = pseudo_split(profile, reader) if profile.data.pseudo else None
    state = _start(run, profile, resume)
    teacher_eval = _teacher_eval_outputs(teacher, evalset, profile, device)
    best = state.get("best")

    for stage_index, stage in enumerate(profile.stages()):
        if stage_index < state["stage"]:
            continue
        losses = nn.ModuleList(build_losses(stage.losses, student, teacher)).to(device)
        s_needs, t_needs = needs(list(losses))
        epochs = stage.epochs or cfg.epochs
        batches_per_epoch = len(train.order(cfg.batch_size, shuffle=True, seed=cfg.seed))
        steps_per_epoch = max(1, batches_per_epoch // cfg.grad_accum)
        total_steps = cfg.max_steps or max(1, math.ceil(epochs * steps_per_epoch))
        params = [p for p in list(student.module.parameters()) + list(losses.parameters()) if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=stage.lr or cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = make_schedule(optimizer, cfg.schedule, total_steps, cfg.warmup_ratio)
        autocast, scaler = precision_context(cfg.precision, device)
        step = 0
        if resume and stage_index == state["stage"] and state.get("student"):
            step = restore(state, student, losses, optimizer, scheduler, scaler)
        mask_spec = next((spec for spec in stage.losses if spec.kind == "mlm"), None)
        cache = None
        if cfg.cache_teacher and teacher is not None and t_needs:
            cache = TeacherCache.load_or_build(teacher, train, t_needs, losses, cfg.batch_size, device,
                                               run.root / "cache" / f"teacher-{stage_index}.pt")
        ctx = StepContext(student, teacher, losses, s_needs, t_needs, pseudo, profile, reader, train, cache)

        student.module.train()
        started, seen = time.perf_counter(), 0
        try:
            while step < total_steps:
                epoch, position = divmod(step * cfg.grad_accum, batches_per_epoch)
                order = train.order(cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch)
                chunk = order[position: position + cfg.grad_accum]
                terms = _optimizer_step(ctx, chunk, step, mask_spec, optimizer, scheduler, scaler, params, autocast)
                step += 1
                seen += sum(len(indices) for indices in chunk)
                record = {"stage": stage.name, "step": step, "epoch": round(step / steps_per_epoch, 4),
                          "loss": sum(terms.values()), **{f"loss/{k}": v for k, v in terms.items()},
                          "lr": scheduler.get_last_lr()[0],
                          "samples_per_s": seen / max(time.perf_counter() - started, 1e-9)}
                if step % cfg.log_every == 0 or step == total_steps:
                    append_jsonl(run.metrics, record)
                if _eval_due(step, total_steps, steps_per_epoch, cfg.eval_every) and evalset is not None:
                    metrics = _evaluate(student, teacher, evalset, profile, device, teacher_eval)
                    append_jsonl(run.metrics, {"stage": stage.name, "step": step, "eval": metrics})
                    score = primary(metrics)
                    if score is not None and (best is None or score > best):
                        best = score
                        student.save(run.best)
                    student.module.train()
                if _checkpoint_due(step, total_steps, steps_per_epoch, cfg):
                    save_checkpoint(run.checkpoint, stage_index, step, student, losses, optimizer, scheduler,
                                    scaler, best)
                if on_step:
                    on_step({**record, "total_steps": total_steps})
        except KeyboardInterrupt:
            # Ctrl-C: keep every finished step; a half-done step is dropped, not saved.
            optimizer.zero_grad(set_to_none=True)
            save_checkpoint(run.checkpoint, stage_index, step, student, losses, optimizer, scheduler, scaler, best)
            raise
        save_checkpoint(run.checkpoint, stage_index + 1, 0, student, None, None, None, None, best)

    student.module.eval()
    student.save(run.student)
    final = _evaluate(student, teacher, evalset, profile, device, teacher_eval) if evalset is not None else {}
    summary = {"output_dir": str(run.root), "student": str(run.student), "best": str(run.best) if best is not None
               else None, "eval": final, "best_score": best, "device": str(device)}
    append_jsonl(run.metrics, {"final": True, "eval": final})
    return summary


# --- the pieces of a step -------------------------------------------------------------------------


@dataclass
class StepContext:
    student: Adapter
    teacher: Adapter | None
    losses: nn.ModuleList
    student_needs: frozenset[str]
    teacher_needs: frozenset[str]
    pseudo: tuple[Split, Tensor] | None
    profile: Profile
    reader: Adapter
    train: Split
    cache: TeacherCache | None = None


def _optimizer_step(ctx: StepContext, chunk: list[list[int]], step: int, mask_spec: Any, optimizer: Any,
                    scheduler: Any, scaler: Any, params: list[Tensor], autocast: Callable) -> dict[str, float]:
    """Accumulate gradients over the chunk's micro-batches, clip, step. Returns the mean loss terms."""
    cfg = ctx.profile.train
    device = next(ctx.student.module.parameters()).device
    terms: dict[str, float] = {}
    for j, indices in enumerate(chunk):
        batch = to_device(ctx.train.collate(indices), device)
        if mask_spec is not None:
            batch = _mask(batch, ctx.reader, mask_spec.mlm_probability, cfg.seed, step)
        with autocast():
            loss, parts = _micro_loss(ctx, batch, step * cfg.grad_accum + j)
        scaler.scale(loss / len(chunk)).backward()
        for name, value in parts.items():
            terms[name] = terms.get(name, 0.0) + value / len(chunk)
    if cfg.max_grad_norm:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return terms


def _micro_loss(ctx: StepContext, batch: dict[str, Tensor], micro: int) -> tuple[Tensor, dict[str, float]]:
    """One micro-batch: teacher on clean input, student on noised input, plus the pseudo-labelled part."""
    cfg = ctx.profile.train
    generator = torch.Generator().manual_seed(cfg.seed * 7_919 + micro)
    t_out = None
    if ctx.cache is not None:
        t_out = ctx.cache.outputs(batch["index"], batch, batch["index"].device)
    elif ctx.teacher is not None and ctx.teacher_needs:
        with torch.no_grad():
            t_out = ctx.teacher.forward(batch, ctx.teacher_needs)
    s_out = ctx.student.forward(_noised(ctx, batch, generator), ctx.student_needs)
    loss, parts = _total(ctx.losses, s_out, t_out, batch, micro)
    if ctx.pseudo is not None:
        split, targets = ctx.pseudo
        ratio = ctx.profile.pseudo.ratio
        count = max(1, round(ratio * len(batch["index"])))
        picked = _cycle(split.size, count, micro, cfg.seed)
        p_batch = to_device(split.collate(picked), batch["index"].device)
        logits = ctx.student.forward(_noised(ctx, p_batch, generator), frozenset({"logits"})).logits
        p_loss = soft_cross_entropy(logits.float(), targets[picked].to(logits.device))
        if not torch.isfinite(p_loss):
            raise TrainingDiverged(f"micro-batch {micro + 1}: loss term 'pseudo' is {p_loss.item()}")
        loss = loss + ratio * p_loss
        parts["pseudo"] = ratio * p_loss.item()
    return loss, parts


def _noised(ctx: StepContext, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    noise = ctx.profile.train.noise
    if not (noise.token_mask or noise.randaugment):
        return batch
    tokenizer = getattr(ctx.reader, "tokenizer", None)
    config = getattr(ctx.reader, "data_config", None) or {}
    special = None
    if tokenizer is not None and "input_ids" in batch:
        special = _special_mask(batch, tokenizer)
    return add_noise(batch, noise, mask_token_id=getattr(tokenizer, "mask_token_id", None), special=special,
                     mean=config.get("mean"), std=config.get("std"), generator=generator)


def _cycle(size: int, count: int, micro: int, seed: int) -> list[int]:
    """Micro-batch `micro`'s share of an endless, reshuffled-each-pass walk over `size` samples."""
    start = micro * count
    picked = []
    for position in range(start, start + count):
        cycle, offset = divmod(position, size)
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 31 + cycle))
        picked.append(int(order[offset]))
    return picked


def _total(losses: nn.ModuleList, s_out: Any, t_out: Any, batch: dict[str, Tensor], step: int
           ) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the loss terms; a NaN or inf stops the run, naming the step and the term."""
    total: Tensor | float = 0.0
    parts: dict[str, float] = {}
    for i, loss in enumerate(losses):
        value = loss(s_out, t_out, batch)
        if not torch.isfinite(value):
            raise TrainingDiverged(f"step {step + 1}: loss term '{loss.kind}' (#{i}) is {value.item()}",
                                   hint="lower train.lr, check the data; the last good checkpoint is kept")
        name = loss.kind if sum(1 for other in losses if other.kind == loss.kind) == 1 else f"{loss.kind}.{i}"
        parts[name] = loss.weight * value.item()
        total = total + loss.weight * value
    return total, parts  # type: ignore[return-value]


def _mask(batch: dict[str, Tensor], reader: Adapter, probability: float, seed: int, step: int
          ) -> dict[str, Tensor]:
    """MLM masking, the same for teacher and student, seeded by step so a resumed run masks alike."""
    tokenizer = reader.tokenizer  # type: ignore[attr-defined]
    ids = batch["input_ids"]
    special = _special_mask(batch, tokenizer)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    masked, labels = mask_tokens(ids.cpu(), special.cpu(), tokenizer.mask_token_id, len(tokenizer),
                                 probability, generator=generator)
    return {**batch, "input_ids": masked.to(ids.device), "mlm_labels": labels.to(ids.device)}


def _special_mask(batch: dict[str, Tensor], tokenizer: Any) -> Tensor:
    """True where a token must never be masked: [CLS], [SEP], padding."""
    ids = batch["input_ids"]
    special = torch.tensor([tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                            for row in ids.tolist()], dtype=torch.bool, device=ids.device)
    return special | (batch["attention_mask"] == 0)


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


# --- devices, precision, schedules ----------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("train.device is cuda, and no CUDA device is visible", hint="use device: auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def precision_context(precision: str, device: torch.device) -> tuple[Callable, Any]:
    """autocast + GradScaler: bf16 where the GPU has it, fp16 with loss scaling otherwise, fp32 on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext, torch.amp.GradScaler("cpu", enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def make_schedule(optimizer: torch.optim.Optimizer, kind: str, total: int, warmup_ratio: float
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- the run folder ----------------------------------------------------------------------------------


def _start(run: Run, profile: Profile, resume: bool) -> dict[str, Any]:
    """Open the run folder: fresh, or resumed from its last checkpoint."""
    run.root.mkdir(parents=True, exist_ok=True)
    if resume:
        if not run.checkpoint.is_file():
            raise BadInput(f"--resume: no checkpoint at {run.checkpoint}", hint="run distill without --resume first")
        return torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    if run.checkpoint.is_file():
        raise BadInput(f"{run.root} holds an earlier run (checkpoints/last.pt)",
                       hint="pass --resume to continue it, or point `output` at a new folder")
    import yaml
    lock = {"profile": profile_json(profile), "versions": {"kdcli": kdcli.__version__, "torch": str(torch.__version__)}}
    atomic_write_text(run.root / "profile.lock.yaml", yaml.safe_dump(lock, sort_keys=False))
    run.metrics.unlink(missing_ok=True)
    return {"stage": 0}
