"""evaluate: teacher and student side by side on the eval data, with gates for CI.

What ships is what is measured: `--model` may name an exported `.onnx`, run through onnxruntime.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

from kdcli.card import read_facts, update_card
from kdcli.commands.checkpoints import load_student, load_teacher
from kdcli.console import human_bytes, table
from kdcli.data.labels import LabelMap, job_labels
from kdcli.data.splits import Split, load_split
from kdcli.errors import BadInput, GateFailed
from kdcli.metrics import Forward, agreement, collect, outputs_of, task_metrics
from kdcli.models import Adapter, dir_size, mean_pool
from kdcli.onnx.target import target_for
from kdcli.profile import Profile
from kdcli.run import Run
from kdcli.runtime.distributed import Session, session
from kdcli.runtime.files import atomic_write_json, check_writable
from kdcli.tasks import Task, task_named

OnBatch = Callable[[str, int, int], None]  # (model, batches done, batches in all)


@dataclass
class Gates:
    min_retention: float | None = None
    min_metric: float | None = None
    max_kl: float | None = None


@dataclass
class GateResult:
    """One CI gate as eval.json reports it; `value` is None when the evaluation has no such number."""

    name: str          # the flag: --min-retention, --min-metric, --max-kl
    threshold: float
    value: float | None
    passed: bool
    measures: str      # what value is: retention, accuracy, kl, ...

    def failure(self) -> str:
        if self.value is None:
            return f"gate {self.name} {self.threshold}: this evaluation has no {self.measures}"
        return f"gate {self.name} {self.threshold} failed: {self.measures} is {self.value:.4f}"


@dataclass
class EvalReport:
    """eval.json: the judged model beside its teacher (teacher fields None without one)."""

    model: str
    task: str          # the task's name
    samples: int
    metrics: dict[str, float]
    teacher_metrics: dict[str, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    retention: float | None = None
    params: dict[str, int | None] = field(default_factory=dict)
    size_bytes: dict[str, int | None] = field(default_factory=dict)
    samples_per_s: dict[str, float | None] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)

    def primary(self) -> tuple[str, float | None]:
        return task_named(self.task).primary_metric(self.metrics, self.agreement)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self, out: Console) -> None:
        rows = [[name, self.teacher_metrics.get(name), value] for name, value in self.metrics.items()]
        rows += [[f"agreement {k}", None, v] for k, v in self.agreement.items()]
        rows += [["retention", None, self.retention],
                 ["parameters", self.params["teacher"], self.params["student"]],
                 ["size", human_bytes(self.size_bytes["teacher"]), human_bytes(self.size_bytes["student"])],
                 ["samples/s", self.samples_per_s["teacher"], self.samples_per_s["student"]]]
        out.print(table(f"evaluate: {self.model} on {self.samples} samples", ["", "teacher", "student"], rows))
        if self.gates:
            out.print(table("gates", ["gate", "threshold", "value", ""],
                            [[g.name, g.threshold, g.value, "passed" if g.passed else "FAILED"] for g in self.gates]))


def evaluate(profile: Profile, model: str = "student", output: Path | None = None, gates: Gates | None = None,
             on_batch: OnBatch | None = None) -> EvalReport:
    """Judge the chosen model against the teacher, and the gates on it; write eval.json to the run folder
    (or `output`). `on_batch(model, done, total)` follows the progress."""
    destination = Path(output) if output else Run(profile.output).eval_report
    check_writable(destination)  # before the evaluation, not after it
    with session(profile.train.device) as where:  # under torchrun, each rank evaluates its share
        teacher = load_teacher(profile)
        if teacher is not None:
            teacher.to(where.device)
        candidate = _candidate(profile, model, teacher, where.device)
        if candidate.adapter is not None and candidate.adapter.pipeline is None and teacher is not None:
            candidate.adapter.pipeline = teacher.pipeline  # a student saved without it embeds as the teacher does
        reader = teacher or candidate.adapter or load_student(profile, classes=candidate.classes)
        split = _eval_split(profile, reader, candidate.classes)
        if profile.task.streamed:
            report = _evaluate_lm(profile, split, candidate.forward, teacher, where)
        else:
            report = _evaluate_outputs(profile, split, candidate.forward, teacher, where, on_batch)
        report.model = candidate.name
        report.params["student"], report.size_bytes["student"] = candidate.params, candidate.size
        report.gates = judge(report, gates or Gates())
        if where.main:
            atomic_write_json(destination, report.to_json())
            _card(candidate, report)
    return report


def _card(candidate: Candidate, report: EvalReport) -> None:
    """The evaluated student's card (a folder kdcli wrote, never the teacher's) gets the metrics and retention."""
    folder = Path(candidate.name)
    if candidate.adapter is None or not folder.is_dir() or not read_facts(folder):
        return
    update_card(folder, {"eval": {"samples": report.samples, "metrics": report.metrics,
                                  "teacher_metrics": report.teacher_metrics, "agreement": report.agreement,
                                  "retention": report.retention}})


def _evaluate_outputs(profile: Profile, split: Split, forward: Forward, teacher: Adapter | None, where: Session,
                      on_batch: OnBatch | None) -> EvalReport:
    """Whole-output tasks: each model over the split, then task metrics and agreement on the collected outputs."""
    batch_size = profile.train.batch_size
    s_out, labels, s_rate = _timed(forward, split, batch_size, where, _follow(on_batch, "student"))
    report = EvalReport(model="", task=profile.task.name, samples=split.size,
                        metrics=task_metrics(s_out, labels, split),
                        params={"student": None, "teacher": None}, size_bytes={"student": None, "teacher": None},
                        samples_per_s={"student": s_rate, "teacher": None})
    if teacher is not None:
        t_out, _, t_rate = _timed(outputs_of(teacher, profile.task), split, batch_size, where,
                                  _follow(on_batch, "teacher"))
        report.teacher_metrics = task_metrics(t_out, labels, split)
        report.agreement = agreement(s_out, t_out, profile.task)
        report.params["teacher"] = teacher.param_count()
        report.size_bytes["teacher"] = dir_size(teacher.path) if teacher.path else None
        report.samples_per_s["teacher"] = t_rate
        report.retention = profile.task.retention_of(report.metrics, report.teacher_metrics, report.agreement)
    return report


def _evaluate_lm(profile: Profile, split: Split, forward: Forward, teacher: Adapter | None, where: Session
                 ) -> EvalReport:
    """Perplexity (token-weighted), next-token top-1 agreement and mean KL. The models run interleaved, batch
    by batch, so speed is export's to measure (prefill tokens/s in latency.json)."""
    from kdcli.lm_metrics import evaluate_lm
    t_forward = outputs_of(teacher, profile.task) if teacher is not None else None
    lm = evaluate_lm(forward, t_forward, split, profile.train.batch_size, where.device, where.world)
    return EvalReport(model="", task=profile.task.name, samples=split.size, metrics=lm.student,
                      teacher_metrics=lm.teacher, agreement=lm.agreement,
                      retention=profile.task.retention_of(lm.student, lm.teacher, lm.agreement),
                      params={"student": None, "teacher": teacher.param_count() if teacher else None},
                      size_bytes={"student": None, "teacher": dir_size(teacher.path) if teacher else None},
                      samples_per_s={"student": None, "teacher": None})


