"""Depth against width at equal size (issue 21): students at about half the SST-2 production teacher's
non-embedding parameters, each scored pruned-only and after the same distillation budget.

The teacher is bench/sst2_transfer.py's (MiniLM-L6 fine-tuned on all 67,349 SST-2 labels; built there with
`python -m bench.sst2_transfer --teacher-only` and reused). Every arm is cut from it by `kdcli init-student`
(importance ranked on 512 sentences of the transfer set), scored by `kdcli evaluate` on GLUE dev (872), then
distilled with the sst2-classification recipe (ce 0.2 + hinton 0.8, T 2, on dev.tsv + the transfer set) for
--steps steps (each a labelled batch of 32 and 288 transfer sentences: transfer_ratio 9), scored again,
and exported (`kdcli export`: onnxruntime latency at batch 1 and 32).

python -m bench.sst2_prune [--work runs/bench-transfer] [--arms depth width_ffn ...] [--steps 120] [--retime]

Each finished arm is appended to WORK/prune-results.jsonl and skipped on a rerun; JSON on stdout at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.common import SST2, write_profile
from bench.sst2_transfer import ALL_ROWS, DATA, KD, child_cpu_s, kdcli, teacher

# arm -> student.init (every arm near 5.3M non-embedding parameters: half of the teacher's 10.6M)
ARMS: dict[str, dict[str, Any]] = {
    "depth": {"layers": "uniform:3"},                                            # 3 of 6 layers
    "depth_importance": {"layers": "importance:3"},                              # the 3 that change most
    "width_ffn": {"layers": [0, 1, 2, 3, 4, 5], "prune": {"ffn": 384}},          # 6 layers, MLP 1536 -> 384
    "width": {"layers": [0, 1, 2, 3, 4, 5], "prune": {"heads": 8, "hidden": 256, "ffn": 1216}},
    "mixed": {"layers": "importance:4", "prune": {"ffn": 960}},                  # 4 layers, MLP 1536 -> 960
}


def non_embedding_params(student: Path) -> int:
    from torch import nn
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(student)
    embedded = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
    return model.num_parameters() - embedded


def run_arm(work: Path, teacher_path: str, arm: str, steps: int) -> dict[str, Any]:
    out = work / f"prune-{arm}"
    start, cpu, load = time.perf_counter(), child_cpu_s(), os.getloadavg()
    spec = {"name": f"prune-{arm}", "task": "sequence-classification", "teacher": {"path": teacher_path},
            "student": {"path": str(out / "init"), "init": {**ARMS[arm],
                                                            **({"prune": {**ARMS[arm].get("prune", {}),
                                                                          "calibration_samples": 512}}
                                                               if "prune" in ARMS[arm] else {})}},
            "data": {**DATA, "train": str(SST2 / "dev.tsv"), "transfer": str(SST2 / "transfer.txt"),
                     "transfer_ratio": 9},
            "distill": {"losses": KD},
            "train": {"max_steps": steps, "epochs": 100, "batch_size": 32, "lr": 1e-4, "warmup_ratio": 0.1,
                      "seed": 0, "log_every": 100, "cache_teacher": False, "eval_every": 100_000},
            "export": {"batch_sizes": [1, 32]},
            "output": str(out / "run")}
    profile = write_profile(work, spec, f"prune-{arm}.yaml")
    if not (out / "init" / "config.json").is_file():
        kdcli("init-student", profile, "--force")
    pruned = kdcli("evaluate", profile, "--model", str(out / "init"))
    if not (out / "run" / "student" / "config.json").is_file():
        kdcli("distill", profile, resumable=out / "run")
    distilled = kdcli("evaluate", profile)
    train_wall = time.perf_counter() - start
    latency, speedup = timed(profile)
    return {"arm": arm, "init": ARMS[arm], "steps": steps, "params_non_embedding": non_embedding_params(out / "init"),
            "teacher_params_non_embedding": non_embedding_params(Path(teacher_path)),
            "pruned_accuracy": pruned["metrics"]["accuracy"], "accuracy": distilled["metrics"]["accuracy"],
            "teacher": distilled["teacher_metrics"]["accuracy"], "p50_ms": latency, "speedup_ort": speedup,
            "train_wall_s": round(train_wall, 1), "wall_s": round(time.perf_counter() - start, 1),
            "cpu_s": round(child_cpu_s() - cpu, 1), "load_start": [round(x, 2) for x in load],
            "load_end": [round(x, 2) for x in os.getloadavg()]}


def timed(profile: Path) -> tuple[dict[str, float], dict[str, float]]:
    """`kdcli export` of the distilled student: p50 per model/runtime/batch, and the onnxruntime speed-ups."""
    exported = kdcli("export", profile, "--latency-seconds", "3")
    latency = {f"{r['model']}/{r['runtime']}/{r['batch_size']}": r["p50_ms"] for r in exported["latency"]["rows"]}
    return latency, exported["latency"]["speedup"].get("onnxruntime")


def retime(work: Path, results: Path) -> None:
    """Time every finished arm again, one after the other (for a quiet machine), and rewrite the results."""
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    for row in rows:
        load = os.getloadavg()
        row["p50_ms"], row["speedup_ort"] = timed(work / f"prune-{row['arm']}.yaml")
        row["retimed_load"] = [round(x, 2) for x in (*load, *os.getloadavg())]
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("runs/bench-transfer"))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--retime", action="store_true", help="only time the finished arms again")
    args = parser.parse_args()
    args.work = args.work.resolve()  # profiles resolve relative paths from their own folder
    args.work.mkdir(parents=True, exist_ok=True)
    teacher_path, _ = teacher(args.work, 1.0, ALL_ROWS)
    results = args.work / "prune-results.jsonl"
    if args.retime:
        retime(args.work, results)
        print(results.read_text())
        return
    done = {row["arm"] for row in map(json.loads, results.read_text().splitlines())} if results.is_file() else set()
    for arm in args.arms:
        if arm in done:
            continue
        row = run_arm(args.work, teacher_path, arm, args.steps)
        with open(results, "a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print(json.dumps([json.loads(line) for line in results.read_text().splitlines()], indent=1))


if __name__ == "__main__":
    main()
