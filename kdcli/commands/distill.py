"""distill: train the student against the frozen teacher, stage by stage, into the run folder."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import yaml
from rich.console import Console

import kdcli
from kdcli.commands.preflight import preflight
from kdcli.console import table
from kdcli.data.splits import concat, load_split
from kdcli.errors import BadInput
from kdcli.metrics import collect, outputs_of
from kdcli.models.causal_lm import align_vocab
from kdcli.profile import Profile, profile_json
from kdcli.run import Run
from kdcli.runtime.distributed import Session, barrier, session
from kdcli.runtime.files import atomic_write_text, check_writable, refuse_inputs_among, remove_owned
from kdcli.runtime.lock import run_lock
from kdcli.train.checkpoint import load_checkpoint, save_checkpoint
from kdcli.train.loop import Job, OnStep, new_state, steps_of, train_stage, write_card
from kdcli.train.schedule import seed_everything
from kdcli.train.state import stage_done
from kdcli.train.tracking import open_tracker, plot_metrics
from kdcli.train.tracking import require as require_trackers


@dataclass
class DistillResult:
    output_dir: str
    student: str
    best: str | None
    best_score: float | None
    device: str
    world_size: int
    eval: dict[str, Any] = field(default_factory=dict)  # the final student's PairMetrics, as in eval.json

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self, out: Console) -> None:
        out.print(f"[green]done[/]: student written to {self.student}")
        if self.eval:  # {"metrics": {accuracy}, "agreement": {top1}} as rows: accuracy, agreement top1
            rows = {**self.eval.get("metrics", {}),
                    **{f"agreement {k}": v for k, v in self.eval.get("agreement", {}).items()}}
            out.print(table("eval (student)", ["metric", "value"], rows.items()))


def distill(profile: Profile, *, resume: bool = False, force: bool = False,
            on_step: OnStep | None = None, trust_cache: bool = False) -> DistillResult:
    """Train the student the profile names; writes the run folder as it goes. `force` starts over in an
    output folder that holds an earlier run: what `Run.replaced_by_distill` lists goes, once the preflight passed.
    `trust_cache`: the caller put this teacher's outputs on this data in the run's cache/ (compress shares one
    cache between candidates); a fresh run otherwise removes what it finds there."""
    if resume and force:
        raise BadInput("--resume continues the run in `output`, --force replaces it: pass one of them")
    # One run per output folder: a second distill there refuses (exit 2) instead of overwriting this one.
    # Rank 0 alone holds the lock under torchrun: the other ranks write nothing.
    require_trackers(profile.train.report_to)  # a missing extra, an unwritable folder: before any model loads
    check_writable(profile.output)
    with session(profile.train.device) as where, run_lock(profile.output) if where.main else nullcontext():
        if force:  # refused before any model loads when the profile reads from what --force replaces
            refuse_inputs_among(Run(profile.output).replaced_by_distill(), profile.inputs())
        return _distill(profile, where, resume, force, on_step, trust_cache)


def _distill(profile: Profile, where: Session, resume: bool, force: bool, on_step: OnStep | None,
             trust_cache: bool = False) -> DistillResult:
    job = _prepare(profile, where)
    if force and where.main:  # only once the preflight passed: a refused job replaces nothing
        remove_owned(job.run.replaced_by_distill(), profile.inputs())
    barrier(where.world)
    resumed = _open_run(job, resume, trust_cache)
    if where.main:
        job.tracker = open_tracker(profile.train.report_to, job.run.root, profile.name, profile_json(profile))
    try:
        return _train(job, resumed, on_step)
    finally:
        if job.tracker is not None:
            job.tracker.close()


def _train(job: Job, resumed: dict[str, Any] | None, on_step: OnStep | None) -> DistillResult:
    profile, where = job.profile, job.session
    best = resumed["best"] if resumed else None
    for index, stage in enumerate(profile.stages()):
        if resumed and index < resumed["stage"]:
            continue
        steps_per_epoch, total_steps = steps_of(job, stage)
        state = new_state(job, index, stage, total_steps, best)
        if resumed and index == resumed["stage"]:
            state.load_state_dict(resumed)
            if where.world.distributed:  # ranks draw different dropout masks, as in an uninterrupted run
                torch.manual_seed(profile.train.seed + where.world.rank * 1_000_003 + state.step)
        train_stage(job, state, stage, steps_per_epoch, total_steps, on_step)
        best = state.best
        if where.main:
            save_checkpoint(job.run.checkpoint, stage_done(job.student, index + 1, best))
    if resumed and resumed["stage"] >= len(profile.stages()):  # a finished run: its weights, as they were
        job.student.module.load_state_dict(resumed["student"])
    return _finish(job, best)


def _prepare(profile: Profile, where: Session) -> Job:
    """The preflight check runs too (models loaded, classes settled, data read and checked), then the device."""
    cfg, device = profile.train, where.device
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if profile.data.transfer and not any(s.teacher_needs and not s.uses_labels for s in profile.loss_specs()):
        raise BadInput("data.transfer: no loss learns from the teacher without labels, so the student learns "
                       "nothing there", hint="add hinton, hidden_mse or another teacher loss, or drop data.transfer")
    found = preflight(profile)
    teacher, student, reader = found.teacher, found.student, found.reader
    assert student is not None and reader is not None  # preflight without for_check loads both or raises
    if student.tokenizer is None and reader.tokenizer is not None:
        student.tokenizer = reader.tokenizer  # saved beside it: the student serves alone
    student.to(device)
    if teacher is not None:
        teacher.to(device).module.requires_grad_(False)
        teacher.module.eval()  # frozen: no dropout, no grads, ever
    if cfg.compile:
        student.module.compile()  # in place: parameter names (and so checkpoints) stay as they are
    train, task = found.train, profile.task
    assert train is not None  # preflight without for_check reads data.train (or data.transfer) or raises
    if task.causal:  # logits over the vocabulary both models share
        align_vocab(teacher, student)  # type: ignore[arg-type]
    completions = task.pseudo == "completions"  # the teacher's completions join the training set
    if completions and profile.data.pseudo:
        train = concat(train, load_split(profile, "pseudo", reader))
    teacher_eval = None
    if where.main and teacher is not None and found.evalset is not None and not task.streamed:  # it never changes
        teacher_eval = collect(outputs_of(teacher, profile.task), found.evalset, cfg.batch_size, device)[0]
    return Job(profile, Run(profile.output), where, student, teacher, reader, train, found.evalset,
               None if completions else found.pseudo, teacher_eval, transfer=found.transfer,
               classes=found.classes, losses=found.losses, samples=found.samples)


def _finish(job: Job, best: float | None) -> DistillResult:
    """Rank 0 saves the student and evaluates it once more."""
    run = job.run
    job.student.module.eval()
    result = DistillResult(output_dir=str(run.root), student=str(run.student),
                           best=str(run.best) if best is not None else None, best_score=best,
                           device=str(job.session.device), world_size=job.session.world.size)
    if job.session.main:
        job.student.save(run.student)
        result.eval = job.evaluate().to_json() if job.evalset is not None else {}
        job.log({"final": True, "eval": result.eval})
        write_card(job, run.student, result.eval, _steps(run))
        plot_metrics(run.metric_records(), run.metrics_chart)
    barrier(job.session.world)
    return result


def _open_run(job: Job, resume: bool, trust_cache: bool = False) -> dict[str, Any] | None:
    """Fresh (the lock file written, old metrics gone), or resumed from the last checkpoint.
    Every rank checks; rank 0 writes."""
    run, main = job.run, job.session.main
    if resume:
        state = load_checkpoint(run.checkpoint)
        if main:
            _forget_metrics_after(run, [stage.name for stage in job.profile.stages()], state)
        barrier(job.session.world)
        return state
    if run.checkpoint.is_file():
        raise BadInput(f"{run.root} holds an earlier run (checkpoints/last.pt)",
                       hint="pass --resume to continue it, --force to replace it, or point `output` at a new folder")
    if main:
        run.root.mkdir(parents=True, exist_ok=True)
        lock = {"profile": profile_json(job.profile),
                "versions": {"kdcli": kdcli.__version__, "torch": str(torch.__version__)}}
        if job.classes is not None:  # the job's one label mapping, recorded once
            lock["classes"] = job.classes.to_json()
        atomic_write_text(run.lock_file, yaml.safe_dump(lock, sort_keys=False))
        run.metrics.unlink(missing_ok=True)
        # A teacher cache holds what an earlier run's losses read: only --resume (or the caller that put it
        # there) may trust it.
        if not trust_cache:
            remove_owned([run.caches], job.profile.inputs())
    barrier(job.session.world)
    return None


def _forget_metrics_after(run: Run, stages: list[str], state: dict[str, Any]) -> None:
    """Drop the records a killed run logged after its last checkpoint: the resumed run logs them again."""
    def logged_before(record: dict[str, Any]) -> bool:
        stage = stages.index(record["stage"]) if record.get("stage") in stages else None
        return stage is not None and (stage, record.get("step", 0)) <= (state["stage"], state["step"])
    run.keep_metrics(logged_before)


def _steps(run: Run) -> int | None:
    """Optimizer steps the run took over all stages, as metrics.jsonl logged them."""
    steps: dict[str, int] = {}
    for record in run.metric_records():
        if "stage" in record and "step" in record:
            steps[record["stage"]] = max(steps.get(record["stage"], 0), int(record["step"]))
    return sum(steps.values()) or None
