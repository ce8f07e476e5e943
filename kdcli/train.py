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
from kdcli.batches import Split, to_device, train_and_eval
from kdcli.check import load_student, load_teacher
from kdcli.errors import BadInput, TrainingDiverged
from kdcli.io import append_jsonl, atomic_path, atomic_write_text
from kdcli.losses import DistillLoss, build_losses, needs
from kdcli.losses.functional import mask_tokens
from kdcli.metrics import evaluate_pair, outputs_of, collect
from kdcli.models import Adapter
from kdcli.profile import Profile, StageSpec, profile_json

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
    if cfg.cache_teacher:
        raise BadInput("train.cache_teacher is not built yet", hint="set train.cache_teacher: false")
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
            step = _restore(state, student, losses, optimizer, scheduler, scaler)
        mask_spec = next((spec for spec in stage.losses if spec.kind == "mlm"), None)

        student.module.train()
        started, seen = time.perf_counter(), 0
        while step < total_steps:
            epoch, position = divmod(step * cfg.grad_accum, batches_per_epoch)
            order = train.order(cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch)
            chunk = order[position: position + cfg.grad_accum]
            terms: dict[str, float] = {}
            try:
                for indices in chunk:
                    batch = to_device(train.collate(indices), device)
                    if mask_spec is not None:
                        batch = _mask(batch, reader, mask_spec.mlm_probability, cfg.seed, step)
                    with autocast():
                        t_out = None
                        if teacher is not None and t_needs:
                            with torch.no_grad():
                                t_out = teacher.forward(batch, t_needs)
                        s_out = student.forward(batch, s_needs)
                        loss, parts = _total(losses, s_out, t_out, batch, step)
                    scaler.scale(loss / len(chunk)).backward()
                    for name, value in parts.items():
                        terms[name] = terms.get(name, 0.0) + value / len(chunk)
                    seen += len(indices)
                if cfg.max_grad_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
            except KeyboardInterrupt:
                optimizer.zero_grad(set_to_none=True)
                _save_checkpoint(run, stage_index, step, student, losses, optimizer, scheduler, scaler, best)
                raise
            rate = seen / max(time.perf_counter() - started, 1e-9)
            record = {"stage": stage.name, "step": step, "epoch": round(step / steps_per_epoch, 4),
                      "loss": sum(terms.values()), **{f"loss/{k}": v for k, v in terms.items()},
                      "lr": scheduler.get_last_lr()[0], "samples_per_s": rate}
            if step % cfg.log_every == 0 or step == total_steps:
                append_jsonl(run.metrics, record)
            if on_step:
                on_step({**record, "total_steps": total_steps})
            if _eval_due(step, total_steps, steps_per_epoch, cfg.eval_every) and evalset is not None:
                metrics = _evaluate(student, teacher, evalset, profile, device, teacher_eval)
                append_jsonl(run.metrics, {"stage": stage.name, "step": step, "eval": metrics})
                score = primary(metrics)
                if score is not None and (best is None or score > best):
                    best = score
                    student.save(run.best)
                student.module.train()
            if _checkpoint_due(step, total_steps, steps_per_epoch, cfg):
                _save_checkpoint(run, stage_index, step, student, losses, optimizer, scheduler, scaler, best)
        _save_checkpoint(run, stage_index + 1, 0, student, None, None, None, None, best)

    student.module.eval()
    student.save(run.student)
    final = _evaluate(student, teacher, evalset, profile, device, teacher_eval) if evalset is not None else {}
    summary = {"output_dir": str(run.root), "student": str(run.student), "best": str(run.best) if best is not None
               else None, "eval": final, "best_score": best, "device": str(device)}
    append_jsonl(run.metrics, {"final": True, "eval": final})
    return summary


# --- the pieces of a step -------------------------------------------------------------------------


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
    special = torch.tensor([tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                            for row in ids.tolist()], dtype=torch.bool, device=ids.device)
    special |= batch["attention_mask"] == 0
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    masked, labels = mask_tokens(ids.cpu(), special.cpu(), tokenizer.mask_token_id, len(tokenizer),
                                 probability, generator=generator)
    return {**batch, "input_ids": masked.to(ids.device), "mlm_labels": labels.to(ids.device)}


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


# --- checkpoints ----------------------------------------------------------------------------------


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
    lock = {"profile": profile_json(profile), "versions": {"kdcli": kdcli.__version__, "torch": torch.__version__}}
    atomic_write_text(run.root / "profile.lock.yaml", yaml.safe_dump(lock, sort_keys=False))
    run.metrics.unlink(missing_ok=True)
    return {"stage": 0}


def _save_checkpoint(run: Run, stage: int, step: int, student: Adapter, losses: nn.ModuleList | None,
                     optimizer: Any, scheduler: Any, scaler: Any, best: float | None) -> None:
    state = {
        "stage": stage, "step": step, "best": best,
        "student": student.module.state_dict(),
        "losses": losses.state_dict() if losses is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": _numpy_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    with atomic_path(run.checkpoint) as tmp:
        torch.save(state, tmp)


def _numpy_state() -> tuple:
    """numpy's RNG state as plain types and a tensor, so the checkpoint loads with weights_only."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))


def _restore(state: dict, student: Adapter, losses: nn.ModuleList, optimizer: Any, scheduler: Any,
             scaler: Any) -> int:
    student.module.load_state_dict(state["student"])
    if state.get("optimizer") is None:  # saved between stages: only the weights carry over
        return 0
    losses.load_state_dict(state["losses"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"])
