"""Export targets: what `kdcli export` and `kdcli evaluate --model FILE` ask of a deployment format.

A target exports a model's export view to one file, validates that file against PyTorch, quantizes it, runs
it (evaluate) and times it beside PyTorch (latency.json). ONNX through onnxruntime, with dynamic int8, is the
one target today; another runtime or quantizer is a class with the same methods, registered in TARGETS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from kdcli.errors import BadInput
from kdcli.onnx.export import export_onnx, read_metadata, set_metadata, short_error
from kdcli.onnx.latency import latency_rows
from kdcli.onnx.parity import ParityReport, check_parity
from kdcli.onnx.quantize import quantize_int8

if TYPE_CHECKING:
    from kdcli.models.base import Exportable

Batch = dict[str, Tensor]
Run = Callable[[Batch], dict[str, Tensor]]  # a batch -> every output of the exported file, by name, in order


class ExportTarget(Protocol):
    name: str                 # the profile's export section for it (export.onnx)
    file: str                 # the exported file's name in the export folder
    quantized_file: str

    def export(self, view: Exportable, example: Batch, path: Path, options: Any,
               metadata: Mapping[str, str] | None = None) -> Path: ...

    def validate(self, view: Exportable, path: Path, batches: list[Batch], atol: float) -> ParityReport: ...

    def quantize(self, path: Path, out: Path) -> Path: ...

    def run(self, path: Path, task: str | None = None, classes: int | None = None) -> Run: ...

    def time(self, models: Mapping[str, tuple[Any, Path | None]], make_inputs: Callable[[int], Batch],
             batch_sizes: Sequence[int], shape_key: str, shape: int, threads: int, min_seconds: float
             ) -> list[dict[str, Any]]: ...


class OnnxTarget:
    name = "onnx"
    file = "model.onnx"
    quantized_file = "model.int8.onnx"

    def export(self, view: Exportable, example: Batch, path: Path, options: Any,
               metadata: Mapping[str, str] | None = None) -> Path:
        """`options`: the profile's export.onnx (opset); `metadata`: what the file says about itself."""
        path = export_onnx(view.module, _ordered(example, view.input_names), path, output_names=view.output_names,
                           dynamic_axes=view.dynamic_axes, opset=options.opset)
        if metadata:
            set_metadata(path, metadata)
        return path

    def validate(self, view: Exportable, path: Path, batches: list[Batch], atol: float) -> ParityReport:
        """Max abs difference per output to PyTorch on every batch, in onnxruntime."""
        return check_parity(view.module, path, [_ordered(b, view.input_names) for b in batches], atol,
                            view.output_names)

    def quantize(self, path: Path, out: Path) -> Path:
        """Dynamic int8 weights; the file keeps what the fp32 one says about itself (task, classes)."""
        quantized = quantize_int8(path, out)
        set_metadata(quantized, read_metadata(path))
        return quantized

    def run(self, path: Path, task: str | None = None, classes: int | None = None) -> Run:
        """onnxruntime on CPU, fed the same batch dicts PyTorch gets. `task`, `classes`: what the caller's job
        expects; a file that is no ONNX model, or one of another task or width, is bad input naming it."""
        session = _session_for(path, task, classes)
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]

        def run(batch: Batch) -> dict[str, Tensor]:
            values = session.run(outputs, {name: batch[name].cpu().numpy() for name in inputs})
            return {name: torch.from_numpy(np.asarray(value)) for name, value in zip(outputs, values)}
        return run

    def time(self, models: Mapping[str, tuple[Any, Path | None]], make_inputs: Callable[[int], Batch],
             batch_sizes: Sequence[int], shape_key: str, shape: int, threads: int, min_seconds: float
             ) -> list[dict[str, Any]]:
        """latency.json's rows: PyTorch and onnxruntime per model and batch size."""
        return latency_rows(models, make_inputs, batch_sizes, shape_key, shape, threads, min_seconds=min_seconds)


def _session_for(path: Path, task: str | None, classes: int | None) -> Any:
    import onnxruntime as ort
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile types, not exported
        raise BadInput(f"--model {path}: not a model onnxruntime can load ({short_error(exc)})",
                       hint="pass the model.onnx that kdcli export wrote, or export again") from exc
    made_for = session.get_modelmeta().custom_metadata_map.get("task")
    if task is not None and made_for and made_for != task:
        raise BadInput(f"--model {path}: exported for task {made_for}, and this profile's task is {task}",
                       hint="evaluate it with the profile it was exported from")
    shape = session.get_outputs()[0].shape
    width = shape[-1] if shape else None
    if classes is not None and isinstance(width, int) and width != classes:
        raise BadInput(f"--model {path}: its output has {width} values, and this job has {classes} classes",
                       hint="evaluate it with the profile it was exported from")
    return session


TARGETS: dict[str, ExportTarget] = {"onnx": OnnxTarget()}


def target_for(path: Path) -> ExportTarget | None:
    """The target whose files end like `path` (model.onnx, model.int8.onnx: onnx), or None."""
    return next((t for t in TARGETS.values() if Path(path).suffix == Path(t.file).suffix), None)


def _ordered(batch: Batch, names: list[str]) -> Batch:
    return {name: batch[name] for name in names}
