"""The export command: the student to ONNX, proven to match in onnxruntime, with a latency report.

kdcli/onnx holds the model-agnostic parts; this module ties them to a profile: real eval batches for parity,
the data's sequence length or image size for latency, and the run's export/ folder for model.onnx,
parity.json, latency.json, report.md (and latency.png).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

import kdcli
from kdcli.card import read_facts, update_card
from kdcli.commands.checkpoints import load_student, load_teacher
from kdcli.console import human_bytes, table
from kdcli.data.labels import LabelMap, job_labels
from kdcli.data.splits import Split, load_split
from kdcli.errors import BadInput, GateFailed
from kdcli.models import Adapter, dir_size, load_tokenizer, read_pipeline
from kdcli.models.base import Exportable
from kdcli.onnx.latency import INT8, LatencyReport, latency_report
from kdcli.onnx.parity import ParityReport, default_atol
from kdcli.onnx.report import plot_png, render_markdown
from kdcli.onnx.target import TARGETS, ExportTarget
from kdcli.profile import Profile
from kdcli.run import Run
from kdcli.runtime.files import atomic_write_json, atomic_write_text, check_writable
from kdcli.tasks import Task


@dataclass
class Int8Result:
    """model.int8.onnx judged as its users judge it: the task metric on the eval data beside the fp32 model's.

    `metric` is accuracy where the data has labels, the cosine to the teacher for embeddings with a teacher,
    else agreement with the fp32 model (top-1, or cosine), whose own value is then 1. `drop` is fp32 - int8;
    `max_drop` and `passed` are set when `--max-drop` gates it. `max_abs_diff` per output, to PyTorch, is
    informational: int8 is never within fp32's tolerance.
    """

    onnx: Path
    size_bytes: int
    samples: int
    metric: str | None
    fp32: float | None
    int8: float | None
    agreement: dict[str, float]          # int8 against fp32 on the same samples: top1 (or cosine)
    max_abs_diff: dict[str, float | None]
    max_drop: float | None = None

    @property
    def drop(self) -> float | None:
        return None if self.fp32 is None or self.int8 is None else self.fp32 - self.int8

    @property
    def passed(self) -> bool | None:
        if self.max_drop is None:
            return None
        return self.drop is not None and self.drop <= self.max_drop

    def to_json(self) -> dict[str, Any]:
        out = {"onnx": str(self.onnx), "size_bytes": self.size_bytes, "samples": self.samples, "metric": self.metric,
               "fp32": self.fp32, "int8": self.int8, "drop": self.drop, "agreement_with_fp32": dict(self.agreement),
               "max_abs_diff": dict(self.max_abs_diff)}
        if self.max_drop is not None:
            out.update(max_drop=self.max_drop, passed=self.passed)
        return out

    def render(self, out: Console) -> None:
        if self.metric is not None:
            gate = "not gated" if self.max_drop is None else f"gate --max-drop {self.max_drop:g}: " + (
                "ok" if self.passed else "FAILED")
            out.print(f"int8 vs fp32 on {self.samples} samples: {self.metric} {_num(self.int8)} (fp32 "
                      f"{_num(self.fp32)}, drop {_num(self.drop)}; {gate})", highlight=False, markup=False,
                      soft_wrap=True)
        diffs = ", ".join(f"{name} {'inf' if d is None else format(d, '.3g')}" for name, d in self.max_abs_diff.items())
        agreement = ", ".join(f"{k} {v:.4f}" for k, v in self.agreement.items())
        out.print(f"int8: {self.onnx} ({human_bytes(self.size_bytes)})" + (f", agreement with fp32: {agreement}"
                  if agreement else "") + f", max abs diff to PyTorch: {diffs} (see int8.json)",
                  highlight=False, markup=False, soft_wrap=True)


@dataclass
class ExportResult:
    """What export_profile wrote; to_json() is the `kdcli export --json` document."""

    output_dir: Path
    onnx: Path
    parity: ParityReport
    size_bytes: dict[str, int]                 # {"onnx": bytes of model.onnx}
    int8: Int8Result | None = None             # with --quantize int8
    latency: LatencyReport | None = None       # unless --no-latency

    def to_json(self) -> dict[str, Any]:
        """What `kdcli export --json` prints: int8 only when quantized, latency only when measured."""
        out: dict[str, Any] = {"output_dir": str(self.output_dir), "onnx": str(self.onnx),
                               "parity": self.parity.to_json(), "size_bytes": dict(self.size_bytes)}
        if self.int8 is not None:
            out["int8"] = self.int8.to_json()
        if self.latency is not None:
            out["latency"] = dict(self.latency)
        return out

    def render(self, out: Console) -> None:
        diffs = self.parity.diffs()
        rows = [[name, diffs[name], "ok" if o["ok"] else "FAIL"] for name, o in self.parity.outputs.items()]
        out.print(table(f"parity (atol {self.parity.atol:g}, {len(self.parity.shapes)} shapes)",
                        ["output", "max abs diff", ""], rows))
        if self.int8 is not None:
            self.int8.render(out)
        if self.latency is not None:
            _render_latency(self.latency, out)
        out.print(f"written to {self.output_dir}")


def _render_latency(report: LatencyReport, out: Console) -> None:
    rows = [[r["model"], r["runtime"], r["batch_size"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["samples_per_s"]]
            for r in report["rows"]]
    out.print(table(f"latency ({report['threads']} threads)", ["model", "runtime", "batch", "p50 ms", "p90 ms",
                                                                "p99 ms", "samples/s"], rows))
    for key, who in (("speedup", "student"), ("speedup_int8", "int8 student")):
        for runtime, by_batch in report.get(key, {}).items():
            if by_batch:
                out.print(f"{who} speed-up over teacher, {runtime}: "
                          + ", ".join(f"batch {b}: {x:.2f}x" for b, x in by_batch.items()))


def export_profile(profile: Profile, student_dir: Path | None = None, output: Path | None = None,
                   atol: float | None = None, quantize: str | None = None, latency: bool = True,
                   on_event: Callable[[str], None] | None = None, latency_seconds: float = 0.5,
                   max_drop: float | None = None) -> ExportResult:
    """Export the student, check parity on real batches, and optionally quantize and time it.

    With quantize="int8", the int8 model is scored on the eval data beside the fp32 one; `max_drop` gates it
    (see int8_gate)."""
    if max_drop is not None and quantize != "int8":
        raise BadInput("--max-drop judges the int8 model: it needs --quantize int8", hint="add --quantize int8")
    run = Run(profile.output)
    student_dir = Path(student_dir or run.student)
    if not student_dir.exists():
        raise BadInput(f"no student at {student_dir}", hint="run kdcli distill first, or pass --student DIR")
    out = Path(output or run.export)
    check_writable(out)  # before the export and the latency runs, not after them
    existed = out.exists()
    try:
        return _export(profile, student_dir, out, atol, quantize, latency, on_event, latency_seconds, max_drop)
    except BaseException:  # a failure or a signal: no empty export folder left behind
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _export(profile: Profile, student_dir: Path, out: Path, atol: float | None, quantize: str | None,
            latency: bool, on_event: Callable[[str], None] | None, latency_seconds: float,
            max_drop: float | None) -> ExportResult:
    say = on_event or (lambda message: None)
    classes = job_labels(profile, student_dir)
    student = load_student(profile, student_dir, classes=classes)
    teacher_folder = _teacher_folder(profile)  # where a student saved without its pipeline or tokenizer finds it
    if student.pipeline is None and profile.task.output == "embedding" and teacher_folder:
        student.pipeline = read_pipeline(teacher_folder)
    student.module.eval()
    view = student.exportable()
    batches = _parity_batches(profile, student)
    tolerance = atol if atol is not None else profile.export.atol
    tolerance = default_atol(student.family) if tolerance is None else tolerance

    target = TARGETS["onnx"]  # the one target today
    say(f"exporting {student_dir} to ONNX (opset {profile.export.onnx.opset})")
    onnx_path = target.export(view, batches[0], out / target.file, profile.export.onnx,
                              onnx_metadata(profile.task, classes))
    if student.tokenizer is None and profile.task.data != "image" and teacher_folder:
        student.tokenizer = load_tokenizer(teacher_folder)
    student.write_serving_files(out, classes.names if classes is not None else None, profile.data.image_size)
    say("checking parity in onnxruntime")
    parity = target.validate(view, onnx_path, batches, tolerance)
    atomic_write_json(out / "parity.json", parity.to_json())
    result = ExportResult(output_dir=out, onnx=onnx_path, parity=parity, size_bytes={"onnx": dir_size(onnx_path)})
    if quantize == "int8":
        say("quantizing to int8 and scoring it beside fp32 on the eval data")
        result.int8 = _int8(target, profile, student, classes, view, onnx_path, out, batches, max_drop)
        result.size_bytes["int8"] = result.int8.size_bytes
    if latency:
        say("measuring latency: teacher vs student, PyTorch vs onnxruntime")
        int8_path = result.int8.onnx if result.int8 is not None else None
        result.latency = _latency(target, profile, student, batches[0], onnx_path, out, latency_seconds, int8_path)
    write_report(out, parity, result.latency, result.int8)
    if read_facts(student_dir):  # a student kdcli wrote: its card gets the export's numbers
        update_card(student_dir, {"export": _card_facts(result)})
    return result


def _card_facts(result: ExportResult) -> dict[str, Any]:
    diffs = [d for d in result.parity.diffs().values()]
    facts: dict[str, Any] = {"parity_ok": result.parity.ok, "atol": result.parity.atol,
                             "max_abs_diff": None if None in diffs else max(diffs, default=None),
                             "onnx_size_bytes": result.size_bytes.get("onnx")}
    if result.latency is not None:
        facts.update(speedup=result.latency.get("speedup"), speedup_int8=result.latency.get("speedup_int8"))
    if result.int8 is not None:
        facts["int8"] = {k: v for k, v in result.int8.to_json().items() if k in ("metric", "fp32", "int8", "drop",
                                                                                    "size_bytes")}
    return facts


def _teacher_folder(profile: Profile) -> Path | None:
    """The teacher's folder (None without one, or for a timm weights file)."""
    folder = Path(profile.teacher.path) if profile.teacher is not None else None
    return folder if folder is not None and folder.is_dir() else None


