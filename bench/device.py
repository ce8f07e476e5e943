"""distill on CUDA (precision auto: bf16 or fp16) against the same profile on CPU: step time,
samples/s and peak GPU memory. Where no GPU is visible it reports the CPU side only.

python -m bench.device [--steps 30]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from bench.common import SST2, StepClock, classifier_teacher, emit, write_profile
from kdcli.commands.distill import distill
from kdcli.commands.init_student import init_student
from kdcli.profile import load_profile


def run(work: Path, path: Path, device: str, steps: int) -> dict:
    clock = StepClock()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    profile = load_profile(path, [f"train.device={device}", f"train.max_steps={steps}", f"output={work / device}"])
    distill(profile, on_step=clock)
    step = clock.seconds_per_step()
    return {"device": device, "precision": "auto", "step_seconds": round(step, 4),
            "samples_per_s": round(profile.train.batch_size / step, 1),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher = classifier_teacher(work / "teacher")
        spec = {"name": "device", "task": "sequence-classification", "teacher": {"path": str(teacher)},
                "student": {"path": str(work / "init"), "init": {"layers": "uniform:3"}},
                "data": {"train": str(SST2 / "dev.tsv"), "max_length": 64},
                "distill": {"losses": [{"kind": "ce", "weight": 0.2}, {"kind": "hinton", "weight": 0.8},
                                       {"kind": "hidden_mse", "layers": "uniform"},
                                       {"kind": "attention_mse", "layers": "uniform"}]},
                "train": {"batch_size": 32, "lr": 1e-4, "log_every": 1000, "checkpoint_every": 100_000},
                "output": str(work / "run")}
        path = write_profile(work, spec)
        init_student(load_profile(path))
        rows = [run(work, path, "cpu", args.steps)]
        if torch.cuda.is_available():
            rows.append(run(work, path, "cuda", args.steps))
    emit({"bench": "device", "rows": rows,
          "cuda_speedup": round(rows[0]["step_seconds"] / rows[1]["step_seconds"], 2) if len(rows) > 1 else None})


if __name__ == "__main__":
    main()
