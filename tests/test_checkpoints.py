"""Checkpoint conventions users bring: sharded safetensors, fp16/bf16 weights, tied embeddings, remote code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from kdcli.models import load_model
from tests.conftest import lm_tokenizer, tiny_lm_config, write_lm_data
from tests.test_families import cli


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sharded_half_precision_tied_teacher(tmp_path: Path, dtype: torch.dtype, one_thread: None) -> None:
    torch.manual_seed(0)
    teacher = tmp_path / "teacher"
    model = AutoModelForCausalLM.from_config(tiny_lm_config("llama", layers=3)).to(dtype)
    model.save_pretrained(teacher, max_shard_size="20KB")
    lm_tokenizer().save_pretrained(teacher)
    assert (teacher / "model.safetensors.index.json").is_file()
    data = write_lm_data(tmp_path / "lm")["train"]
    spec = {"name": "half", "task": "causal-lm", "teacher": {"path": str(teacher)},
            "student": {"path": "student", "init": {"layers": [0, 2]}},
            "data": {"train": str(data), "max_length": 24},
            "distill": {"losses": [{"kind": "hinton", "temperature": 1.0}]},
            "train": {"max_steps": 1, "batch_size": 4, "threads": 1}, "output": "run"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    code, report = cli("init-student", tmp_path / "p.yaml", "--json")
    assert code == 0, report
    assert load_model("transformers", teacher, "causal-lm").module.dtype == torch.float32  # trained in fp32
    student = tmp_path / "student"
    assert {t.dtype for t in load_file(student / "model.safetensors").values()} == {dtype}  # saved as it came
    loaded = AutoModelForCausalLM.from_pretrained(student)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # still tied
    assert torch.equal(loaded.model.layers[1].mlp.up_proj.weight.to(dtype), model.model.layers[2].mlp.up_proj.weight)
    code, result = cli("distill", tmp_path / "p.yaml", "--json", "--quiet")
    assert code == 0, result
    assert {t.dtype for t in load_file(tmp_path / "run" / "student" / "model.safetensors").values()} == {dtype}


def test_remote_code_is_refused_naming_the_class(tmp_path: Path, bert_cls: Path) -> None:
    folder = tmp_path / "remote"
    folder.mkdir()
    for file in bert_cls.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_custom.CustomClassifier"}
    (folder / "config.json").write_text(json.dumps(config))
    spec = {"name": "r", "task": "sequence-classification", "teacher": {"path": str(folder)},
            "student": {"path": "student"}, "output": "run"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(spec))
    code, report = cli("init-student", tmp_path / "p.yaml", "--json")
    assert code == 2, report
    assert "modeling_custom.CustomClassifier is code shipped in the checkpoint folder" in report["error"]
