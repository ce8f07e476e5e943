"""Tasks are declared once (kdcli/tasks): the registry, what the profile accepts, and a task declared here, in
the test, that runs through init-student, distill and evaluate without a change to any kdcli module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import transformers
import yaml
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from kdcli.card import update_card
from kdcli.cli import app
from kdcli.profile import Profile
from kdcli.tasks import TASKS, Task, task_named

BUILT_IN = ["sequence-classification", "image-classification", "masked-lm", "embedding", "causal-lm",
            "token-classification"]


def _profile(task: object) -> dict:
    return {"name": "job", "task": task, "student": {"path": "s"}, "output": "o"}


def test_the_built_in_tasks_are_declared_and_profiles_accept_them():
    assert list(TASKS)[: len(BUILT_IN)] == BUILT_IN
    for name in BUILT_IN:
        profile = Profile.model_validate(_profile(name))
        assert profile.task is task_named(name) and profile.model_dump(mode="json")["task"] == name


def test_an_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'regression'.*causal-lm"):
        Profile.model_validate(_profile("regression"))


@pytest.mark.parametrize("value", [[], {"a": 1}, 3])
def test_a_task_that_is_not_a_name_is_a_validation_error(value: object):
    with pytest.raises(ValueError, match="unknown task"):
        Profile.model_validate(_profile(value))


def test_a_task_is_declared_once():
    with pytest.raises(ValueError, match="declared twice"):
        type("Again", (Task,), {"name": "masked-lm"})


def test_declared_model_classes_exist_in_transformers():
    for task in TASKS.values():
        for name in (task.hf_class, task.distilbert_class):
            assert name is None or hasattr(transformers, name), (task, name)


def test_a_causal_lm_card_carries_its_pipeline_tag(tmp_path: Path):
    update_card(tmp_path, {"task": "causal-lm", "family": "transformers"})
    assert ModelCard.load(tmp_path / "README.md").data.pipeline_tag == "text-generation"


def test_retention_follows_the_declaration():
    metrics, teacher = {"accuracy": 0.8, "perplexity": 20.0}, {"accuracy": 1.0, "perplexity": 10.0}
    agreement = {"cosine_to_teacher": 0.9}
    assert task_named("sequence-classification").retention_of(metrics, teacher, agreement) == pytest.approx(0.8)
    assert task_named("causal-lm").retention_of(metrics, teacher, agreement) == pytest.approx(0.5)
    assert task_named("embedding").retention_of(metrics, teacher, agreement) == pytest.approx(0.9)
    assert task_named("masked-lm").retention_of(metrics, teacher, agreement) is None


# --- a task declared in the test --------------------------------------------------------------------


@pytest.fixture()
def toy_task() -> Iterator[type[Task]]:
    class ToyTopic(Task):
        """Text topics judged on macro-F1, tagged for the Hub as zero-shot classification."""

        name = "toy-topic"
        has_classes = True
        primary = ("metrics", "macro_f1")
        retention = "accuracy"
        pipeline_tag = "zero-shot-classification"
        pseudo = "classes"
        hf_class = "AutoModelForSequenceClassification"

    yield ToyTopic
    del TASKS[ToyTopic.name]


def test_a_task_declared_in_a_test_runs_through_distill_and_evaluate(toy_task, write_profile, bert_cls, sst_tiny):
    profile = write_profile({
        "name": "toy", "task": toy_task.name, "teacher": {"path": str(bert_cls)},
        "student": {"path": "student-init", "init": {"layers": [0, 3]}},
        "data": {"train": str(sst_tiny), "eval": str(sst_tiny), "max_length": 16},
        "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0}]},
        "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3}, "output": "run"})
    kd = CliRunner()
    for command in ("init-student", "distill"):
        result = kd.invoke(app, [command, str(profile), "--quiet"])
        assert result.exit_code == 0, result.output
    result = kd.invoke(app, ["evaluate", str(profile), "--json", "--min-metric", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["task"] == "toy-topic" and report["retention"] is not None
    assert [gate["measures"] for gate in report["gates"]] == ["macro_f1"]  # the declared primary metric
    card = ModelCard.load(Path("run/student/README.md"))
    assert card.data.pipeline_tag == "zero-shot-classification" and card.data.kdcli["task"] == "toy-topic"
    assert yaml.safe_load(Path("run/profile.lock.yaml").read_text())["profile"]["task"] == "toy-topic"