def judge(report: EvalReport, gates: Gates) -> list[GateResult]:
    """Every gate that was set, each passed or not: all of them, not the first that fails."""
    metric_name, metric = report.primary()
    checks = [
        ("--min-retention", gates.min_retention, report.retention, "retention", lambda v, g: v >= g),
        ("--min-metric", gates.min_metric, metric, metric_name or "metric", lambda v, g: v >= g),
        ("--max-kl", gates.max_kl, report.agreement.get("kl"), "kl", lambda v, g: v <= g),
    ]
    if gates.max_kl is not None and report.agreement and "kl" not in report.agreement:
        raise BadInput(f"--max-kl does not apply to task {report.task}: it compares the models by "
                       f"{', '.join(sorted(report.agreement))}, not by KL",
                       hint="gate it with --min-retention or --min-metric instead")
    return [GateResult(flag, gate, value, value is not None and ok(value, gate), label)
            for flag, gate, value, label, ok in checks if gate is not None]


def check_gates(report: EvalReport) -> None:
    """Raise GateFailed naming every unmet gate with its threshold and value."""
    failed = [gate for gate in report.gates if not gate.passed]
    if not failed:
        return
    hint = ("retention and kl need a teacher; the metric needs labels"
            if any(gate.value is None for gate in failed) else "eval.json lists every gate under \"gates\"")
    prefix = f"{len(failed)} of {len(report.gates)} gates failed: " if len(failed) > 1 else ""
    raise GateFailed(prefix + "; ".join(gate.failure() for gate in failed), hint=hint)


