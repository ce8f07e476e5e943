"""PyTorch-vs-ONNX Runtime parity (max abs diff per output, as optimum validates) and int8
dynamic quantization of an exported model.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcli.errors import BadInput, KdcliError
from kdcli.onnx.export import as_outputs, eval_mode, short_error, to_numpy, unlink_quietly
from kdcli.runtime.files import sibling_tmp

# Absolute tolerance for PyTorch-vs-ONNX Runtime parity, per model family.
# Same values as Hugging Face optimum's exporters (1e-4 for transformers
# encoders, 1e-3 for timm vision models).
_DEFAULT_ATOL = {"transformers": 1e-4, "timm": 1e-3}


def default_atol(family: str) -> float:
    """Parity tolerance for a model family ("transformers" or "timm")."""
    key = str(family).strip().lower()
    if key not in _DEFAULT_ATOL:
        raise BadInput(
            f"unknown model family {family!r} for a default parity tolerance",
            hint=f"use one of {sorted(_DEFAULT_ATOL)} or give atol explicitly",
        )
    return _DEFAULT_ATOL[key]


def ort_session(path: Path, threads: int | None = None):
    """An onnxruntime CPU InferenceSession; ``threads`` sets intra_op_num_threads."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"ONNX file not found: {path}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 4  # fatal only: run errors surface as exceptions / report entries
    if threads is not None:
        if int(threads) < 1:
            raise BadInput(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise BadInput(f"onnxruntime cannot load {path}: {short_error(e)}", hint="re-run the export") from e


# --------------------------------------------------------------------------- parity


@dataclass
class ParityReport:
    """PyTorch vs ONNX Runtime agreement over a set of input batches.

    ``outputs[name]`` holds ``max_abs_diff`` (float, ``inf`` on a shape mismatch or
    non-finite difference), ``ok`` and ``shape_mismatch``.
    """

    ok: bool
    atol: float
    outputs: dict[str, dict[str, Any]]
    shapes: list[list[int]]
    input_shapes: list[dict[str, list[int]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict. Non-finite diffs are written as ``null`` (strict JSON has no inf)."""
        outs: dict[str, dict[str, Any]] = {}
        for name, o in self.outputs.items():
            d = float(o["max_abs_diff"])
            entry: dict[str, Any] = {"max_abs_diff": d if math.isfinite(d) else None, "ok": bool(o["ok"])}
            for k, v in o.items():
                if k not in entry:
                    entry[k] = v
            outs[name] = entry
        out: dict[str, Any] = {
            "ok": bool(self.ok),
            "atol": float(self.atol),
            "outputs": outs,
            "shapes": [list(map(int, s)) for s in self.shapes],
            "input_shapes": self.input_shapes,
        }
        if self.errors:
            out["errors"] = list(self.errors)
        return out


def check_parity(
    module: nn.Module,
    onnx_path: Path,
    batches: list[dict[str, Tensor]],
    atol: float,
    output_names: Sequence[str],
    *,
    session: Any = None,
) -> ParityReport:
    """Run every batch through PyTorch and ONNX Runtime; max |diff| per output.

    Never raises on a miss (the caller decides, e.g. raising GateFailed). A shape
    mismatch or an onnxruntime run error counts as not ok with ``max_abs_diff=inf``.
    """
    output_names = list(output_names)
    if not batches:
        raise BadInput("parity check needs at least one batch")
    if atol < 0 or not math.isfinite(float(atol)):
        raise BadInput(f"atol must be a finite number >= 0, got {atol}")
    sess = session if session is not None else ort_session(onnx_path)
    ort_inputs = [i.name for i in sess.get_inputs()]
    ort_outputs = [o.name for o in sess.get_outputs()]
    missing_out = [n for n in output_names if n not in ort_outputs]
    if missing_out:
        raise BadInput(f"ONNX model {onnx_path} has no output(s) {missing_out} (it has {ort_outputs})")

    worst: dict[str, float] = {n: 0.0 for n in output_names}
    mismatch: dict[str, bool] = {n: False for n in output_names}
    details: dict[str, dict[str, Any]] = {n: {} for n in output_names}
    shapes: list[list[int]] = []
    input_shapes: list[dict[str, list[int]]] = []
    errors: list[str] = []

    with eval_mode(module), torch.inference_mode():
        for bi, batch in enumerate(batches):
            missing = [n for n in ort_inputs if n not in batch]
            if missing:
                raise BadInput(f"batch {bi} lacks input(s) {missing} needed by {onnx_path}")
            shapes.append(list(batch[ort_inputs[0]].shape))
            input_shapes.append({n: list(batch[n].shape) for n in ort_inputs})
            names = list(batch)  # the module takes inputs positionally, in batch order
            pt = as_outputs(module(*[batch[n] for n in names]), output_names)
            try:
                onnx_outs = sess.run(output_names, {n: to_numpy(batch[n]) for n in ort_inputs})
            except Exception as e:  # noqa: BLE001
                errors.append(f"batch {bi} {input_shapes[-1]}: {short_error(e)}")
                for n in output_names:
                    worst[n] = math.inf
                continue
            for n, t, o in zip(output_names, pt, onnx_outs):
                a = to_numpy(t).astype(np.float64, copy=False)
                b = np.asarray(o).astype(np.float64, copy=False)
                if a.shape != b.shape:
                    mismatch[n] = True
                    worst[n] = math.inf
                    details[n].setdefault("shape_mismatch_at", []).append(
                        {"batch": bi, "pytorch": list(a.shape), "onnxruntime": list(b.shape)}
                    )
                    continue
                if a.size == 0:
                    continue
                d = float(np.max(np.abs(a - b)))
                if not math.isfinite(d):
                    # NaN/inf where the other side differs; equal infs / both-NaN are fine
                    same = (a == b) | (np.isnan(a) & np.isnan(b))
                    rest = np.abs(a - b)[~same]
                    d = float(np.max(rest)) if rest.size else 0.0
                    if not math.isfinite(d):
                        d = math.inf
                worst[n] = max(worst[n], d)

    outputs: dict[str, dict[str, Any]] = {}
    for n in output_names:
        ok = (not mismatch[n]) and math.isfinite(worst[n]) and worst[n] <= atol
        outputs[n] = {"max_abs_diff": worst[n], "ok": ok, "shape_mismatch": mismatch[n], **details[n]}
    all_ok = all(o["ok"] for o in outputs.values()) and not errors
    return ParityReport(
        ok=all_ok, atol=float(atol), outputs=outputs, shapes=shapes, input_shapes=input_shapes, errors=errors
    )


# --------------------------------------------------------------------------- int8


def quantize_int8(onnx_path: Path, out_path: Path) -> Path:
    """Dynamic int8 quantization (QInt8 weights, activations quantized at run time).

    Pre-processes first (ONNX shape inference + ORT basic graph optimisation, no
    symbolic shape inference: that step cannot follow dynamo's ``Min(512, seq)``-style
    shapes); if pre-processing fails, quantizes the raw export. Written atomically.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise BadInput(f"ONNX file not found: {onnx_path}")
    tmp = sibling_tmp(out_path, ".onnx.tmp")
    root = logging.getLogger()
    old_level = root.level
    try:
        with tempfile.TemporaryDirectory(prefix="kdcli-quant-") as td:
            src: Path = onnx_path
            pre = Path(td) / "pre.onnx"
            try:
                quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
                src = pre
            except Exception:  # noqa: BLE001 - pre-processing is an optimisation only
                src = onnx_path
            # quantize_dynamic logs a "please pre-process" hint on the root logger.
            root.setLevel(max(old_level, logging.ERROR))
            try:
                quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
            except Exception as e:  # noqa: BLE001
                raise KdcliError(f"int8 quantization of {onnx_path} failed: {short_error(e)}") from e
        os.replace(tmp, out_path)
    finally:
        root.setLevel(old_level)
        unlink_quietly(tmp)
    return out_path
