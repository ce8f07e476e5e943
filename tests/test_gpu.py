"""CUDA checks (marker `gpu`; skipped where no GPU is visible): mixed precision against fp32, fp16's loss
scaler, and a causal-LM distill step on the GPU. Run them with `pytest -m gpu tests/test_gpu.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from kdcli.commands.distill import distill
from kdcli.commands.init_student import init_student
from kdcli.profile import load_profile

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _losses(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


def _dtypes(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable


def test_bf16_and_fp16_train_like_fp32_and_save_fp32(write_profile, bert_cls, sst_tiny):
    spec = {"name": "amp", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "init", "init": {"layers": [0, 3]}},
            "data": {"train": str(sst_tiny), "max_length": 16},
            "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton"}, {"kind": "hidden_mse"}]},
            "train": {"max_steps": 6, "batch_size": 8, "lr": 1e-3, "seed": 0, "log_every": 1, "device": "cuda",
                      "checkpoint_every": 2}, "output": "fp32"}
    path = write_profile(spec)
    init_student(load_profile(path))
    losses = {}
    for precision in ("fp32", "bf16", "fp16"):
        profile = load_profile(path, [f"train.precision={precision}", f"output={path.parent / precision}"])
        assert distill(profile).device.startswith("cuda")
        losses[precision] = _losses(path.parent / precision)
        assert _dtypes(path.parent / precision / "student") == {"F32"}  # autocast never reaches the weights
    for precision in ("bf16", "fp16"):
        assert all(torch.isfinite(torch.tensor(losses[precision])))
        assert losses[precision][0] == pytest.approx(losses["fp32"][0], rel=2e-2)  # the same first step
        assert losses[precision][-1] == pytest.approx(losses["fp32"][-1], rel=0.15)
    from kdcli.train.schedule import precision_context  # fp16 scales its loss; bf16 and fp32 need no scaler
    cuda = torch.device("cuda")
    assert precision_context("fp16", cuda)[1].is_enabled() and precision_context("fp16", cuda)[1].get_scale() > 1
    assert not precision_context("bf16", cuda)[1].is_enabled() and not precision_context("fp32", cuda)[1].is_enabled()


def test_a_causal_lm_distills_on_the_gpu(write_profile, tiny_lms, lm_data):
    spec = {"name": "lm", "task": "causal-lm", "teacher": {"path": str(tiny_lms["llama"])},
            "student": {"path": "student-init", "init": {"layers": [0, 3]}},
            "data": {"train": str(lm_data["train"]), "eval": str(lm_data["train"]), "max_length": 48},
            "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 1.0}]},
            "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-3, "log_every": 1, "device": "cuda"},
            "output": "run"}
    path = write_profile(spec)
    init_student(load_profile(path))
    result = distill(load_profile(path))
    assert result.device.startswith("cuda")
    losses = _losses(path.parent / "run")
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert (Path(result.student) / "config.json").is_file() and _dtypes(Path(result.student)) <= {"F32", "BF16"}
