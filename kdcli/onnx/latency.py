"""Latency measurement: teacher vs student, PyTorch vs ONNX Runtime, on CPU.

Method: ``warmup`` untimed calls, then timed calls (``time.perf_counter``) until
both ``min_runs`` calls and ``min_seconds`` of timed work are reached (capped at
``max_runs``); p50/p90/p99 are linear-interpolated percentiles of the per-call times.

Library code: nothing is printed; functions return data.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdcli.errors import BadInput
from kdcli.runtime.files import sibling_tmp

MODEL_ORDER = ("teacher", "student")
RUNTIME_ORDER = ("pytorch", "onnxruntime")


def measure(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    min_runs: int = 10,
    min_seconds: float = 0.5,
    max_runs: int = 1000,
) -> dict[str, float | int]:
    """Time ``fn()``; returns p50_ms, p90_ms, p99_ms, mean_ms, min_ms, max_ms, std_ms, runs, total_s."""
    if warmup < 0:
        raise BadInput(f"warmup must be >= 0, got {warmup}")
    if min_runs < 1:
        raise BadInput(f"min_runs must be >= 1, got {min_runs}")
    if max_runs < min_runs:
        raise BadInput(f"max_runs ({max_runs}) must be >= min_runs ({min_runs})")
    if min_seconds < 0:
        raise BadInput(f"min_seconds must be >= 0, got {min_seconds}")
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
    return {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "std_ms": float(ms.std()),
        "runs": int(ms.size),
        "total_s": float(total),
    }


def _torch_fn(module: nn.Module, inputs: list[Tensor]) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return module(*inputs)

    return run


def _ort_fn(session: Any, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    def run() -> object:
        return session.run(None, feeds)

    return run


def latency_rows(
    models: Mapping[str, tuple[nn.Module, Path | str | None]],
    make_inputs: Callable[[int], dict[str, Tensor]],
    batch_sizes: Sequence[int],
    shape_key: str,
    shape_value: int,
    threads: int,
    *,
    warmup: int = 3,
    min_runs: int = 10,
    min_seconds: float = 0.5,
    max_runs: int = 1000,
) -> list[dict[str, Any]]:
    """One row per model x runtime x batch size.

    ``models`` maps "teacher"/"student" to ``(torch_module, onnx_path_or_None)``; the
    module takes the inputs positionally, in ``make_inputs`` dict order. The same
    inputs (made once per batch size) are used for every model and runtime.
    Sets torch's intra-op threads to ``threads`` (restored after) and ORT's
    ``intra_op_num_threads`` to ``threads``.
    """
    from kdcli.onnx.parity import ort_session

    if shape_key not in ("seq_len", "image_size"):
        raise BadInput(f"shape_key must be 'seq_len' or 'image_size', got {shape_key!r}")
    if int(threads) < 1:
        raise BadInput(f"threads must be >= 1, got {threads}")
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise BadInput(f"batch sizes must be a non-empty list of integers >= 1, got {list(batch_sizes)}")
    if not models:
        raise BadInput("no models to time")

    order = [m for m in MODEL_ORDER if m in models] + [m for m in models if m not in MODEL_ORDER]
    knobs = {"warmup": warmup, "min_runs": min_runs, "min_seconds": min_seconds, "max_runs": max_runs}
    rows: list[dict[str, Any]] = []
    old_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        sessions = {
            name: ort_session(Path(path), threads=int(threads))
            for name, (_, path) in models.items()
            if path is not None
        }
        # eval() for timing; afterwards restore each submodule's own flag (train(flag)
        # is recursive and would flip an eval-mode model wrapped in a fresh module).
        flags = [(m, m.training) for mod, _ in models.values() for m in mod.modules()]
        for mod, _ in models.values():
            mod.eval()
        try:
            for bs in sizes:
                inputs = make_inputs(bs)
                tensors = list(inputs.values())
                feeds_np = {k: v.detach().cpu().contiguous().numpy() for k, v in inputs.items()}
                for name in order:
                    module, _ = models[name]
                    timings = {"pytorch": measure(_torch_fn(module, tensors), **knobs)}
                    if name in sessions:
                        sess = sessions[name]
                        need = [i.name for i in sess.get_inputs()]
                        missing = [n for n in need if n not in feeds_np]
                        if missing:
                            raise BadInput(f"make_inputs gives no {missing} needed by the {name} ONNX model")
                        timings["onnxruntime"] = measure(
                            _ort_fn(sess, {n: feeds_np[n] for n in need}), **knobs
                        )
                    for runtime in RUNTIME_ORDER:
                        if runtime in timings:
                            rows.append(_row(name, runtime, bs, shape_key, shape_value, timings[runtime]))
        finally:
            for m, flag in flags:
                m.training = flag
    finally:
        torch.set_num_threads(old_threads)
    return rows


def _row(model: str, runtime: str, bs: int, shape_key: str, shape_value: int, t: dict) -> dict[str, Any]:
    p50 = max(float(t["p50_ms"]), 1e-9)
    return {
        "model": model,
        "runtime": runtime,
        "batch_size": int(bs),
        shape_key: int(shape_value),
        "p50_ms": round(p50, 4),
        "p90_ms": round(float(t["p90_ms"]), 4),
        "p99_ms": round(float(t["p99_ms"]), 4),
        "mean_ms": round(float(t["mean_ms"]), 4),
        "samples_per_s": round(bs / (p50 / 1e3), 2),
        "runs": int(t["runs"]),
    }


def speedup(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """teacher p50 / student p50 per runtime and batch size ({"onnxruntime": {"1": x}, ...})."""
    p50: dict[tuple[str, str, int], float] = {}
    for r in rows:
        p50[(str(r["model"]), str(r["runtime"]), int(r["batch_size"]))] = float(r["p50_ms"])
    out: dict[str, dict[str, float]] = {"onnxruntime": {}, "pytorch": {}}
    for (model, runtime, bs), teacher in sorted(p50.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if model != "teacher":
            continue
        student = p50.get(("student", runtime, bs))
        if student is None or student <= 0:
            continue
        out.setdefault(runtime, {})[str(bs)] = round(teacher / student, 3)
    return out


def latency_report(rows: Sequence[Mapping[str, Any]], threads: int, sizes: Mapping[str, int]) -> dict[str, Any]:
    """The latency.json document."""
    return {
        "threads": int(threads),
        "rows": [dict(r) for r in rows],
        "speedup": speedup(rows),
        "size_bytes": dict(sizes),
    }


def _shape_key(rows: Sequence[Mapping[str, Any]]) -> str | None:
    for r in rows:
        for k in ("seq_len", "image_size"):
            if k in r:
                return k
    return None


def _fmt_bytes(n: float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def render_markdown(report: Mapping[str, Any], parity: Mapping[str, Any] | None) -> str:
    """report.md: latency table, speed-up lines, sizes and a parity line."""
    rows = list(report.get("rows", []))
    key = _shape_key(rows)
    lines = ["# Latency report", ""]
    lines.append(f"CPU threads: {report.get('threads', '?')}")
    lines.append("")
    head = ["model", "runtime", "batch"] + ([key] if key else []) + ["p50 ms", "p90 ms", "p99 ms", "samples/s"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 3 + (["---:"] if key else []) + ["---:"] * 4) + "|")
    for r in rows:
        cells = [str(r["model"]), str(r["runtime"]), str(r["batch_size"])]
        if key:
            cells.append(str(r.get(key, "")))
        cells += [
            f"{float(r['p50_ms']):.3f}",
            f"{float(r['p90_ms']):.3f}",
            f"{float(r['p99_ms']):.3f}",
            f"{float(r['samples_per_s']):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    sp = report.get("speedup") or {}
    lines.append("## Speed-up (teacher p50 / student p50)")
    lines.append("")
    any_sp = False
    for runtime in RUNTIME_ORDER + tuple(k for k in sp if k not in RUNTIME_ORDER):
        for bs, x in (sp.get(runtime) or {}).items():
            any_sp = True
            lines.append(f"- {runtime}, batch {bs}: {float(x):.2f}x")
    if not any_sp:
        lines.append("- none (need teacher and student rows for the same runtime and batch)")
    lines.append("")

    sizes = report.get("size_bytes") or {}
    if sizes:
        lines.append("## Size")
        lines.append("")
        for name, n in sizes.items():
            lines.append(f"- {name}: {_fmt_bytes(n)} ({int(n)} bytes)")
        lines.append("")

    lines.append(_parity_line(parity))
    lines.append("")
    return "\n".join(lines)


def _parity_line(parity: Mapping[str, Any] | None) -> str:
    if not parity:
        return "Parity: not checked"
    outs = parity.get("outputs") or {}
    diffs = [o.get("max_abs_diff") for o in outs.values()]
    worst = None
    if diffs:
        worst = math.inf if any(d is None for d in diffs) else max(float(d) for d in diffs)
    verdict = "PASS" if parity.get("ok") else "FAIL"
    n = len(parity.get("shapes") or [])
    worst_s = "n/a" if worst is None else ("inf (shape mismatch or error)" if not math.isfinite(worst) else f"{worst:.3g}")
    return f"Parity: {verdict} (max abs diff {worst_s}, atol {float(parity.get('atol', 0.0)):.0e}, {n} shape(s))"


def plot_png(report: Mapping[str, Any], path: Path) -> Path | None:
    """p50 latency by batch size, one line per model x runtime. None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    path = Path(path)
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in report.get("rows", []):
        series.setdefault((str(r["model"]), str(r["runtime"])), []).append(
            (int(r["batch_size"]), float(r["p50_ms"]))
        )
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = {"teacher": "-", "student": "--"}
    markers = {"pytorch": "o", "onnxruntime": "s"}
    for (model, runtime), pts in sorted(series.items()):
        pts.sort()
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            linestyle=styles.get(model, ":"),
            marker=markers.get(runtime, "^"),
            label=f"{model} / {runtime}",
        )
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"p50 latency, {report.get('threads', '?')} CPU thread(s)")
    xs = sorted({b for pts in series.values() for b, _ in pts})
    if xs:
        ax.set_xticks(xs)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    tmp = sibling_tmp(path, ".png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
