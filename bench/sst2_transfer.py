"""The production-teacher scenario on SST-2: does distillation through unlabeled data pay?

The teacher is MiniLM-L6 fine-tuned on the whole GLUE SST-2 train split (67,349 sentences:
data/sst2/dev.tsv + data/sst2/train.tsv), trained once and kept in --work for every later run. The
compression job sees only the 6,735 labelled sentences of data/sst2/dev.tsv and the other 60,614 as
unlabeled text (data/sst2/transfer.txt). Every arm trains the same 3-layer student cut from the
teacher and is scored on GLUE dev (data/sst2/test.tsv, 872 sentences).

python -m bench.sst2_transfer [--work runs/bench-transfer] [--arms labels kd transfer ...] [--seeds 0 1 2]
    [--rows N]   scale the scenario down: the teacher learns from the 6,735 plus the first N rows of
                 train.tsv, and those N sentences (labels dropped) are the transfer set (default: all 60,614)

Every stage runs through the CLI (`kdcli distill`, `kdcli evaluate`) in a child process, so a stopped bench
loses nothing: SIGTERM or Ctrl-C saves a checkpoint, and a rerun resumes the stage in flight. Each finished
arm is appended to WORK/results.jsonl (accuracy, wall and CPU seconds, load average) and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import SST2, classifier_teacher, emit, write_profile

DATA = {"eval": str(SST2 / "test.tsv"), "max_length": 64}
KD = [{"kind": "ce", "weight": 0.2}, {"kind": "hinton", "weight": 0.8, "temperature": 2.0}]
HIDDEN = [{"kind": "hidden_mse", "weight": 1.0, "layers": "uniform", "mask": True}]
# arm -> (losses, data extras, train extras)
ARMS: dict[str, tuple[list[dict], dict, dict]] = {
    "labels": ([{"kind": "ce"}], {}, {}),
    "kd": (KD, {}, {}),
    "kd_hidden": (KD + HIDDEN, {}, {}),
    "transfer": (KD, {"transfer": True}, {}),
    "transfer_hidden": (KD + HIDDEN, {"transfer": True}, {}),
}
ALL_ROWS = 60_614


def transfer_file(work: Path, rows: int) -> str:
    """The transfer set: data/sst2/transfer.txt, or its first `rows` sentences."""
    if rows >= ALL_ROWS:
        return str(SST2 / "transfer.txt")
    path = work / f"transfer-{rows}.txt"
    path.write_text("".join((SST2 / "transfer.txt").read_text(encoding="utf-8").splitlines(keepends=True)[:rows]))
    return str(path)


def teacher(work: Path, epochs: float, rows: int) -> tuple[str, float]:
    """The production teacher: trained once on the 6,735 plus `rows` labelled sentences (all: 67,349), then reused."""
    out = work / f"teacher-{rows}"
    if (out / "student" / "config.json").is_file():
        return str(out / "student"), 0.0
    start = time.perf_counter()
    full = work / f"sst2-teacher-{rows}.tsv"
    rows_text = (SST2 / "dev.tsv").read_text(encoding="utf-8") + \
        "".join((SST2 / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[1: rows + 1])
    full.write_text(rows_text, encoding="utf-8")
    profile = write_profile(work, {
        "name": "teacher", "task": "sequence-classification",
        "student": {"path": str(classifier_teacher(work / "minilm-cls"))},
        "data": {**DATA, "train": str(full)}, "distill": {"losses": [{"kind": "ce"}]},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-4, "warmup_ratio": 0.06, "seed": 0,
                  "log_every": 100, "cache_teacher": False, "checkpoint_every": 200, "eval_every": 1000},
        "output": str(out)}, f"teacher-{rows}.yaml")
    kdcli("distill", profile, resumable=out)
    return str(out / "student"), time.perf_counter() - start


def kdcli(command: str, profile: Path, *extra: str, resumable: Path | None = None) -> dict[str, Any]:
    """One CLI command in a child process (its own SIGTERM handling); distill resumes a stopped run."""
    if resumable is not None and (resumable / "checkpoints" / "last.pt").is_file():
        extra = (*extra, "--resume")
    done = subprocess.run([sys.executable, "-m", "kdcli", command, str(profile), "--json", *extra],
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kdcli {command} {profile} exited {done.returncode}: {done.stdout[-2000:]}")
    return json.loads(done.stdout)


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def finished(work: Path) -> dict[tuple[str, int], dict[str, Any]]:
    path = work / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []
    return {(row["arm"], row["seed"]): row for row in rows}


def record(work: Path, row: dict[str, Any]) -> None:
    with open(work / "results.jsonl", "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")
        out.flush()
        os.fsync(out.fileno())


def run_arm(work: Path, teacher_path: str, arm: str, seed: int, epochs: float, overrides: dict,
            transfer: dict[str, Any]) -> dict[str, Any]:
    losses, data_extra, train_extra = ARMS[arm]
    data_extra = transfer if data_extra else {}
    out = work / f"{arm}-{seed}"
    start, cpu, load = time.perf_counter(), child_cpu_s(), os.getloadavg()
    spec = {"name": arm, "task": "sequence-classification", "teacher": {"path": teacher_path},
            "student": {"path": str(work / f"init-{Path(teacher_path).parent.name}"), "init": {"layers": "uniform:3",
                                                             "drop": ["token_type_embeddings"]}},
            "data": {**DATA, "train": str(SST2 / "dev.tsv"), **data_extra},
            "distill": {"losses": losses},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 1e-4, "warmup_ratio": 0.1, "seed": seed,
                      "log_every": 100, "cache_teacher": True, **train_extra, **overrides},
            "output": str(out)}
    profile = write_profile(work, spec, f"{arm}-{seed}.yaml")
    if not (Path(spec["student"]["path"]) / "config.json").is_file():
        kdcli("init-student", profile)
    if not (out / "student" / "config.json").is_file():
        kdcli("distill", profile, resumable=out)
    result = kdcli("evaluate", profile)
    return {"arm": arm, "seed": seed, "accuracy": result["metrics"]["accuracy"],
            "teacher": result["teacher_metrics"]["accuracy"], "wall_s": round(time.perf_counter() - start, 1),
            "cpu_s": round(child_cpu_s() - cpu, 1), "load_start": [round(x, 2) for x in load],
            "load_end": [round(x, 2) for x in os.getloadavg()], "overrides": overrides}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_arm: dict[str, list[float]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], []).append(row["accuracy"])
    return {arm: {"mean": round(statistics.mean(v), 4), "std": round(statistics.stdev(v), 4) if len(v) > 1 else None,
                  "runs": v} for arm, v in by_arm.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("runs/bench-transfer"))
    parser.add_argument("--arms", nargs="+", default=["labels", "transfer"], choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--teacher-epochs", type=float, default=1.0)
    parser.add_argument("--rows", type=int, default=ALL_ROWS, help="rows of train.tsv for teacher and transfer")
    parser.add_argument("--ratio", type=float, default=None,
                        help="data.transfer_ratio (default: one pass over the transfer set per labelled epoch)")
    parser.add_argument("--teacher-only", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], help="train.KEY=VALUE for every arm (JSON values)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    work = args.work.resolve()
    teacher_path, teacher_s = teacher(work, args.teacher_epochs, args.rows)
    ratio = args.ratio or round(args.rows / 6735, 2)
    transfer = {"transfer": transfer_file(work, args.rows), "transfer_ratio": ratio}
    if args.teacher_only:
        emit({"bench": "sst2_transfer", "teacher": teacher_path, "teacher_wall_s": round(teacher_s, 1)})
        return
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    rows = []
    for seed in args.seeds:
        for arm in args.arms:
            done = finished(work).get((arm, seed))
            if done is None:
                done = run_arm(work, teacher_path, arm, seed, args.epochs, overrides, transfer)
                record(work, done)
            rows.append(done)
            print(json.dumps(rows[-1]), flush=True)
    emit({"bench": "sst2_transfer", "epochs": args.epochs, "seeds": args.seeds, "overrides": overrides,
          "teacher_rows": 6735 + args.rows, "transfer_rows": args.rows, "transfer_ratio": ratio,
          "teacher_accuracy": rows[0]["teacher"], "teacher_wall_s": round(teacher_s, 1), "arms": summary(rows),
          "rows": rows, "wall_seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
