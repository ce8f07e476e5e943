"""Experiment tracking (TensorBoard, MLflow) and the loss-curve chart a distill run ends with.

metrics.jsonl stays the record of truth; trackers receive the same records. Both backends are optional
extras (`pip install kdcli[tracking]`): a profile asking for a missing one fails before training starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from kdcli.errors import BadInput
from kdcli.runtime.files import atomic_path

_EXTRA = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny"}


class Backend(Protocol):
    def scalars(self, values: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


def require(backends: Iterable[str]) -> None:
    """Exit 2 naming the package to install when a requested backend is not importable."""
    for name in backends:
        module = "torch.utils.tensorboard" if name == "tensorboard" else name
        try:
            __import__(module)
        except ImportError:
            raise BadInput(f"train.report_to: {name} is not installed",
                           hint=f"pip install {_EXTRA[name]} (or kdcli[tracking]), or remove {name} from "
                                "train.report_to") from None


class Tracker:
    """Fans metrics.jsonl records out to the backends; steps run on across stages."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self._offsets: dict[str, int] = {}
        self._last = 0

    def log(self, record: dict[str, Any]) -> None:
        stage = record.get("stage")
        if stage is None:
            return  # the final evaluation repeats the last step's
        if stage not in self._offsets:
            self._offsets[stage] = self._last  # a later stage's steps continue the first's on one axis
        step = self._offsets[stage] + int(record["step"])
        self._last = max(self._last, step)
        values = _scalars(record)
        for backend in self.backends:
            backend.scalars(values, step)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def open_tracker(report_to: list[str], root: Path, name: str, params: dict[str, Any]) -> Tracker | None:
    """The profile's backends, each given the resolved profile as hyperparameters."""
    if not report_to:
        return None
    require(report_to)
    flat = _flatten(params)
    backends: list[Backend] = []
    for backend in report_to:
        backends.append(_TensorBoard(root / "tensorboard", flat) if backend == "tensorboard"
                        else _MLflow(root, name, flat))
    return Tracker(backends)


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    keep = {k: v for k, v in record.items() if k == "loss" or k.startswith("loss/") or k in ("lr", "samples_per_s")}
    for group, values in record.get("eval", {}).items():
        if isinstance(values, dict):
            keep.update({f"eval/{group}/{k}": v for k, v in values.items()})
    return {k: float(v) for k, v in keep.items() if isinstance(v, (int, float))}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} as {"train.lr": 1}; lists as JSON text (hyperparameters are flat scalars)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = "null" if value is None else value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


class _TensorBoard:
    def __init__(self, folder: Path, params: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams
        self.writer = SummaryWriter(log_dir=str(folder))
        # The hyperparameters in the run's own event file (add_hparams would open a second run folder).
        for summary in hparams(params, {}):
            self.writer.file_writer.add_summary(summary)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, root: Path, name: str, params: dict[str, Any]) -> None:
        import mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # Without a server named, the run folder keeps the runs (MLflow's file store, now opt-in).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((root / "mlruns").resolve().as_uri())
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name)
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params({k: str(v)[:500] for k, v in items[i: i + 100]})

    def scalars(self, values: dict[str, float], step: int) -> None:
        # Its file store keeps a metric per file: "loss" and "loss/ce" would need "loss" as file and folder.
        self.mlflow.log_metrics({tag.replace("/", "."): value for tag, value in values.items()}, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def plot_metrics(records: Iterable[dict[str, Any]], path: Path) -> Path | None:
    """metrics.png: each loss term and each eval metric over steps. None without matplotlib or data."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    collected = _Collect()
    tracker = Tracker([collected])
    for record in records:
        tracker.log(record)
    losses = {k: v for k, v in collected.series.items() if k == "loss" or k.startswith("loss/")}
    evals = {k: v for k, v in collected.series.items() if k.startswith("eval/") and "/agreement/" not in k}
    if not losses:
        return None
    fig = Figure(figsize=(9.6, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    for i, (title, series) in enumerate((("loss terms", losses), ("evaluation", evals))):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, points in sorted(series.items()):
            steps, values = zip(*points)
            ax.plot(steps, values, label=name, marker="." if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


class _Collect:
    """A backend that keeps every series in memory, for the chart."""

    def __init__(self) -> None:
        self.series: dict[str, list[tuple[int, float]]] = {}

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.series.setdefault(tag, []).append((step, value))

    def close(self) -> None:
        pass
