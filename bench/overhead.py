"""What distillation costs: kdcli's step against a minimal hand-written PyTorch loop doing the same
work, and the teacher cache against a live teacher over 3 epochs, with training the student alone
(the floor) measured in the same run.

python -m bench.overhead [--steps 40] [--samples 1024]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import SST2, StepClock, classifier_teacher, emit, write_profile
from kdcli.commands.checkpoints import load_student, load_teacher
from kdcli.commands.distill import distill
from kdcli.commands.init_student import init_student
from kdcli.data.splits import load_split
from kdcli.profile import load_profile

LOSSES = [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "weight": 0.5, "temperature": 2.0},
          {"kind": "hidden_cosine", "layers": "last"}]


def _spec(work: Path, teacher: Path, samples: int, **train) -> dict:
    return {"name": "bench", "task": "sequence-classification", "teacher": {"path": str(teacher)},
            "student": {"path": str(work / "student-init"), "init": {"layers": "uniform:3"}},
            "data": {"train": str(SST2 / "dev.tsv"), "max_length": 64, "limit": samples},
            "distill": {"losses": LOSSES},
            "train": {"batch_size": 32, "lr": 5e-5, "seed": 0, "log_every": 10_000, "checkpoint_every": 100_000,
                      **train}, "output": str(work / "run")}


def kdcli_seconds_per_step(work: Path, spec: dict, steps: int, name: str, overrides: list[str] = ()) -> float:
    path = write_profile(work, spec, f"{name}.yaml")
    clock = StepClock()
    distill(load_profile(path, [f"output={work / name}", f"train.max_steps={steps}", *overrides]), on_step=clock)
    return clock.seconds_per_step()


def plain_loop_seconds_per_step(work: Path, spec: dict, steps: int) -> float:
    """The same batches, models and losses in a loop written by hand (nanoGPT style)."""
    profile = load_profile(write_profile(work, spec, "plain.yaml"))
    teacher, student = load_teacher(profile), load_student(profile)
    split = load_split(profile, "train", teacher)
    order = split.order(32, shuffle=True, seed=0)
    t_model, s_model = teacher.module.eval(), student.module.train()
    opt = torch.optim.AdamW(s_model.parameters(), lr=5e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    times = []
    for step in range(steps):
        batch = split.collate(order[step % len(order)])
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            t = t_model(**inputs, output_hidden_states=True)
        s = s_model(**inputs, output_hidden_states=True)
        mask = batch["attention_mask"].bool()
        kd = F.kl_div(F.log_softmax(s.logits / 2, -1), F.softmax(t.logits / 2, -1), reduction="batchmean") * 4
        cos = 1 - F.cosine_similarity(s.hidden_states[-1][mask], t.hidden_states[-1][mask], dim=-1).mean()
        loss = 0.5 * F.cross_entropy(s.logits, batch["labels"]) + 0.5 * kd + cos
        loss.backward()
        torch.nn.utils.clip_grad_norm_(s_model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        times.append(time.perf_counter())
    return (times[-1] - times[2]) / (len(times) - 3)


def epoch_seconds(work: Path, spec: dict, name: str, overrides: list[str]) -> list[float]:
    path = write_profile(work, spec, f"{name}.yaml")
    clock = StepClock()
    profile = load_profile(path, [f"output={work / name}", "train.epochs=3", *overrides])
    start = time.perf_counter()
    distill(profile, on_step=clock)
    per_epoch = math.ceil(len(clock.times) / 3)
    marks = [start] + [clock.times[min(i * per_epoch, len(clock.times)) - 1] for i in (1, 2, 3)]
    return [round(b - a, 2) for a, b in zip(marks, marks[1:])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--samples", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher = classifier_teacher(work / "teacher")
        spec = _spec(work, teacher, max(args.samples, args.steps * 32))
        init_student(load_profile(write_profile(work, spec, "init.yaml")))
        # Alternate the two, twice, so drift on a shared machine hits both alike.
        kd, plain = [], []
        for i in range(2):
            kd.append(kdcli_seconds_per_step(work, spec, args.steps, f"kd{i}"))
            plain.append(plain_loop_seconds_per_step(work, spec, args.steps))
        cache_spec = _spec(work, teacher, args.samples)
        live = epoch_seconds(work, cache_spec, "live", [])
        cached = epoch_seconds(work, cache_spec, "cached", ["train.cache_teacher=true"])
        alone = epoch_seconds(work, {**cache_spec, "teacher": None, "distill": {"losses": [{"kind": "ce"}]}},
                              "alone", [])
    emit({
        "bench": "overhead",
        "step_seconds": {"kdcli": min(kd), "plain_loop": min(plain)},
        "kdcli_over_plain": round(min(kd) / min(plain), 3), "goal": "<= 1.05",
        "epochs_seconds": {"live_teacher": live, "cached_teacher": cached, "student_alone": alone},
        "cached_later_epochs_over_student_alone": round(sum(cached[1:]) / sum(alone[1:]), 3),
        "cache_goal": "<= 1.15", "samples": args.samples, "batch_size": 32,
        "losses": [loss["kind"] for loss in LOSSES],
    })


if __name__ == "__main__":
    main()
