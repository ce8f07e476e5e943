"""A model card (README.md, huggingface_hub ModelCard) in every student folder: base model and licence as the
teacher's card states them, what was kept, losses and data, size, then evaluate's and export's numbers."""

from __future__ import annotations

import shutil

import yaml
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from kdcli.cli import app

TEACHER_CARD = """---
license: mit
language: en
tags: [text-classification]
---

# tiny-bert-sst

A tiny BERT sentiment classifier, for tests.
"""


def kd(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_the_card_grows_with_the_run(tmp_path, bert_cls, sst_tiny, one_thread):
    teacher = tmp_path / "teacher"
    shutil.copytree(bert_cls, teacher)
    (teacher / "README.md").write_text(TEACHER_CARD)
    spec = {"name": "tiny-student", "task": "sequence-classification", "teacher": {"path": str(teacher)},
            "student": {"path": "student-init", "init": {"layers": [0, 3], "drop": ["token_type_embeddings"]}},
            "data": {"train": str(sst_tiny), "eval": str(sst_tiny), "max_length": 16},
            "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0},
                                   {"kind": "hidden_mse", "layers": {1: 2}}]},
            "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "threads": 1},
            "export": {"batch_sizes": [2]}, "output": "run"}
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump(spec, sort_keys=False))

    assert kd("init-student", profile).exit_code == 0
    card = ModelCard.load(tmp_path / "student-init" / "README.md")
    assert card.data.license == "mit" and card.data.base_model == "tiny-bert-sst"
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    facts = card.data.to_dict()["kdcli"]
    assert facts["layer_map"] == [0, 3] and facts["dropped"] == ["token_type_embeddings"]
    assert facts["classes"] == ["negative", "positive"] and facts["params"] < facts["teacher_params"]
    assert "Student layer ← teacher layer (copied bit for bit): 0←0, 1←3." in card.text
    assert "distilled from **tiny-bert-sst**" in card.text and "mit" in card.text

    result = kd("distill", profile)
    assert result.exit_code == 0, result.output
    for folder in ("student", "student-best"):
        card = ModelCard.load(tmp_path / "run" / folder / "README.md")
        facts = card.data.to_dict()["kdcli"]
        assert card.data.license == "mit" and facts["layer_map"] == [0, 3], folder
        assert [loss["kind"] for loss in facts["training"]["losses"]] == ["ce", "hinton", "hidden_mse"]
        assert facts["training"]["data"]["train"] == sst_tiny.name and facts["training"]["samples"]["train"] == 48
        assert "accuracy" in facts["eval"]["metrics"]
        assert "`hidden_mse` weight 1.0, map {'1': 2}" in card.text and "## Evaluation" in card.text
    assert ModelCard.load(tmp_path / "run" / "student" / "README.md").data.to_dict()["kdcli"]["training"]["steps"] == 2

    assert kd("evaluate", profile).exit_code == 0
    facts = ModelCard.load(tmp_path / "run" / "student" / "README.md").data.to_dict()["kdcli"]
    assert facts["eval"]["retention"] is not None and "teacher_metrics" in facts["eval"]
    assert kd("evaluate", profile, "--model", "teacher", "--output", tmp_path / "t.json").exit_code == 0
    assert (teacher / "README.md").read_text() == TEACHER_CARD  # the teacher's own card is never touched

    exported = kd("export", profile, "--quantize", "int8", "--latency-seconds", "0")
    assert exported.exit_code == 0, exported.output
    card = ModelCard.load(tmp_path / "run" / "student" / "README.md")
    facts = card.data.to_dict()["kdcli"]
    assert facts["export"]["parity_ok"] is True and facts["export"]["int8"]["metric"] == "accuracy"
    assert facts["export"]["speedup"]["onnxruntime"]["2"] > 0
    assert "## ONNX" in card.text and "Speed-up over the teacher (onnxruntime): batch 2:" in card.text
    assert facts["layer_map"] == [0, 3] and facts["eval"]["retention"] is not None  # nothing forgotten


def test_a_model_trained_from_labels_has_a_card_too(tmp_path, one_thread):
    spec = {"name": "digits-scratch", "task": "image-classification",
            "student": {"path": "init", "init": {"architecture": "resnet10t"}},
            "data": {"train": "sklearn:digits", "image_size": 16, "limit": 64},
            "distill": {"losses": [{"kind": "ce"}]},
            "train": {"max_steps": 1, "batch_size": 16, "threads": 1}, "output": "run"}
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(spec))
    assert kd("init-student", profile).exit_code == 0
    result = kd("distill", profile)
    assert result.exit_code == 0, result.output
    card = ModelCard.load(tmp_path / "run" / "student" / "README.md")
    facts = card.data.to_dict()["kdcli"]
    assert card.data.library_name == "timm" and card.data.license is None and card.data.base_model is None
    assert facts["classes"] == [str(i) for i in range(10)] and facts["architecture"] == "resnet10t"
    assert "trained from labels" in card.text
