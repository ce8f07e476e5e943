"""Noisy Student on sklearn's digits: does round 1 beat the supervised-only baseline?

For each seed: a fixed held-out test split (20%, the same for every seed); a labelled split of
--labelled-per-class digits per class; the rest of the digits as unlabelled data (their labels are
kept aside, only to score the pseudo-labels). Then, all with kdcli's library and
profiles/digits-noisy-student.yaml:

  teacher   resnet18 from the labelled split alone (loss [ce]), noised like the student as in the
            paper (--clean-teacher: no dropout, no stochastic depth, no RandAugment)
  baseline  the student's exact config (arch, init, RandAugment, dropout, stochastic depth, steps),
            trained on the labelled split alone
  ns-1      Noisy Student round 1: the teacher pseudo-labels the unlabelled split; the noised
            student trains on labelled + pseudo-labelled batches (kdcli.noisy.noisy_student)
  consistent  (--consistent) the same student distilled "patient and consistent" (Beyer et al. 2022):
            ce + Hinton on labelled data, Hinton on the unlabelled split as a transfer set, teacher and
            student shown the same view (timm RandAugment + Mixup/CutMix, train.augment), live teacher

The baseline and the round-1 student start from the same initial weights (same seed, same path
through init-student), so the only difference between them is the pseudo-labelled data. Every model
is scored once, at its last step, on the test split. Prints one JSON object.

    python -m bench.noisy_student_digits [--seeds 0 1 2] [--out runs/digits-ns] [--threads 1] [--clean-teacher]
        [--consistent]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from bench.common import emit
from kdcli.commands.distill import distill
from kdcli.commands.init_student import init_student
from kdcli.commands.noisy_student import noisy_student
from kdcli.profile import load_profile

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "profiles" / "digits-noisy-student.yaml"
TEST_FRACTION, TEST_SEED = 0.2, 1234


def split_digits(folder: Path, seed: int, per_class: int) -> dict[str, Any]:
    """labeled.npz, unlabeled.npz, test.npz in kdcli's npz convention (images in [0, 1], labels)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images, labels = (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)
    order = np.random.default_rng(TEST_SEED).permutation(len(labels))
    test, pool = order[: round(TEST_FRACTION * len(labels))], order[round(TEST_FRACTION * len(labels)):]
    rng = np.random.default_rng(seed)
    labelled = np.concatenate([rng.choice(pool[labels[pool] == c], per_class, replace=False) for c in range(10)])
    unlabelled = np.setdiff1d(pool, labelled)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "labeled.npz", images=images[labelled], labels=labels[labelled])
    np.savez(folder / "unlabeled.npz", images=images[unlabelled])  # no labels: unlabelled data
    np.savez(folder / "test.npz", images=images[test], labels=labels[test])
    return {"labelled": len(labelled), "unlabelled": len(unlabelled), "test": len(test),
            "unlabelled_truth": labels[unlabelled]}


def timed(fn, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)  # the commands return dataclasses; this script reads their JSON form
    return result.to_json() if hasattr(result, "to_json") else result, round(time.perf_counter() - start, 1)


CONSISTENT = ["distill.losses=[{kind: ce, weight: 0.5}, {kind: hinton, weight: 1.0, temperature: 1.0}]",
              "train.noise.randaugment=false", "train.augment={randaugment: true, mixup: 0.8, cutmix: 1.0}",
              "data.transfer_ratio=3"]


