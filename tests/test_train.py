"""distill end to end on tiny real checkpoints: files, resume equality, NaN, Ctrl-C, stages, profiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification

from kdcli.commands.distill import distill
from kdcli.commands.init_student import init_student
from kdcli.errors import BadInput
from kdcli.profile import load_profile


def text_profile(write_profile, teacher: Path, data: Path, losses: list[dict], **train) -> Path:
    spec = {
        "name": "tiny", "task": "sequence-classification", "teacher": {"path": str(teacher)},
        "student": {"path": "student-init", "init": {"layers": [0, 3], "drop": ["token_type_embeddings"]}},
        "data": {"train": str(data), "eval": str(data), "max_length": 16},
        "distill": {"losses": losses},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 3, "log_every": 1, **train},
        "output": "run",
    }
    path = write_profile(spec)
    init_student(load_profile(path))
    return path


ALL_TEXT_LOSSES = [
    {"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0},
    {"kind": "dkd", "weight": 0.1}, {"kind": "hidden_cosine", "layers": {2: 4}},
    {"kind": "hidden_mse", "layers": "uniform"}, {"kind": "embedding_mse"},
    {"kind": "attention_mse", "layers": "uniform"}, {"kind": "rkd", "weight": 0.1}, {"kind": "similarity"},
]


def student_state(run: Path) -> dict[str, torch.Tensor]:
    return AutoModelForSequenceClassification.from_pretrained(run / "student").state_dict()


def test_every_text_loss_trains_and_writes_the_run_folder(write_profile, bert_cls, sst_tiny):
    path = text_profile(write_profile, bert_cls, sst_tiny, ALL_TEXT_LOSSES, max_steps=4)
    summary = distill(load_profile(path))
    run = Path(summary.output_dir)
    assert (run / "profile.lock.yaml").is_file() and (run / "checkpoints" / "last.pt").is_file()
    lock = yaml.safe_load((run / "profile.lock.yaml").read_text())
    assert lock["versions"]["torch"] == torch.__version__
    model = AutoModelForSequenceClassification.from_pretrained(run / "student")  # no kdcli needed
    assert model.config.num_hidden_layers == 2
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert {"loss/ce", "loss/hinton", "loss/attention_mse", "loss/rkd", "lr", "samples_per_s"} <= set(steps[0])
    assert any("eval" in line and "accuracy" in line["eval"]["metrics"] for line in lines)
    assert 0.0 <= summary.eval["metrics"]["accuracy"] <= 1.0 and "top1" in summary.eval["agreement"]


def test_loss_goes_down(write_profile, bert_cls, sst_tiny):
    path = text_profile(write_profile, bert_cls, sst_tiny, [{"kind": "hinton"}, {"kind": "hidden_mse"}],
                        epochs=6, warmup_ratio=0.0)
    distill(load_profile(path))
    steps = [json.loads(x) for x in (path.parent / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [s["loss"] for s in steps if "loss" in s]
    assert losses[-1] < 0.5 * losses[0]


def test_killed_run_resumes_to_the_same_student(write_profile, bert_cls, sst_tiny, tmp_path):
    losses = [{"kind": "ce", "weight": 0.5}, {"kind": "hinton"}, {"kind": "hidden_mse"}]
    path = text_profile(write_profile, bert_cls, sst_tiny, losses, max_steps=8, checkpoint_every=3)
    full = distill(load_profile(path, [f"output={path.parent / 'full'}"]))

    class Crash(Exception):
        pass

    def crash_at_5(record: dict) -> None:
        if record["step"] == 5:
            raise Crash()
    with pytest.raises(Crash):  # an unclean death after step 5: the last checkpoint is step 3
        distill(load_profile(path, [f"output={path.parent / 'crashed'}"]), on_step=crash_at_5)
    state = torch.load(path.parent / "crashed" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3
    distill(load_profile(path, [f"output={path.parent / 'crashed'}"]), resume=True)
    lines = [json.loads(x) for x in (path.parent / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == list(range(1, 9))  # steps 4-5 logged once, not twice
    a, b = student_state(Path(full.output_dir)), student_state(path.parent / "crashed")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)


def test_ctrl_c_saves_a_checkpoint_then_resume_matches(write_profile, bert_cls, sst_tiny):
    path = text_profile(write_profile, bert_cls, sst_tiny, [{"kind": "hinton"}], max_steps=6)
    full = distill(load_profile(path, [f"output={path.parent / 'full'}"]))

    def interrupt_at_4(record: dict) -> None:
        if record["step"] == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        distill(load_profile(path, [f"output={path.parent / 'stopped'}"]), on_step=interrupt_at_4)
    assert torch.load(path.parent / "stopped" / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
    distill(load_profile(path, [f"output={path.parent / 'stopped'}"]), resume=True)
    a, b = student_state(Path(full.output_dir)), student_state(path.parent / "stopped")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)


def test_refuses_to_overwrite_an_earlier_run(write_profile, bert_cls, sst_tiny):
    path = text_profile(write_profile, bert_cls, sst_tiny, [{"kind": "hinton"}], max_steps=1)
    distill(load_profile(path))
    with pytest.raises(BadInput, match="holds an earlier run"):
        distill(load_profile(path))


def test_wrong_layer_map_names_both_depths(write_profile, bert_cls, sst_tiny):
    path = text_profile(write_profile, bert_cls, sst_tiny, [{"kind": "hidden_mse", "layers": {3: 4}}], max_steps=1)
    with pytest.raises(BadInput, match="the student has 2 layers and the teacher has 4"):
        distill(load_profile(path))


def test_two_stages_run_in_order(write_profile, bert_cls, sst_tiny):
    path = text_profile(write_profile, bert_cls, sst_tiny, [{"kind": "ce"}], max_steps=2)
    stages = [{"name": "intermediate", "lr": 1e-3, "losses": [{"kind": "hidden_mse"}, {"kind": "attention_mse"}]},
              {"name": "prediction", "losses": [{"kind": "hinton"}]}]
    profile = load_profile(path, [f"distill={json.dumps({'stages': stages})}"])
    distill(profile)
    steps = [json.loads(x) for x in (path.parent / "run" / "metrics.jsonl").read_text().splitlines()]
    order = [s["stage"] for s in steps if "loss" in s]
    assert order == ["intermediate", "intermediate", "prediction", "prediction"]
    assert "loss/attention_mse" in steps[0] and "loss/hinton" in [s for s in steps if "loss" in s][-1]


def test_supervised_profile_needs_no_teacher(write_profile, bert_encoder, sst_tiny):
    spec = {"name": "sup", "task": "sequence-classification", "student": {"path": str(bert_encoder)},
            "data": {"train": str(sst_tiny), "eval_fraction": 0.25, "max_length": 16},
            "distill": {"losses": [{"kind": "ce"}]},
            "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-3}, "output": "sup"}
    summary = distill(load_profile(write_profile(spec)))
    model = AutoModelForSequenceClassification.from_pretrained(summary.student)
    assert model.config.num_labels == 2 and "accuracy" in summary.eval["metrics"]


def test_masked_lm_triple_loss(write_profile, bert_mlm, sst_tiny):
    spec = {"name": "mlm", "task": "masked-lm", "teacher": {"path": str(bert_mlm)},
            "student": {"path": "student-init", "init": {"layers": "every-other", "architecture": "distilbert",
                                                         "drop": ["token_type_embeddings", "pooler"]}},
            "data": {"train": str(sst_tiny), "max_length": 16},
            "distill": {"losses": [{"kind": "mlm", "weight": 2.0}, {"kind": "hinton", "weight": 5.0},
                                   {"kind": "hidden_cosine", "layers": "last"}]},
            "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "log_every": 1}, "output": "mlm"}
    path = write_profile(spec)
    init_student(load_profile(path))
    distill(load_profile(path))
    steps = [json.loads(x) for x in (path.parent / "mlm" / "metrics.jsonl").read_text().splitlines()]
    assert all(s["loss/mlm"] > 0 for s in steps if "loss" in s)


def test_timm_feature_and_relation_losses(write_profile, timm_resnet, tmp_path):
    spec = {"name": "img", "task": "image-classification",
            "teacher": {"source": "timm", "path": str(timm_resnet), "arch": "resnet18", "num_classes": 10},
            "student": {"path": "student-init", "init": {"architecture": "resnet10t"}},
            "data": {"train": "sklearn:digits", "eval_fraction": 0.1, "image_size": 32, "limit": 96},
            "distill": {"losses": [{"kind": "ce"}, {"kind": "hinton"}, {"kind": "fitnet", "stages": {4: 4}},
                                   {"kind": "attention_transfer", "stages": "uniform", "weight": 100},
                                   {"kind": "rkd"}, {"kind": "similarity"}]},
            "train": {"max_steps": 2, "batch_size": 16, "lr": 1e-3, "log_every": 1, "checkpoint_every": 1},
            "output": "img"}
    path = write_profile(spec)
    init_student(load_profile(path))
    saved: dict = {}

    def peek(record: dict) -> None:  # the FitNet regressor is learned: it is checkpointed mid-run
        if record["step"] == 1:
            saved.update(torch.load(path.parent / "img" / "checkpoints" / "last.pt", weights_only=True))
    summary = distill(load_profile(path), on_step=peek)
    assert any("projections.4" in key for key in saved["losses"])
    import timm
    model = timm.create_model(f"local-dir:{summary.student}", pretrained=True)
    assert model.num_classes == 10
    checkpoint = torch.load(path.parent / "img" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["stage"] == 1  # every stage finished
