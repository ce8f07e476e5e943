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
from torch import Tensor

import kdcli
from kdcli.data.labels import LabelMap, job_labels
from kdcli.data.splits import Split, load_split
from kdcli.errors import BadInput, GateFailed
from kdcli.models import Adapter, dir_size, load_student, load_teacher
from kdcli.models.base import Exportable
from kdcli.models.hf import HFAdapter
from kdcli.models.timm import TimmAdapter
from kdcli.onnx.export import export_onnx, read_metadata, set_metadata
from kdcli.onnx.latency import LatencyReport, latency_report, latency_rows
from kdcli.onnx.parity import ParityReport, check_parity, default_atol
from kdcli.onnx.quantize import quantize_int8
from kdcli.onnx.report import plot_png, render_markdown
from kdcli.profile import Profile
from kdcli.run import Run
from kdcli.runtime.files import atomic_write_json, atomic_write_text


@dataclass
class Int8Result:
    """model.int8.onnx and its parity to PyTorch (reported, not gated)."""

    onnx: Path
    size_bytes: int
    parity: ParityReport

    def to_json(self) -> dict[str, Any]:
        return {"onnx": str(self.onnx), "size_bytes": self.size_bytes, "parity": self.parity.to_json()}


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


def export_profile(profile: Profile, student_dir: Path | None = None, output: Path | None = None,
                   atol: float | None = None, quantize: str | None = None, latency: bool = True,
                   on_event: Callable[[str], None] | None = None, latency_seconds: float = 0.5) -> ExportResult:
    """Export the student, check parity on real batches, and optionally quantize and time it."""
    say = on_event or (lambda message: None)
    run = Run(profile.output)
    student_dir = Path(student_dir or run.student)
    if not student_dir.exists():
        raise BadInput(f"no student at {student_dir}", hint="run kdcli distill first, or pass --student DIR")
    out = Path(output or run.export)
    classes = job_labels(profile, student_dir)
    student = load_student(profile, student_dir, classes=classes)
    student.module.eval()
    view = student.exportable()
    batches = _parity_batches(profile, student)
    tolerance = atol if atol is not None else profile.export.atol
    tolerance = default_atol(student.family) if tolerance is None else tolerance

    say(f"exporting {student_dir} to ONNX (opset {profile.export.opset})")
    onnx_path = export_onnx(view.module, _ordered(batches[0], view.input_names), out / "model.onnx",
                            output_names=view.output_names, dynamic_axes=view.dynamic_axes,
                            opset=profile.export.opset)
    set_metadata(onnx_path, onnx_metadata(profile.task, classes))
    write_serving_files(out, student, classes)
    say("checking parity in onnxruntime")
    parity = _parity(view, onnx_path, batches, tolerance)
    atomic_write_json(out / "parity.json", parity.to_json())
    result = ExportResult(output_dir=out, onnx=onnx_path, parity=parity, size_bytes={"onnx": dir_size(onnx_path)})
    if quantize == "int8":
        result.int8 = _int8(view, onnx_path, out, batches, tolerance)
    if latency:
        say("measuring latency: teacher vs student, PyTorch vs onnxruntime")
        result.latency = _latency(profile, student, batches[0], onnx_path, out, parity, latency_seconds)
    return result


def onnx_metadata(task: str, classes: LabelMap | None) -> dict[str, str]:
    """What the ONNX file says about itself: the task, and the class name of each output index."""
    meta = {"task": task, "producer": f"kdcli {kdcli.__version__}"}
    if classes is not None:
        meta["id2label"] = json.dumps({str(i): name for i, name in enumerate(classes.names)})
    return meta


def write_serving_files(out: Path, student: Adapter, classes: LabelMap | None) -> None:
    """config.json beside model.onnx: the model's config, with the job's class names (id2label/label2id)."""
    if isinstance(student, HFAdapter):
        atomic_write_text(out / "config.json", student.config.to_json_string())
        return
    assert isinstance(student, TimmAdapter)
    source = Path(student.path) / "config.json" if student.path else None
    config = json.loads(source.read_text(encoding="utf-8")) if source and source.is_file() else {
        "architecture": student.arch, "num_classes": student.num_labels, "model_args": student.model_args}
    if classes is not None:
        config.update(label_names=list(classes.names), id2label={str(i): n for i, n in enumerate(classes.names)},
                      label2id=classes.label2id)
    atomic_write_json(out / "config.json", config)


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
    return [{k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "pixel_values")} for b in batches]


def _ordered(batch: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    return {name: batch[name] for name in names}


def _parity(view: Exportable, onnx_path: Path, batches: list[dict[str, Tensor]], atol: float) -> ParityReport:
    return check_parity(view.module, onnx_path, [_ordered(b, view.input_names) for b in batches], atol,
                        view.output_names)


def _int8(view: Exportable, onnx_path: Path, out: Path, batches: list[dict[str, Tensor]], atol: float) -> Int8Result:
    quantized = quantize_int8(onnx_path, out / "model.int8.onnx")
    set_metadata(quantized, read_metadata(onnx_path))
    parity = _parity(view, quantized, batches, atol)
    atomic_write_json(out / "parity.int8.json", parity.to_json())
    return Int8Result(onnx=quantized, size_bytes=dir_size(quantized), parity=parity)


def _latency(profile: Profile, student: Adapter, batch: dict[str, Tensor], onnx_path: Path, out: Path,
             parity: ParityReport, min_seconds: float = 0.5) -> LatencyReport:
    """Teacher vs student in PyTorch and onnxruntime at the profile's batch sizes and the data's shape."""
    view = student.exportable()
    models: dict[str, tuple[Any, Path | None]] = {"student": (view.module, onnx_path)}
    sizes = {"student": dir_size(onnx_path)}
    teacher = load_teacher(profile) if profile.teacher is not None else None
    if teacher is not None and teacher.family == student.family:
        t_view = teacher.exportable()
        t_onnx = export_onnx(t_view.module, _ordered(batch, t_view.input_names), out / "teacher.onnx",
                             output_names=t_view.output_names, dynamic_axes=t_view.dynamic_axes,
                             opset=profile.export.opset)
        models["teacher"] = (t_view.module, t_onnx)
        sizes["teacher"] = dir_size(t_onnx)
    shape = _shape_of(batch, view.shape_key)
    threads = profile.train.threads or torch.get_num_threads() or os.cpu_count() or 1
    rows = latency_rows(models, lambda size: _synthetic(batch, view.input_names, size), profile.export.batch_sizes,
                        view.shape_key, shape, threads, min_seconds=min_seconds)
    report = latency_report(rows, threads, sizes)
    atomic_write_json(out / "latency.json", report)
    atomic_write_text(out / "report.md", render_markdown(report, parity.to_json()))
    chart = plot_png(report, out / "latency.png")
    report["chart"] = str(chart) if chart else None
    return report


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
