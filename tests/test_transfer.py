"""Transfer sets (data.transfer) and the masked, cacheable hidden_mse, through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.data.splits import Split
from kdcli.losses import functional as KF
from kdcli.losses.specs import HiddenMseSpec
from kdcli.train.transfer import TransferFeed


def _kd(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _unlabeled(sst: Path, folder: Path) -> Path:
    """The tiny TSV's sentences as a .txt transfer file, labels dropped."""
    lines = sst.read_text().splitlines()[1:]
    path = folder / "transfer.txt"
    path.write_text("".join(line.split("\t")[0] + "\n" for line in lines))
    return path


def _spec(teacher: Path, sst: Path, transfer: Path, **train: object) -> dict:
    return {"name": "t", "task": "sequence-classification", "teacher": {"path": str(teacher)},
            "student": {"path": "init", "init": {"layers": [0, 3]}},
            "data": {"train": str(sst), "eval": str(sst), "transfer": str(transfer), "transfer_ratio": 2.0,
                     "max_length": 16, "limit": 16},
            "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0},
                                   {"kind": "hidden_mse", "layers": {1: 2, 2: 4}, "mask": True}]},
            "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "seed": 3, "log_every": 1, **train},
            "output": "run"}


def test_cached_and_live_teacher_give_the_same_student(write_profile, bert_cls, sst_tiny, tmp_path):
    spec = _spec(bert_cls, sst_tiny, _unlabeled(sst_tiny, tmp_path))
    assert _kd("init-student", write_profile(spec, "init.yaml")).exit_code == 0
    students = {}
    for cache in (False, True):
        path = write_profile({**spec, "output": f"run-{cache}"}, f"p-{cache}.yaml")
        result = _kd("distill", path, "--set", f"train.cache_teacher={str(cache).lower()}", "--quiet")
        assert result.exit_code == 0, result.output
        students[cache] = load_file(tmp_path / f"run-{cache}" / "student" / "model.safetensors")
        records = [json.loads(line) for line in (tmp_path / f"run-{cache}" / "metrics.jsonl").open()]
        assert any("loss/transfer/hinton" in r for r in records)
        assert not any("loss/transfer/ce" in r for r in records)  # the label loss skips transfer samples
    assert (tmp_path / "run-True" / "cache" / "transfer-0.pt").is_file()
    for key, value in students[False].items():
        torch.testing.assert_close(value, students[True][key], atol=1e-4, rtol=0, msg=key)


def _sharpen(model_dir: Path, folder: Path, seed: int) -> Path:
    """A copy with a new, confident head: random heads give near-uniform outputs, with nothing to measure."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape,
                                                  generator=torch.Generator().manual_seed(seed)))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder


def test_transfer_only_run_learns_without_labels(write_profile, bert_cls, sst_tiny, tmp_path):
    spec = _spec(_sharpen(bert_cls, tmp_path / "teacher", 0), sst_tiny, _unlabeled(sst_tiny, tmp_path), max_steps=30, cache_teacher=True, lr=3e-3)
    spec["student"]["init"]["layers"] = [0]
    spec["data"] = {**spec["data"], "train": None, "limit": None}
    spec["distill"]["losses"] = [{"kind": "hinton", "temperature": 1.0}]
    path = write_profile(spec)
    assert _kd("init-student", path).exit_code == 0
    _sharpen(tmp_path / "init", tmp_path / "init", 1)  # a student that starts out disagreeing
    before = _kd("evaluate", path, "--model", tmp_path / "init", "--output", tmp_path / "before.json", "--json")
    assert before.exit_code == 0, before.output
    result = _kd("distill", path, "--quiet")
    assert result.exit_code == 0, result.output
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").open()) if "loss" in r]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    after = _kd("evaluate", path, "--json")
    assert after.exit_code == 0, after.output
    agreement = json.loads(after.stdout)["agreement"], json.loads(before.stdout)["agreement"]
    assert agreement[0]["kl"] < 0.5 * agreement[1]["kl"]
    assert agreement[0]["top1"] > agreement[1]["top1"]


def test_transfer_without_a_teacher_loss_is_refused(write_profile, bert_cls, sst_tiny, tmp_path):
    spec = _spec(bert_cls, sst_tiny, _unlabeled(sst_tiny, tmp_path))
    spec["distill"]["losses"] = [{"kind": "ce"}]
    path = write_profile(spec)
    assert _kd("init-student", path).exit_code == 0
    result = _kd("distill", path)
    assert result.exit_code == 2 and "data.transfer: no loss learns from the teacher without labels" in result.stderr


def test_transfer_walk_covers_every_sample_once_a_pass():
    split = Split(kind="text", size=10, lengths=[3, 9, 4, 7, 5, 2, 8, 6, 1, 5])
    feed = TransferFeed(split, batch_size=3, seed=0)
    passes = [[i for k in range(p * 4, p * 4 + 4) for i in feed.indices(k)] for p in range(2)]
    assert all(sorted(seen) == list(range(10)) for seen in passes)
    assert passes[0] != passes[1]  # reshuffled each pass
    assert feed.indices(5) == TransferFeed(split, batch_size=3, seed=0).indices(5)  # pure in position


def test_masked_hidden_mse_is_the_mean_over_real_tokens():
    s, t = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    real = mask.bool()
    assert torch.allclose(KF.hidden_mse(s, t, mask), ((s - t)[real] ** 2).mean())
    assert torch.allclose(KF.hidden_mse(s, t), ((s - t) ** 2).mean())  # TinyBERT's default: padding counts
    padded = t.clone()
    padded[0, 3:] = 123.0  # what sits under padding does not matter with the mask
    assert torch.allclose(KF.hidden_mse(s, padded, mask), KF.hidden_mse(s, t, mask))


@pytest.mark.parametrize(("mask", "text"), [(False, False), (True, True)])
def test_only_masked_hidden_mse_is_cacheable_on_text(mask: bool, text: bool):
    spec = HiddenMseSpec(kind="hidden_mse", mask=mask)
    assert spec.cache_serves("text") is text
    assert spec.cache_serves("image")


def test_image_transfer_set_with_consistent_augmentation(write_profile, timm_resnet, tmp_path):
    import numpy as np
    np.savez(tmp_path / "unlabeled.npz", images=np.random.default_rng(0).random((24, 8, 8), dtype=np.float32))
    spec = {"name": "i", "task": "image-classification",
            "teacher": {"source": "timm", "path": str(timm_resnet), "arch": "resnet18", "num_classes": 10},
            "student": {"path": "init", "init": {"architecture": "resnet10t"}},
            "data": {"train": "sklearn:digits", "transfer": str(tmp_path / "unlabeled.npz"), "image_size": 32,
                     "limit": 32, "transfer_ratio": 0.5},
            "distill": {"losses": [{"kind": "ce"}, {"kind": "hinton"}]},
            "train": {"max_steps": 2, "batch_size": 16, "log_every": 1,
                      "augment": {"randaugment": True, "cutmix": 1.0}}, "output": "run"}
    path = write_profile(spec)
    assert _kd("init-student", path).exit_code == 0
    result = _kd("distill", path, "--quiet")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all("loss/transfer/hinton" in r for r in records if "loss" in r)
