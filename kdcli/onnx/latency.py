"""Latency measurement: teacher vs student, PyTorch vs ONNX Runtime, on CPU.

Method: ``warmup`` untimed calls, then timed calls (``time.perf_counter``) until both ``min_runs`` calls and
``min_seconds`` of timed work are reached (capped at ``max_runs``); p50/p90/p99 are linear-interpolated
percentiles of the per-call times. Nothing is printed; functions return data.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import Tensor, nn

from kdcli.onnx.export import eval_mode
from kdcli.onnx.parity import ort_session, to_numpy

# A p90 this far above the p50 means other processes took the CPU during the measurement.
NOISY_P90_OVER_P50 = 1.5
INT8 = "student-int8"  # the int8 student: onnxruntime rows only
MODEL_ORDER = ("teacher", "student", INT8)
RUNTIME_ORDER = ("pytorch", "onnxruntime")


class _LatencyDoc(TypedDict):
    threads: int
    rows: list[dict[str, Any]]
    speedup: dict[str, dict[str, float]]
    size_bytes: dict[str, int]


class LatencyReport(_LatencyDoc, total=False):
    """latency.json; ``speedup_int8`` (teacher p50 / int8 student p50, onnxruntime) when an int8 model was
    timed; the export command adds ``chart`` (latency.png, or None without matplotlib) to what it returns."""

    speedup_int8: dict[str, dict[str, float]]
    chart: str | None


def measure(fn: Callable[[], object], *, warmup: int = 3, min_runs: int = 10, min_seconds: float = 0.5,
            max_runs: int = 1000) -> dict[str, float | int]:
    """Time ``fn()``: p50_ms, p90_ms, p99_ms, mean_ms, min_ms, max_ms, std_ms, runs, total_s."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if min_runs < 1:
        raise ValueError(f"min_runs must be >= 1, got {min_runs}")
    if max_runs < min_runs:
        raise ValueError(f"max_runs ({max_runs}) must be >= min_runs ({min_runs})")
    if min_seconds < 0:
        raise ValueError(f"min_seconds must be >= 0, got {min_seconds}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    total = 0.0
    clock = time.perf_counter
    while len(times) < max_runs and (len(times) < min_runs or total < min_seconds):
        t0 = clock()
        fn()
        dt = clock() - t0
        times.append(dt)
        total += dt
    ms = np.asarray(times, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "max_ms": float(ms.max()), "std_ms": float(ms.std()), "runs": int(ms.size), "total_s": float(total)}


def latency_rows(models: Mapping[str, tuple[nn.Module | None, Path | str | None]],
                 make_inputs: Callable[[int], dict[str, Tensor]], batch_sizes: Sequence[int], shape_key: str,
                 shape_value: int, threads: int, *, warmup: int = 3, min_runs: int = 10, min_seconds: float = 0.5,
                 max_runs: int = 1000) -> list[dict[str, Any]]:
    """One row per model x runtime x batch size.

    ``models`` maps "teacher"/"student"/"student-int8" to ``(torch_module_or_None, onnx_path_or_None)``; the
    module takes the inputs positionally, in ``make_inputs`` dict order (None: onnxruntime rows only). The same
    inputs (made once per batch size) go to every model and runtime. torch's intra-op threads (restored after)
    and ORT's ``intra_op_num_threads`` are ``threads``.
    """
    if shape_key not in ("seq_len", "image_size"):
        raise ValueError(f"shape_key must be 'seq_len' or 'image_size', got {shape_key!r}")
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise ValueError(f"batch sizes must be a non-empty list of integers >= 1, got {list(batch_sizes)}")
    if not models:
        raise ValueError("no models to time")

    order = [m for m in MODEL_ORDER if m in models] + [m for m in models if m not in MODEL_ORDER]
    knobs = {"warmup": warmup, "min_runs": min_runs, "min_seconds": min_seconds, "max_runs": max_runs}
    rows: list[dict[str, Any]] = []
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        sessions = {name: ort_session(Path(path), threads=int(threads))
                    for name, (_, path) in models.items() if path is not None}
        with contextlib.ExitStack() as stack:
            for module, _ in models.values():
                if module is not None:
                    stack.enter_context(eval_mode(module))
            for bs in sizes:
                inputs = make_inputs(bs)
                feeds = {k: to_numpy(v) for k, v in inputs.items()}
                for name in order:
                    module = models[name][0]
                    timings = {} if module is None else {
                        "pytorch": measure(_torch_fn(module, list(inputs.values())), **knobs)}
                    if name in sessions:
                        timings["onnxruntime"] = measure(_ort_fn(sessions[name], feeds, name), **knobs)
                    rows += [_row(name, runtime, bs, shape_key, shape_value, timings[runtime])
                             for runtime in RUNTIME_ORDER if runtime in timings]
    finally:
        torch.set_num_threads(old_threads)
    return rows


def _torch_fn(module: nn.Module, inputs: list[Tensor]) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return module(*inputs)

    return run


def _ort_fn(session: Any, feeds: dict[str, np.ndarray], name: str) -> Callable[[], object]:
    need = [i.name for i in session.get_inputs()]
    missing = [n for n in need if n not in feeds]
    if missing:
        raise ValueError(f"make_inputs gives no {missing} needed by the {name} ONNX model")
    return functools.partial(session.run, None, {n: feeds[n] for n in need})


def _row(model: str, runtime: str, bs: int, shape_key: str, shape_value: int, t: Mapping[str, Any]) -> dict[str, Any]:
    p50 = max(float(t["p50_ms"]), 1e-9)
    p90 = float(t["p90_ms"])
    return {"model": model, "runtime": runtime, "batch_size": int(bs), shape_key: int(shape_value),
            "p50_ms": round(p50, 4), "p90_ms": round(p90, 4), "p99_ms": round(float(t["p99_ms"]), 4),
            "mean_ms": round(float(t["mean_ms"]), 4), "samples_per_s": round(bs / (p50 / 1e3), 2),
            "runs": int(t["runs"]), "noisy": p90 > NOISY_P90_OVER_P50 * p50,
            # text: prefill throughput, the figure decoder LMs are compared on
            **({"tokens_per_s": round(bs * shape_value / (p50 / 1e3), 1)} if shape_key == "seq_len" else {})}


def speedup(rows: Sequence[Mapping[str, Any]], of: str = "student") -> dict[str, dict[str, float]]:
    """teacher p50 / `of`'s p50 per runtime and batch size ({"onnxruntime": {"1": x}, ...})."""
    p50 = {(str(r["model"]), str(r["runtime"]), int(r["batch_size"])): float(r["p50_ms"]) for r in rows}
    out: dict[str, dict[str, float]] = {"onnxruntime": {}} if of == INT8 else {"onnxruntime": {}, "pytorch": {}}
    for (model, runtime, bs), teacher in sorted(p50.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        student = p50.get((of, runtime, bs))
        if model == "teacher" and student is not None and student > 0:
            out.setdefault(runtime, {})[str(bs)] = round(teacher / student, 3)
    return out


def latency_report(rows: Sequence[Mapping[str, Any]], threads: int, sizes: Mapping[str, int]) -> LatencyReport:
    """The latency.json document."""
    report: LatencyReport = {"threads": int(threads), "rows": [dict(r) for r in rows], "speedup": speedup(rows),
                             "size_bytes": dict(sizes)}
    if any(r["model"] == INT8 for r in rows):
        report["speedup_int8"] = speedup(rows, INT8)
    return report
