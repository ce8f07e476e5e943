"""report.md and latency.png from the latency.json and parity.json documents."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdcli.onnx.latency import NOISY_P90_OVER_P50, RUNTIME_ORDER
from kdcli.runtime.files import atomic_path


def render_markdown(report: Mapping[str, Any] | None, parity: Mapping[str, Any] | None,
                    sizes: Mapping[str, int] | None = None) -> str:
    """report.md: latency table (flagging noisy rows), speed-up lines, sizes and a parity line.
    Without a latency report (export --no-latency), sizes and parity alone."""
    if report is None:
        lines = ["# Export report", "", "Latency: not measured (--no-latency)", ""]
    else:
        rows = list(report.get("rows", []))
        lines = ["# Latency report", "", f"CPU threads: {report.get('threads', '?')}", ""]
        lines += _table(rows, _shape_key(rows)) + [""] + _noise_note(rows)
        lines += _speedups(report.get("speedup") or {}) + [""]
        sizes = report.get("size_bytes") or sizes
    if sizes:
        lines += ["## Size", ""] + [f"- {name}: {_fmt_bytes(n)} ({int(n)} bytes)" for name, n in sizes.items()] + [""]
    lines += [_parity_line(parity), ""]
    return "\n".join(lines)


def _table(rows: list[Mapping[str, Any]], key: str | None) -> list[str]:
    head = ["model", "runtime", "batch"] + ([key] if key else []) + ["p50 ms", "p90 ms", "p99 ms", "samples/s"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 3 + (["---:"] if key else []) + ["---:"] * 4) + "|"]
    for r in rows:
        model = f"{r['model']} (noisy)" if r.get("noisy") else str(r["model"])
        cells = [model, str(r["runtime"]), str(r["batch_size"])] + ([str(r.get(key, ""))] if key else [])
        cells += [f"{float(r['p50_ms']):.3f}", f"{float(r['p90_ms']):.3f}", f"{float(r['p99_ms']):.3f}",
                  f"{float(r['samples_per_s']):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _noise_note(rows: list[Mapping[str, Any]]) -> list[str]:
    noisy = sum(bool(r.get("noisy")) for r in rows)
    if not noisy:
        return []
    return [f"**{noisy} of {len(rows)} measurements are noisy** (p90 more than {NOISY_P90_OVER_P50:g}x p50): other "
            "processes competed for the CPU; their numbers, and the speed-ups built on them, are not to be trusted. "
            "Rerun the export on a quiet machine.", ""]


def _speedups(sp: Mapping[str, Mapping[str, float]]) -> list[str]:
    lines = [f"- {runtime}, batch {bs}: {float(x):.2f}x"
             for runtime in RUNTIME_ORDER + tuple(k for k in sp if k not in RUNTIME_ORDER)
             for bs, x in (sp.get(runtime) or {}).items()]
    if not lines:
        lines = ["- none (need teacher and student rows for the same runtime and batch)"]
    return ["## Speed-up (teacher p50 / student p50)", ""] + lines


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


def _parity_line(parity: Mapping[str, Any] | None) -> str:
    if not parity:
        return "Parity: not checked"
    diffs = [o.get("max_abs_diff") for o in (parity.get("outputs") or {}).values()]
    worst = None
    if diffs:
        worst = math.inf if any(d is None for d in diffs) else max(float(d) for d in diffs)
    verdict = "PASS" if parity.get("ok") else "FAIL"
    n = len(parity.get("shapes") or [])
    worst_s = ("n/a" if worst is None else "inf (shape mismatch or error)" if not math.isfinite(worst)
               else f"{worst:.3g}")
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
        series.setdefault((str(r["model"]), str(r["runtime"])), []).append((int(r["batch_size"]), float(r["p50_ms"])))
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)  # Agg canvas, no pyplot global state
    ax = fig.add_subplot(1, 1, 1)
    styles = {"teacher": "-", "student": "--"}
    markers = {"pytorch": "o", "onnxruntime": "s"}
    for (model, runtime), pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=styles.get(model, ":"),
                marker=markers.get(runtime, "^"), label=f"{model} / {runtime}")
    # Log scales: batch 1 stays readable beside batch 32, and equal ratios (speed-ups) look equal.
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency (ms, log scale)")
    ax.set_title(f"p50 latency, {report.get('threads', '?')} CPU thread(s)")
    xs = sorted({b for pts in series.values() for b, _ in pts})
    if xs:
        ax.set_xticks(xs, [str(x) for x in xs])
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
