"""What the student gains: student vs teacher latency in onnxruntime and PyTorch at batch 1, 8, 32,
for MiniLM-L6 -> 3 layers and for a timm pair (resnet50 -> resnet18), measured side by side.

python -m bench.speed
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.common import emit, minilm_dir
from kdcli.models.hf import load_hf
from kdcli.models.shrink import shrink_transformer
from kdcli.models.timm import TimmAdapter, create
from kdcli.onnx.export import export_onnx
from kdcli.onnx.latency import latency_rows, speedup
from kdcli.profile import StudentInit

BATCHES = [1, 8, 32]


def _pair_rows(teacher, student, make_inputs, shape_key: str, shape: int, work: Path) -> list[dict]:
    models = {}
    for name, adapter in (("teacher", teacher), ("student", student)):
        view = adapter.exportable()
        path = export_onnx(view.module, make_inputs(2), work / f"{name}.onnx", output_names=view.output_names,
                           dynamic_axes=view.dynamic_axes)
        models[name] = (view.module, path)
    return latency_rows(models, make_inputs, BATCHES, shape_key, shape, torch.get_num_threads(),
                        min_seconds=1.0)


def minilm(work: Path) -> dict:
    teacher = load_hf(minilm_dir(), "embedding")
    student, _, _ = shrink_transformer(teacher, StudentInit(layers="uniform:3"), teacher.task)
    ids = teacher.tokenizer(["a sentence of about the length of an sst-2 review , twenty tokens or so ."] * 32,
                            return_tensors="pt")

    def inputs(batch: int) -> dict:
        return {"input_ids": ids["input_ids"][:batch], "attention_mask": ids["attention_mask"][:batch]}
    rows = _pair_rows(teacher, student, inputs, "seq_len", ids["input_ids"].shape[1], work)
    return {"pair": "all-MiniLM-L6-v2 -> 3 layers", "rows": rows, "speedup": speedup(rows), "goal": ">= 1.9x at 32"}


def timm_pair(work: Path) -> dict:
    teacher = TimmAdapter(create("resnet50", num_classes=10).eval(), "resnet50", {"num_classes": 10})
    student = TimmAdapter(create("resnet18", num_classes=10).eval(), "resnet18", {"num_classes": 10})
    pixels = torch.randn(32, 3, 64, 64)
    rows = _pair_rows(teacher, student, lambda b: {"pixel_values": pixels[:b]}, "image_size", 64, work)
    return {"pair": "resnet50 -> resnet18 (64x64)", "rows": rows, "speedup": speedup(rows)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        emit({"bench": "speed", "results": [minilm(Path(tmp)), timm_pair(Path(tmp))]})


if __name__ == "__main__":
    main()
