"""int8 dynamic quantization of an exported ONNX model."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from kdcli.errors import KdcliError
from kdcli.onnx.export import short_error
from kdcli.runtime.files import atomic_path


def quantize_int8(onnx_path: Path, out_path: Path) -> Path:
    """Dynamic int8 quantization (QInt8 weights with a scale per output channel, activations quantized at run
    time), written atomically. Per-channel scales cost no speed and keep far more: on the demo's 3-layer
    embedding student the int8 file's cosine to fp32 rose from 0.972 (one scale per tensor) to 0.995.

    Pre-processes first (ONNX shape inference + ORT basic graph optimisation, no symbolic shape inference: it
    cannot follow dynamo's ``Min(512, seq)``-style shapes); if pre-processing fails, quantizes the raw export.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        raise ValueError(f"ONNX file not found: {onnx_path}")
    root = logging.getLogger()
    old_level = root.level
    try:
        with tempfile.TemporaryDirectory(prefix="kdcli-quant-") as td, atomic_path(out_path) as tmp:
            src = _pre_process(onnx_path, Path(td) / "pre.onnx")
            root.setLevel(max(old_level, logging.ERROR))  # quantize_dynamic logs a "please pre-process" hint
            try:
                quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
            except Exception as e:
                raise KdcliError(f"int8 quantization of {onnx_path} failed: {short_error(e)}") from e
    finally:
        root.setLevel(old_level)
    return out_path


def _pre_process(onnx_path: Path, out: Path) -> Path:
    """The pre-processed model at ``out``, or ``onnx_path`` itself when pre-processing fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(onnx_path), str(out), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation only
        return onnx_path
    return out