def onnx_metadata(task: Task, classes: LabelMap | None) -> dict[str, str]:
    """What the ONNX file says about itself: the task, and the class name of each output index."""
    meta = {"task": task.name, "producer": f"kdcli {kdcli.__version__}"}
    if classes is not None:
        meta["id2label"] = json.dumps({str(i): name for i, name in enumerate(classes.names)})
    return meta


def parity_gate(parity: ParityReport) -> None:
    """Exit 1 (GateFailed) when any output missed the tolerance or changed shape."""
    if not parity.ok:
        raise GateFailed(_parity_failure(parity), hint="see parity.json; --atol sets the tolerance")


def _parity_batches(profile: Profile, student: Adapter) -> list[dict[str, Tensor]]:
    """Real eval batches when there are any, at several batch sizes and lengths, plus a synthetic one."""
    batches: list[dict[str, Tensor]] = []
    source = profile.data.eval or profile.data.train
    if source:
        which = "eval" if profile.data.eval else "train"
        split: Split = load_split(profile, which, student, labels=False)
        for size in (1, 3, 8):
            order = split.order(size, shuffle=False)
            if order:
                batches.append(split.collate(order[len(order) // 2]))
    batches.append(student.example_batch(2))
    inputs = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
    return [{k: v for k, v in b.items() if k in inputs} for b in batches]


def int8_gate(int8: Int8Result | None) -> None:
    """Exit 1 (GateFailed) when --max-drop was given and the int8 model lost more of the metric than that."""
    if int8 is None or int8.passed is not False:
        return
    drop = "unknown (no eval data to score it on)" if int8.drop is None else f"{int8.drop:.4f}"
    raise GateFailed(f"gate --max-drop {int8.max_drop:g} failed: int8 {int8.metric} is "
                     f"{_num(int8.int8)} against fp32's {_num(int8.fp32)}, a drop of {drop}",
                     hint="see int8.json; ship model.onnx (fp32), or raise --max-drop")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _int8(target: ExportTarget, profile: Profile, student: Adapter, classes: LabelMap | None, view: Exportable,
          onnx_path: Path, out: Path, batches: list[dict[str, Tensor]], max_drop: float | None) -> Int8Result:
    """Quantize, then score both files on the eval data (train without eval) as evaluate would."""
    quantized = target.quantize(onnx_path, out / target.quantized_file)
    diffs = target.validate(view, quantized, batches, 0.0).diffs()
    result = Int8Result(onnx=quantized, size_bytes=dir_size(quantized), samples=0, metric=None, fp32=None, int8=None,
                        agreement={}, max_abs_diff=diffs, max_drop=max_drop)
    which = "eval" if profile.data.eval else "train" if profile.data.train else None
    if which is not None:
        split = load_split(profile, which, student, labels=profile.task.has_classes, classes=classes)
        _score_int8(profile, split, onnx_path, quantized, result)
    atomic_write_json(out / "int8.json", result.to_json())
    return result


def _score_int8(profile: Profile, split: Split, fp32_path: Path, int8_path: Path, result: Int8Result) -> None:
    from kdcli.commands.evaluate import exported_forward
    from kdcli.metrics import collect, int8_score, outputs_of

    cpu, size, task = torch.device("cpu"), profile.train.batch_size, profile.task
    fp32, labels = collect(exported_forward(fp32_path, task), split, size, cpu)
    int8, _ = collect(exported_forward(int8_path, task), split, size, cpu)
    teacher = load_teacher(profile) if task.output == "embedding" else None  # judged by the cosine to its embeddings
    target = collect(outputs_of(teacher, task), split, size, cpu)[0] if teacher is not None else None
    result.samples = split.size
    result.agreement, result.metric, result.fp32, result.int8 = int8_score(task, fp32, int8, labels, target, split)


def _latency(target: ExportTarget, profile: Profile, student: Adapter, batch: dict[str, Tensor], onnx_path: Path,
             out: Path, min_seconds: float = 0.5, int8_path: Path | None = None) -> LatencyReport:
    """Teacher vs student (and the int8 student, onnxruntime only) at the profile's batch sizes and the data's
    shape."""
    view = student.exportable()
    models: dict[str, tuple[Any, Path | None]] = {"student": (view.module, onnx_path)}
    sizes = {"student": dir_size(onnx_path)}
    if int8_path is not None:
        models[INT8] = (None, int8_path)
        sizes[INT8] = dir_size(int8_path)
    teacher = load_teacher(profile) if profile.teacher is not None else None
    t_view = teacher.exportable() if teacher is not None else None
    if teacher is not None and t_view is not None and t_view.input_names == view.input_names:  # the same batches
        # exported apart from the student's folder, which serves on its own
        t_onnx = target.export(t_view, batch, teacher_export(out) / target.file, profile.export.onnx)
        models["teacher"] = (t_view.module, t_onnx)
        sizes["teacher"] = dir_size(t_onnx)
    shape = _shape_of(batch, view.shape_key)
    threads = profile.train.threads or torch.get_num_threads() or os.cpu_count() or 1
    rows = target.time(models, lambda size: _synthetic(batch, view.input_names, size), profile.export.batch_sizes,
                       view.shape_key, shape, threads, min_seconds)
    report = latency_report(rows, threads, sizes)
    chart = plot_png(report, out / "latency.png")
    report["chart"] = str(chart) if chart else None
    atomic_write_json(out / "latency.json", {k: v for k, v in report.items() if k != "chart"})
    return report


def write_report(out: Path, parity: ParityReport, latency: LatencyReport | None, int8: Int8Result | None) -> None:
    """report.md: parity, sizes, the int8 model's score beside fp32, and latency when measured (without it,
    export --no-latency, the sizes come from the ONNX files)."""
    sizes = None
    if latency is None:
        sizes = {"student": dir_size(out / "model.onnx")} | ({INT8: int8.size_bytes} if int8 is not None else {})
    atomic_write_text(out / "report.md", render_markdown(latency, parity.to_json(),
                                                         int8.to_json() if int8 is not None else None, sizes=sizes))


def teacher_export(out: Path) -> Path:
    """Where the teacher's ONNX (for the latency comparison) goes: a sibling of the export folder."""
    return out.parent / f"{out.name}-teacher"


def _shape_of(batch: dict[str, Tensor], key: str) -> int:
    if key == "seq_len":
        return int(batch["input_ids"].shape[1])
    return int(batch["pixel_values"].shape[-1])


def _synthetic(batch: dict[str, Tensor], names: list[str], size: int) -> dict[str, Tensor]:
    """A batch of `size` rows shaped like a real one (rows repeated), every position real."""
    rows = {name: batch[name][:1].repeat(size, *([1] * (batch[name].dim() - 1))) for name in names}
    if "attention_mask" in rows:
        rows["attention_mask"] = torch.ones_like(rows["attention_mask"])
    return rows


def _parity_failure(parity: ParityReport) -> str:
    diffs = parity.diffs()  # as parity.json has them: a non-finite diff reads None
    worst = ", ".join(f"{name}: max abs diff {diffs[name]}" for name, o in parity.outputs.items() if not o["ok"])
    return f"ONNX output does not match PyTorch within atol {parity.atol:g} ({worst})"