def _eval_split(profile: Profile, reader: Adapter, classes: LabelMap | None) -> Split:
    if not profile.data.eval:
        raise BadInput("evaluate needs data.eval in the profile", hint="add data.eval: PATH")
    return load_split(profile, "eval", reader, labels=profile.task.has_classes, classes=classes)


@dataclass
class Candidate:
    """The model evaluate judges: how to run it, what it weighs, and the job's classes it is judged on."""

    forward: Forward
    params: int | None
    size: int
    name: str
    classes: LabelMap | None
    adapter: Adapter | None = None  # None for an .onnx file (and for the teacher, which is passed separately)


def _candidate(profile: Profile, which: str, teacher: Adapter | None, device: torch.device) -> Candidate:
    """The model to judge: student, teacher, a checkpoint folder or an .onnx file."""
    if which == "teacher":
        if teacher is None:
            raise BadInput("--model teacher: the profile has no teacher")
        return Candidate(outputs_of(teacher, profile.task), teacher.param_count(), dir_size(teacher.path), "teacher",
                         job_labels(profile))
    if which == "student":
        path = Run(profile.output).student
        if not path.exists():
            raise BadInput(f"no distilled student at {path}", hint="run kdcli distill first, or pass --model PATH")
    else:
        path = Path(which)
        if not path.exists():
            raise BadInput(f"--model {which}: no such file or folder",
                           hint="use student, teacher, a checkpoint folder or an .onnx file")
    if target_for(path) is not None:  # an exported file: judged as it ships
        run_student = Run(profile.output).student
        classes = job_labels(profile, run_student if run_student.exists() else None)
        return Candidate(exported_forward(path, profile.task, classes), None, dir_size(path), str(path),
                         classes)
    classes = job_labels(profile, path)
    student = load_student(profile, path, classes=classes).to(device)
    student.module.eval()
    return Candidate(outputs_of(student, profile.task), student.param_count(), dir_size(path), str(path), classes,
                     student)


def exported_forward(path: Path, task: Task, classes: LabelMap | None = None) -> Forward:
    """An exported file run by its target (onnxruntime for .onnx) on the batch dicts PyTorch gets: its first
    output, or for embeddings the sentence embedding (pooled and normalized as the model's pipeline does)."""
    target = target_for(path)
    assert target is not None, f"no export target reads {path}"
    run = target.run(path, task=task.name, classes=len(classes) if classes is not None else None)

    def forward(batch: dict[str, Tensor]) -> Tensor:
        outputs = run(batch)
        if task.output == "embedding" and "sentence_embedding" in outputs:
            return outputs["sentence_embedding"]
        result = next(iter(outputs.values()))
        if task.output == "embedding" and result.dim() == 3:
            mask = batch.get("attention_mask")
            return mean_pool(result, mask.cpu() if mask is not None else None)
        return result
    return forward


def _follow(on_batch: OnBatch | None, model: str) -> Callable[[int, int], None] | None:
    return (lambda done, total: on_batch(model, done, total)) if on_batch else None


def _timed(forward: Forward, split: Split, batch_size: int, where: Session,
           on_batch: Callable[[int, int], None] | None = None) -> tuple[Tensor, Tensor | None, float]:
    start = time.perf_counter()
    out, labels = collect(forward, split, batch_size, where.device, where.world, on_batch)
    return out, labels, split.size / max(time.perf_counter() - start, 1e-9)
