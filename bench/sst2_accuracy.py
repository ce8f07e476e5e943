"""Accuracy kept on real data (SST-2): a MiniLM-L6 teacher trained by kdcli from labels on N sentences,
a 3-layer student distilled from it, and the same 3-layer student trained from labels alone, all
evaluated on the GLUE dev split (data/sst2/test.tsv), over several seeds.

python -m bench.sst2_accuracy [--n 6735] [--seeds 0 1] [--epochs 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import SST2, classifier_teacher, emit, write_profile
from kdcli.commands.distill import distill
from kdcli.commands.evaluate import evaluate
from kdcli.commands.init_student import init_student
from kdcli.profile import load_profile


def _base(work: Path, n: int, seed: int, epochs: float) -> dict:
    return {"task": "sequence-classification",
            "data": {"train": str(SST2 / "dev.tsv"), "eval": str(SST2 / "test.tsv"), "max_length": 64, "limit": n},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-4, "warmup_ratio": 0.1, "seed": seed,
                      "log_every": 50}}


def run_seed(work: Path, n: int, seed: int, epochs: float) -> dict[str, float]:
    base = _base(work, n, seed, epochs)
    head = classifier_teacher(work / "minilm-cls")
    teacher_p = write_profile(work, {"name": "teacher", **base, "student": {"path": str(head)},
                                     "distill": {"losses": [{"kind": "ce"}]},
                                     "output": str(work / f"teacher-{seed}")}, f"teacher-{seed}.yaml")
    teacher = distill(load_profile(teacher_p)).student
    kd_p = write_profile(work, {"name": "kd", **base, "teacher": {"path": teacher},
                                "student": {"path": str(work / f"init-{seed}"), "init": {"layers": "uniform:3"}},
                                "distill": {"losses": [{"kind": "ce", "weight": 0.2},
                                                       {"kind": "hinton", "weight": 0.8, "temperature": 2.0},
                                                       {"kind": "hidden_mse", "layers": "uniform"}]},
                                "output": str(work / f"kd-{seed}")}, f"kd-{seed}.yaml")
    init_student(load_profile(kd_p))
    distill(load_profile(kd_p))
    kd = evaluate(load_profile(kd_p))
    base_p = write_profile(work, {"name": "baseline", **base, "student": {"path": str(work / f"init-{seed}")},
                                  "distill": {"losses": [{"kind": "ce"}]}, "output": str(work / f"base-{seed}")},
                           f"base-{seed}.yaml")
    distill(load_profile(base_p))
    baseline = evaluate(load_profile(kd_p), str(work / f"base-{seed}" / "student"), work / f"base-{seed}" / "eval.json")
    return {"teacher": kd.teacher_metrics["accuracy"], "student_kd": kd.metrics["accuracy"],
            "student_labels_only": baseline.metrics["accuracy"], "retention": kd.retention}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=6735, help="training sentences (from data/sst2/dev.tsv)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=float, default=2.0)
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_seed(Path(tmp), args.n, seed, args.epochs) for seed in args.seeds]

    def stat(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"mean": round(statistics.mean(values), 4),
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0, "runs": values}
    gains = [r["student_kd"] - r["student_labels_only"] for r in runs]
    emit({"bench": "sst2_accuracy", "n_train": args.n, "epochs": args.epochs, "seeds": args.seeds,
          "eval": "GLUE SST-2 dev (data/sst2/test.tsv, 872 sentences)",
          "teacher": stat("teacher"), "student_kd": stat("student_kd"),
          "student_labels_only": stat("student_labels_only"), "retention": stat("retention"),
          "gain_over_baseline": {"mean": round(statistics.mean(gains), 4), "runs": gains},
          "wall_seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
