"""The Noisy Student loop on tiny models: round folders, the teacher chain, resume after an
interruption, refusal to overwrite, bad input, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

import kdcli.commands.noisy_student
from kdcli.cli import app
from kdcli.commands.distill import distill
from kdcli.commands.noisy_student import noisy_student
from kdcli.profile import load_profile

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def text_loop(write_profile, bert_cls, sst_tiny) -> Path:
    """A two-round text loop: the tiny 4-layer BERT teaches a 2-layer student, noised by token masking."""
    texts = [line.split("\t")[0] for line in sst_tiny.read_text().splitlines()[1:]]
    unlabeled = sst_tiny.parent / "unlabeled.txt"
    unlabeled.write_text("\n".join(reversed(texts)) + "\n")
    spec = {"name": "ns", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "unused-init", "init": {"layers": [0, 3], "drop": ["token_type_embeddings"]}},
            "data": {"train": str(sst_tiny), "eval": str(sst_tiny), "unlabeled": str(unlabeled), "max_length": 16},
            "distill": {"losses": [{"kind": "ce"}]},
            "train": {"max_steps": 4, "batch_size": 8, "lr": 1e-3, "seed": 2, "log_every": 1,
                      "checkpoint_every": 1, "noise": {"token_mask": 0.2}},
            "pseudo": {"ratio": 1.0, "topk": 2}, "output": "loop"}
    return write_profile(spec)


def predictions(model_dir: Path, texts: list[str]) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return [int(model(**tokenizer(t, return_tensors="pt", truncation=True, max_length=16)).logits.argmax())
                for t in texts]


def labels_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_rounds_each_students_teaches_the_next(text_loop, bert_cls):
    events: list[str] = []
    result = noisy_student(load_profile(text_loop), 2, on_event=events.append)
    out = text_loop.parent / "loop"
    state = json.loads((out / "noisy-student.json").read_text())
    assert result.rounds == state["rounds"] and result.output_dir == str(out)
    first, second = state["rounds"]
    assert (first["round"], second["round"]) == (1, 2)
    assert first["teacher"] == str(bert_cls)
    assert second["teacher"] == first["student"] == str(out / "round-1" / "student")
    assert second["student"] == str(out / "round-2" / "student")
    for r in (first, second):
        folder = out / f"round-{r['round']}"
        assert (folder / "pseudo" / "labels.jsonl").is_file() and (folder / "student" / "config.json").is_file()
        assert (folder / "metrics.jsonl").is_file() and (folder / "profile.lock.yaml").is_file()
        assert r["pseudo"] == {"total": 48, "kept_samples": 48, "kept": 48}
        assert set(r["eval"]["metrics"]) >= {"accuracy", "macro_f1"}
        # each round's student learned from its own pseudo-labels: the loss has the pseudo term
        steps = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert all(s["loss/pseudo"] > 0 for s in steps if "loss" in s)
    # Round r's labels are round r's teacher's predictions: the first teacher, then round 1's student.
    for r, teacher in ((1, bert_cls), (2, Path(first["student"]))):
        records = labels_of(out / f"round-{r}" / "pseudo" / "labels.jsonl")
        assert [x["label"] for x in records] == predictions(teacher, [x["text"] for x in records])
    # Every round's student has the profile's shape (derived from the first teacher, not a shrunk student).
    for r in (1, 2):
        config = json.loads((out / f"round-{r}" / "student" / "config.json").read_text())
        assert config["num_hidden_layers"] == 2
    assert events[0] == f"round 1: pseudo-labelling with {bert_cls}" and events[-1] == "round 2: training the noised student"


def interrupt_round(monkeypatch: pytest.MonkeyPatch, folder_name: str, at_step: int) -> None:
    """Ctrl-C inside `folder_name`'s training, after `at_step` optimizer steps (distill saves, then re-raises)."""
    def interrupted(profile: Any, **kwargs: Any) -> dict:
        if profile.output.name != folder_name:
            return distill(profile, **kwargs)

        shown = kwargs.pop("on_step", None) or (lambda record: None)  # the CLI's progress

        def stop(record: dict) -> None:
            shown(record)
            if record["step"] == at_step:
                raise KeyboardInterrupt
        return distill(profile, on_step=stop, **kwargs)
    monkeypatch.setattr(kdcli.commands.noisy_student, "distill", interrupted)


