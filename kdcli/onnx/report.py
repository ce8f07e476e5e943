"""report.md and latency.png from the latency.json and parity.json documents."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdcli.onnx.latency import NOISY_P90_OVER_P50, RUNTIME_ORDER
from kdcli.runtime.files import atomic_path


def render_markdown(report: Mapping[str, Any] | None, parity: Mapping[str, Any] | None,
                    int8: Mapping[str, Any] | None = None, sizes: Mapping[str, int] | None = None) -> str:
    """report.md: latency table (flagging noisy rows) and speed-up lines (when latency was measured), sizes,
    the int8 model judged beside fp32 (when quantized), and a parity line. ``sizes`` stands in for the latency
    report's ``size_bytes`` when latency was not measured (export --no-latency)."""
    lines = ["# Export report", ""]
    if report is None:
        lines += ["Latency: not measured (--no-latency)", ""]
    else:
        rows = list(report.get("rows", []))
        lines += ["## Latency", "", f"CPU threads: {report.get('threads', '?')}", ""]
        lines += _table(rows, _shape_key(rows)) + [""] + _noise_note(rows)
        lines += _speedups(report.get("speedup") or {}) + [""]
        if report.get("speedup_int8"):
            lines += _speedups(report["speedup_int8"], "teacher p50 / int8 student p50") + [""]
        sizes = report.get("size_bytes") or sizes
    if sizes:
        lines += ["## Size", ""] + [f"- {name}: {_fmt_bytes(n)} ({int(n)} bytes)" for name, n in sizes.items()] + [""]
    if int8 is not None:
        lines += _int8_lines(int8) + [""]
    lines += [_parity_line(parity), ""]
    return "\n".join(lines)


def _int8_lines(int8: Mapping[str, Any]) -> list[str]:
    lines = ["## int8 (dynamic quantization)", ""]
    metric = int8.get("metric")
    if metric:
        lines += [f"| model | {metric} |", "|---|---:|", f"| fp32 | {_fmt_num(int8.get('fp32'))} |",
                  f"| int8 | {_fmt_num(int8.get('int8'))} |", "",
                  f"Drop: {_fmt_num(int8.get('drop'))} on {int8.get('samples', 0)} samples"
                  + (f" (gate --max-drop {int8['max_drop']:g}: {'PASS' if int8.get('passed') else 'FAIL'})"
                     if int8.get("max_drop") is not None else " (not gated)")]
    else:
        lines += ["Not scored: the profile names no eval or train data."]
    agreement = int8.get("agreement_with_fp32") or {}
    if agreement:
        lines += ["", "Agreement with fp32: " + ", ".join(f"{k} {_fmt_num(v)}" for k, v in agreement.items())]
    if int8.get("size_bytes"):
        lines += [f"Size: {_fmt_bytes(int8['size_bytes'])} ({int(int8['size_bytes'])} bytes)"]
    return lines


def _fmt_num(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


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


def _speedups(sp: Mapping[str, Mapping[str, float]], title: str = "teacher p50 / student p50") -> list[str]:
    lines = [f"- {runtime}, batch {bs}: {float(x):.2f}x"
             for runtime in RUNTIME_ORDER + tuple(k for k in sp if k not in RUNTIME_ORDER)
             for bs, x in (sp.get(runtime) or {}).items()]
    if not lines:
        lines = ["- none (need teacher and student rows for the same runtime and batch)"]
    return [f"## Speed-up ({title})", ""] + lines


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
    styles = {"teacher": "-", "student": "--", "student-int8": ":"}
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
