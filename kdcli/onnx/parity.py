"""PyTorch vs ONNX Runtime parity: the max abs diff per output over a set of batches, as optimum validates."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcli.errors import KdcliError
from kdcli.onnx.export import eval_mode, short_error

# Same tolerances as Hugging Face optimum's exporters (1e-4 for transformers encoders, 1e-3 for timm models).
_DEFAULT_ATOL = {"transformers": 1e-4, "timm": 1e-3}


def default_atol(family: str) -> float:
    """Parity tolerance for a model family ("transformers" or "timm")."""
    key = str(family).strip().lower()
    if key not in _DEFAULT_ATOL:
        raise ValueError(f"unknown model family {family!r} for a default parity tolerance")
    return _DEFAULT_ATOL[key]


def ort_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU InferenceSession; ``threads`` sets intra_op_num_threads."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ONNX file not found: {path}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 4  # fatal only: run errors surface as exceptions / report entries
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise KdcliError(f"onnxruntime cannot load {path}: {short_error(e)}", hint="re-run the export") from e


def to_numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


@dataclass
class ParityReport:
    """PyTorch vs ONNX Runtime agreement over a set of input batches.

    ``outputs[name]`` holds ``max_abs_diff`` (``inf`` on a shape mismatch or run error), ``ok`` and
    ``shape_mismatch``.
    """

    ok: bool
    atol: float
    outputs: dict[str, dict[str, Any]]
    shapes: list[list[int]]
    input_shapes: list[dict[str, list[int]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def diffs(self) -> dict[str, float | None]:
        """Max abs diff per output; None where it is not finite, as parity.json writes it."""
        return {name: _finite_or_none(o["max_abs_diff"]) for name, o in self.outputs.items()}

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict: non-finite diffs are ``null`` (strict JSON has no inf)."""
        diffs = self.diffs()
        outs = {name: {"max_abs_diff": diffs[name], "ok": bool(o["ok"]),
                       **{k: v for k, v in o.items() if k not in ("max_abs_diff", "ok")}}
                for name, o in self.outputs.items()}
        out: dict[str, Any] = {"ok": bool(self.ok), "atol": float(self.atol), "outputs": outs,
                               "shapes": [list(map(int, s)) for s in self.shapes], "input_shapes": self.input_shapes}
        if self.errors:
            out["errors"] = list(self.errors)
        return out


def check_parity(module: nn.Module, onnx_path: Path, batches: list[dict[str, Tensor]], atol: float,
                 output_names: Sequence[str]) -> ParityReport:
    """Run every batch through PyTorch and ONNX Runtime; max |diff| per output.

    Never raises on a miss (the caller decides, e.g. raising GateFailed): a shape mismatch or an onnxruntime
    run error counts as not ok with ``max_abs_diff=inf``.
    """
    output_names = list(output_names)
    if not batches:
        raise ValueError("parity check needs at least one batch")
    if atol < 0 or not math.isfinite(float(atol)):
        raise ValueError(f"atol must be a finite number >= 0, got {atol}")
    sess = ort_session(onnx_path)
    ort_inputs = [i.name for i in sess.get_inputs()]
    ort_outputs = [o.name for o in sess.get_outputs()]
    missing_out = [n for n in output_names if n not in ort_outputs]
    if missing_out:
        raise ValueError(f"ONNX model {onnx_path} has no output(s) {missing_out} (it has {ort_outputs})")

    worst = dict.fromkeys(output_names, 0.0)
    details: dict[str, dict[str, Any]] = {n: {} for n in output_names}
    shapes: list[list[int]] = []
    input_shapes: list[dict[str, list[int]]] = []
    errors: list[str] = []
    with eval_mode(module), torch.inference_mode():
        for bi, batch in enumerate(batches):
            missing = [n for n in ort_inputs if n not in batch]
            if missing:
                raise ValueError(f"batch {bi} lacks input(s) {missing} needed by {onnx_path}")
            shapes.append(list(batch[ort_inputs[0]].shape))
            input_shapes.append({n: list(batch[n].shape) for n in ort_inputs})
            pt = as_outputs(module(*batch.values()), output_names)  # positional, in batch order
            try:
                onnx_outs = sess.run(output_names, {n: to_numpy(batch[n]) for n in ort_inputs})
            except Exception as e:  # noqa: BLE001
                errors.append(f"batch {bi} {input_shapes[-1]}: {short_error(e)}")
                worst = dict.fromkeys(output_names, math.inf)
                continue
            for n, t, o in zip(output_names, pt, onnx_outs):
                a = to_numpy(t).astype(np.float64, copy=False)
                b = np.asarray(o).astype(np.float64, copy=False)
                if a.shape != b.shape:
                    worst[n] = math.inf
                    details[n].setdefault("shape_mismatch_at", []).append(
                        {"batch": bi, "pytorch": list(a.shape), "onnxruntime": list(b.shape)})
                elif a.size:
                    worst[n] = max(worst[n], _max_abs_diff(a, b))
    outputs = {n: _verdict(worst[n], atol, details[n]) for n in output_names}
    return ParityReport(ok=all(o["ok"] for o in outputs.values()) and not errors, atol=float(atol),
                        outputs=outputs, shapes=shapes, input_shapes=input_shapes, errors=errors)


def as_outputs(out: Any, output_names: Sequence[str]) -> list[Tensor]:
    """A forward result (tensor, tuple, list or mapping) as a list of tensors in ``output_names`` order."""
    if isinstance(out, Tensor):
        outs = [out]
    elif isinstance(out, Mapping):
        missing = [n for n in output_names if n not in out]
        if missing:
            raise ValueError(f"model output has no {missing} (it has {list(out)})")
        outs = [out[n] for n in output_names]
    elif isinstance(out, (tuple, list)):
        outs = list(out)
    else:
        raise ValueError(f"model forward returned {type(out).__name__}; expected a tensor or a tuple of tensors")
    if len(outs) != len(output_names):
        raise ValueError(f"model returned {len(outs)} output(s) but {len(output_names)} output name(s) "
                       f"were given: {list(output_names)}")
    for name, t in zip(output_names, outs):
        if not isinstance(t, Tensor):
            raise ValueError(f"output {name!r} is {type(t).__name__}, not a tensor")
    return outs


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    d = float(np.max(np.abs(a - b)))
    if math.isfinite(d):
        return d
    # NaN/inf count only where the other side differs: equal infs and both-NaN agree.
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    rest = np.abs(a - b)[~same]
    d = float(np.max(rest)) if rest.size else 0.0
    return d if math.isfinite(d) else math.inf


def _verdict(worst: float, atol: float, details: dict[str, Any]) -> dict[str, Any]:
    mismatch = "shape_mismatch_at" in details
    ok = not mismatch and math.isfinite(worst) and worst <= atol
    return {"max_abs_diff": worst, "ok": ok, "shape_mismatch": mismatch, **details}


def _finite_or_none(d: float) -> float | None:
    d = float(d)
    return d if math.isfinite(d) else None