def test_cli_interrupted_loop_resumes_in_its_round_and_matches_an_uninterrupted_one(text_loop, monkeypatch):
    full = runner.invoke(app, ["noisy-student", str(text_loop), "--rounds", "2", "--set", f"output={text_loop.parent / 'full'}", "--json"])
    assert full.exit_code == 0, full.output
    # stderr is a pipe: each round's training shows progress lines, counted from its own step 1
    assert full.stderr.count("distill [distill] step 1/") == 2, full.stderr

    with monkeypatch.context() as patch:
        interrupt_round(patch, "round-2", at_step=2)
        stopped = runner.invoke(app, ["noisy-student", str(text_loop), "--rounds", "2"])
    assert stopped.exit_code == 130 and "interrupted" in stopped.stderr
    assert f"resume with: kdcli noisy-student {text_loop} --rounds 2 --resume" in stopped.stderr
    out = text_loop.parent / "loop"
    state = json.loads((out / "noisy-student.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [1]  # round 1 finished, round 2 was running
    assert torch.load(out / "round-2" / "checkpoints" / "last.pt", weights_only=True)["step"] == 2

    again = runner.invoke(app, ["noisy-student", str(text_loop), "--rounds", "2"])
    assert again.exit_code == 2 and "holds an earlier noisy-student loop" in again.stderr
    assert "--resume" in again.stderr

    resumed = runner.invoke(app, ["noisy-student", str(text_loop), "--rounds", "2", "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    report = json.loads(resumed.stdout)
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert report["rounds"][0] == state["rounds"][0]  # round 1 was not run again
    assert report["rounds"][1]["teacher"] == report["rounds"][0]["student"]
    # resumed at step 2 of round 2, it ends where the uninterrupted loop ended
    assert report["rounds"][1]["eval"] == json.loads(full.stdout)["rounds"][1]["eval"]
    a = AutoModelForSequenceClassification.from_pretrained(text_loop.parent / "full" / "round-2" / "student")
    b = AutoModelForSequenceClassification.from_pretrained(out / "round-2" / "student")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=name)

    table = runner.invoke(app, ["noisy-student", str(text_loop), "--rounds", "2", "--resume"])  # nothing left to run
    assert table.exit_code == 0, table.output
    assert "noisy-student" in table.stderr and all(re.search(rf"│ {r}\s+│", table.stderr) for r in (1, 2))
    assert "pseudo-labelling" not in table.stderr


def test_a_loop_stopped_in_round_one_is_not_overwritten(text_loop, monkeypatch):
    with monkeypatch.context() as patch:
        interrupt_round(patch, "round-1", at_step=1)
        assert runner.invoke(app, ["noisy-student", str(text_loop)]).exit_code == 130
    assert not (text_loop.parent / "loop" / "noisy-student.json").exists()
    again = runner.invoke(app, ["noisy-student", str(text_loop)])
    assert again.exit_code == 2 and "holds an earlier noisy-student loop" in again.stderr
    resumed = runner.invoke(app, ["noisy-student", str(text_loop), "--resume", "--json"])
    assert resumed.exit_code == 0 and [r["round"] for r in json.loads(resumed.stdout)["rounds"]] == [1]


@pytest.mark.parametrize("override, message", [
    ("data.unlabeled=null", "noisy-student needs data.unlabeled"),
    ("teacher=null", "noisy-student needs a first teacher"),
    ("pseudo.threshold=1.0", "pseudo.threshold 1.0 keeps none of 48 samples"),
])
def test_cli_bad_input_exits_2(text_loop, override, message):
    result = runner.invoke(app, ["noisy-student", str(text_loop), "--set", override])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.output


def test_two_rounds_of_timm_students_with_randaugment_and_stochastic_depth(write_profile, timm_resnet, tmp_path):
    from sklearn.datasets import load_digits
    digits = load_digits()
    np.savez(tmp_path / "unlabeled.npz", images=(digits.images[200:240] / 16.0).astype(np.float32))
    spec = {"name": "ns-img", "task": "image-classification",
            "teacher": {"source": "timm", "path": str(timm_resnet), "arch": "resnet18", "num_classes": 10},
            "student": {"path": "unused", "init": {"architecture": "resnet10t", "copy_weights": False,
                                                   "model_args": {"drop_path_rate": 0.1, "drop_rate": 0.2}}},
            "data": {"train": "sklearn:digits", "eval_fraction": 0.25, "unlabeled": str(tmp_path / "unlabeled.npz"),
                     "image_size": 32, "limit": 32},
            "distill": {"losses": [{"kind": "ce"}]},
            "train": {"max_steps": 2, "batch_size": 16, "lr": 1e-3, "noise": {"randaugment": True}},
            "pseudo": {"ratio": 1.0, "balance": True, "per_class": 3, "soft": False}, "output": "loop"}
    result = noisy_student(load_profile(write_profile(spec)), 2)
    first, second = result.rounds
    assert second["teacher"] == first["student"]
    for r in (first, second):
        records = labels_of(tmp_path / "loop" / f"round-{r['round']}" / "pseudo" / "labels.jsonl")
        counts = {label: sum(x["label"] == label for x in records) for label in {x["label"] for x in records}}
        assert set(counts.values()) == {3} and r["pseudo"]["kept"] == len(records)  # balanced: 3 per class
        assert r["pseudo"]["kept_samples"] == len({x["id"] for x in records}) <= 40
        config = json.loads(Path(r["student"], "config.json").read_text())
        assert config["architecture"] == "resnet10t" and config["model_args"]["drop_path_rate"] == 0.1