def run_seed(seed: int, out: Path, per_class: int, threads: int | None, clean_teacher: bool,
             consistent: bool = False) -> dict[str, Any]:
    folder = out / f"seed-{seed}"
    data = folder / "data"
    split = split_digits(data, seed, per_class)
    base = [f"data.train={data / 'labeled.npz'}", f"data.eval={data / 'test.npz'}",
            f"data.unlabeled={data / 'unlabeled.npz'}", f"train.seed={seed}"]
    if threads:
        base.append(f"train.threads={threads}")

    # The teacher: the student's config from labels alone, with no teacher of its own.
    clean = ["student.init.model_args={}", "train.noise.randaugment=false"] if clean_teacher else []
    teacher_profile = load_profile(PROFILE, base + clean + [
        "teacher=null", f"student.path={folder / 'teacher' / 'init'}", f"output={folder / 'teacher'}",
        "student.init.num_classes=10"])
    torch.manual_seed(seed)
    init_student(teacher_profile)
    teacher, teacher_s = timed(distill, teacher_profile)

    common = base + [f"teacher.path={teacher['student']}"]
    # Baseline: the student's config on the labelled split alone. With a [ce] profile distill never loads
    # the teacher; init-student goes through it exactly as noisy-student does, so both start alike.
    baseline_profile = load_profile(PROFILE, common + [f"student.path={folder / 'baseline' / 'init'}",
                                                       f"output={folder / 'baseline'}"])
    torch.manual_seed(seed)
    init_student(baseline_profile)
    baseline, baseline_s = timed(distill, baseline_profile)

    ns_profile = load_profile(PROFILE, common + [f"output={folder / 'noisy-student'}"])
    ns, ns_s = timed(noisy_student, ns_profile, 1)
    round1 = ns["rounds"][0]

    arms = {}
    if consistent:  # same init as the baseline (same seed, same path through init-student)
        c_profile = load_profile(PROFILE, common + CONSISTENT + [
            f"data.transfer={data / 'unlabeled.npz'}", f"student.path={folder / 'consistent' / 'init'}",
            f"output={folder / 'consistent'}"])
        torch.manual_seed(seed)
        init_student(c_profile)
        c, c_s = timed(distill, c_profile)
        arms = {"consistent": round(c["eval"]["metrics"]["accuracy"], 4), "consistent_s": c_s}

    a = load_file(str(folder / "baseline" / "init" / "model.safetensors"))
    b = load_file(str(folder / "noisy-student" / "round-1" / "init" / "model.safetensors"))
    same_init = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in
               (folder / "noisy-student" / "round-1" / "pseudo" / "labels.jsonl").read_text().splitlines()]
    unique = {r["id"]: r["label"] for r in records}
    truth = split["unlabelled_truth"]
    return {
        "seed": seed, "labelled": split["labelled"], "unlabelled": split["unlabelled"], "test": split["test"],
        "accuracy": {"teacher": round(teacher["eval"]["metrics"]["accuracy"], 4),
                     "baseline": round(baseline["eval"]["metrics"]["accuracy"], 4),
                     "noisy_student_round1": round(round1["eval"]["metrics"]["accuracy"], 4),
                     **{k: v for k, v in arms.items() if not k.endswith("_s")}},
        "gain": round(round1["eval"]["metrics"]["accuracy"] - baseline["eval"]["metrics"]["accuracy"], 4),
        "pseudo": {"records": len(records), "distinct_kept": len(unique),
                   "kept_share": round(len(unique) / split["unlabelled"], 4),
                   "accuracy_of_kept": round(float(np.mean([truth[i] == label for i, label in unique.items()])), 4)},
        "same_init": same_init,
        "seconds": {"teacher": teacher_s, "baseline": baseline_s, "noisy_student_round1": ns_s,
                    **{k[:-2]: v for k, v in arms.items() if k.endswith("_s")}},
    }


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "digits-ns")
    parser.add_argument("--labelled-per-class", type=int, default=18, help="18 x 10 = 180 labelled digits (10%%)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (train.threads)")
    parser.add_argument("--clean-teacher", action="store_true", help="train the teacher without noise")
    parser.add_argument("--consistent", action="store_true", help="add the consistent-augmentation arm")
    args = parser.parse_args()
    taken = [args.out / f"seed-{s}" for s in args.seeds if (args.out / f"seed-{s}").exists()]
    if taken:
        sys.exit(f"{taken[0]} exists: remove it or pass another --out")
    start = time.perf_counter()
    seeds = [run_seed(seed, args.out, args.labelled_per_class, args.threads, args.clean_teacher, args.consistent)
             for seed in args.seeds]
    profile = load_profile(PROFILE)
    summary = {name: mean_std([s["accuracy"][name] for s in seeds])
               for name in ("teacher", "baseline", "noisy_student_round1", "consistent")
               if name in seeds[0]["accuracy"]}
    noise = (f"model_args {profile.student.init.model_args}, RandAugment "
             f"m={profile.train.noise.randaugment_magnitude}")
    arch = profile.student.init.architecture
    report = {
        "benchmark": "noisy_student_digits",
        "profile": str(PROFILE.relative_to(ROOT)),
        "setup": {"teacher": f"{arch} from scratch, labels only, " + ("no noise" if args.clean_teacher else noise),
                  "student": f"{arch} from scratch, {noise}",
                  "labelled_per_class": args.labelled_per_class,
                  "epochs": profile.train.epochs, "batch_size": profile.train.batch_size,
                  "pseudo": profile.pseudo.model_dump(), "image_size": profile.data.image_size,
                  "threads": args.threads or torch.get_num_threads()},
        "accuracy": summary,
        "gain_over_baseline": mean_std([s["gain"] for s in seeds]),
        "gain_over_teacher": mean_std([s["accuracy"]["noisy_student_round1"] - s["accuracy"]["teacher"]
                                       for s in seeds]),
        "seeds": seeds,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    emit(report)


if __name__ == "__main__":
    main()
