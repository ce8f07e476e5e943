"""Two CPU processes under torchrun (gloo): the run completes, rank 0 alone writes, and the student
equals a single-process run with the same global batch (two micro-batches accumulated)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from kdcli.commands.distill import distill
from kdcli.commands.init_student import init_student
from kdcli.profile import load_profile


def _profile(write_profile, bert_cls: Path, data: Path) -> Path:
    spec = {"name": "ddp", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "init", "init": {"layers": [0, 3]}},
            "data": {"train": str(data), "max_length": 16},
            "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton"}, {"kind": "hidden_mse"}]},
            "train": {"max_steps": 4, "batch_size": 6, "lr": 1e-3, "seed": 7, "log_every": 1,
                      "checkpoint_every": 2, "threads": 1}, "output": "single"}
    path = write_profile(spec)
    init_student(load_profile(path))
    config = path.parent / "init" / "config.json"  # no dropout: ranks and accumulation draw masks differently
    values = json.loads(config.read_text())
    values.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config.write_text(json.dumps(values))
    return path


def test_two_gloo_processes_match_one_process_with_accumulation(write_profile, bert_cls, sst_tiny, tmp_path):
    path = _profile(write_profile, bert_cls, sst_tiny)
    distill(load_profile(path, ["train.grad_accum=2"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "kdcli", "distill", str(path), "--quiet", "--nproc", "2",
                           "--set", "output=ddp"], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)  # a --set path is relative to the working directory
    assert done.returncode == 0, done.stderr[-3000:]
    single = AutoModelForSequenceClassification.from_pretrained(tmp_path / "single" / "student").state_dict()
    ddp = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ddp" / "student").state_dict()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=1e-5, rtol=0, msg=key)
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4]  # written once, by rank 0
    leftovers = [p.name for p in (tmp_path / "ddp").rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_evaluate_and_pseudo_label_shard_across_two_processes(write_profile, bert_cls, sst_tiny, tmp_path):
    path = _profile(write_profile, bert_cls, sst_tiny)
    unlabeled = tmp_path / "unlabeled.txt"
    unlabeled.write_text("".join(line.split("\t")[0] + "\n" for line in sst_tiny.read_text().splitlines()[1:]))
    overrides = ["--set", f"data.eval={sst_tiny}", "--set", f"data.unlabeled={unlabeled}",
                 "--set", "train.batch_size=5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "kdcli"]
    for command in (["evaluate", str(path), "--model", str(tmp_path / "init"), "--output", "ddp-eval.json"],
                    ["pseudo-label", str(path), "--quiet", "--output", "ddp-labels.jsonl"]):
        done = subprocess.run(torchrun + command + overrides, env=env, capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    from kdcli.commands.evaluate import evaluate
    from kdcli.commands.pseudo_label import pseudo_label
    profile = load_profile(path, [f"data.eval={sst_tiny}", f"data.unlabeled={unlabeled}", "train.batch_size=5"])
    single = evaluate(profile, str(tmp_path / "init"), tmp_path / "one-eval.json").to_json()
    sharded = json.loads((tmp_path / "ddp-eval.json").read_text())
    assert sharded["samples"] == single["samples"] == 48  # 10 batches of 5, split 5 and 5 across ranks
    for key in ("accuracy", "macro_f1"):
        assert sharded["metrics"][key] == pytest.approx(single["metrics"][key], abs=1e-6)
    assert sharded["agreement"]["kl"] == pytest.approx(single["agreement"]["kl"], abs=1e-5)
    pseudo_label(profile, output=tmp_path / "one-labels.jsonl")
    one = [json.loads(x) for x in (tmp_path / "one-labels.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "ddp-labels.jsonl").read_text().splitlines()]
    assert [r["label"] for r in two] == [r["label"] for r in one] and len(two) == 48
    assert [r["text"] for r in two] == [r["text"] for r in one]
