"""The compatibility matrix: a tiny model of each family, saved exactly as its library saves it by default,
through init-student -> check -> distill (2 steps) -> evaluate -> export (ONNX parity), all through the CLI.

docs/models.md is the table this matrix proves; test_models_doc_lists_the_matrix keeps them in step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image
from typer.testing import CliRunner

from kdcli.cli import app
from tests.conftest import WORDS, lm_tokenizer, write_lm_data, write_tokenizer

CLASSES = 3  # a head of 3 writes its (default) label names into config.json like any trained classifier
SMALL = {"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 48,
         "max_position_embeddings": 128}
IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}

# family -> a config with tiny sizes (3 layers); the model is its library's default class for the task.
ENCODERS: dict[str, Callable[[], Any]] = {
    "bert": lambda: tf.BertConfig(num_hidden_layers=3, **SMALL),
    "roberta": lambda: tf.RobertaConfig(num_hidden_layers=3, **SMALL, pad_token_id=0),
    "xlm-roberta": lambda: tf.XLMRobertaConfig(num_hidden_layers=3, **SMALL, pad_token_id=0),
    "electra": lambda: tf.ElectraConfig(num_hidden_layers=3, embedding_size=16, **SMALL),
    "deberta-v2": lambda: tf.DebertaV2Config(num_hidden_layers=3, **SMALL, relative_attention=True,
                                             pos_att_type=["p2c", "c2p"], position_buckets=16),
    "distilbert": lambda: tf.DistilBertConfig(n_layers=3, dim=32, n_heads=2, hidden_dim=48, vocab_size=64,
                                              max_position_embeddings=128),
    "modernbert": lambda: tf.ModernBertConfig(num_hidden_layers=3, **SMALL, local_attention=8, pad_token_id=0,
                                              bos_token_id=2, cls_token_id=2, eos_token_id=3, sep_token_id=3),
    "albert": lambda: tf.AlbertConfig(num_hidden_layers=3, embedding_size=16, **SMALL),
}
LM = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
      "num_attention_heads": 2, "max_position_embeddings": 128, **IDS}
DECODERS: dict[str, Callable[[], Any]] = {
    "llama": lambda: tf.LlamaConfig(**LM, num_key_value_heads=1),
    "qwen2": lambda: tf.Qwen2Config(**LM, num_key_value_heads=1),
    "qwen3": lambda: tf.Qwen3Config(**LM, num_key_value_heads=1, head_dim=16),
    "mistral": lambda: tf.MistralConfig(**LM, num_key_value_heads=1),
    "gemma": lambda: tf.GemmaConfig(**LM, num_key_value_heads=1, head_dim=16),
    "phi3": lambda: tf.Phi3Config(**LM),
    "gpt2": lambda: tf.GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=2, n_positions=128, **IDS),
    "gpt-neox": lambda: tf.GPTNeoXConfig(**LM),
}
# family -> (teacher arch, its create_model args, student.init)
TIMM: dict[str, tuple[str, dict, dict]] = {
    "timm-vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 32,
                                          "num_heads": 2}, {"layers": [0, 2]}),
    "timm-deit": ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 32,
                                            "num_heads": 2}, {"layers": [0, 2]}),
    "timm-convnext": ("convnext_atto", {}, {"architecture": "test_convnext"}),
    "timm-resnet": ("resnet10t", {}, {"architecture": "test_resnet"}),
    "timm-efficientnet": ("efficientnet_b0", {}, {"architecture": "test_efficientnet"}),
}
VISION_HF = ("vit",)  # transformers' ViTForImageClassification
# Families kdcli refuses, with the one exit-2 message that says why (docs/models.md records the same).
REFUSED: dict[str, str] = {"vit": "image-classification reads transformers checkpoints not yet"}
FAMILIES = [*ENCODERS, *DECODERS, *TIMM, *VISION_HF]


def cli(*args: Any) -> tuple[int, Any]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"KDCLI_DEBUG": "0"})
    try:
        return result.exit_code, json.loads(result.stdout)
    except ValueError:
        return result.exit_code, result.stderr + result.stdout


# --- teachers, saved as their libraries save them -------------------------------------------------------


def save_encoder(family: str, folder: Path) -> Path:
    torch.manual_seed(0)
    config = ENCODERS[family]()
    config.num_labels = CLASSES
    tf.AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    write_tokenizer(folder)  # WordPiece over the test words: ids 0 [PAD], 2 [CLS], 3 [SEP]
    return folder


def save_decoder(family: str, folder: Path) -> Path:
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(DECODERS[family]()).save_pretrained(folder)
    lm_tokenizer().save_pretrained(folder)  # byte-level BPE, ids 0 <pad>, 1 <s>, 2 </s>
    return folder


def save_timm(family: str, folder: Path) -> Path:
    import timm
    from timm.models import save_for_hf
    arch, args, _ = TIMM[family]
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=CLASSES, **args)
    save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
    return folder


def save_hf_vision(family: str, folder: Path) -> Path:
    torch.manual_seed(0)
    config = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                          intermediate_size=48, num_labels=CLASSES)
    tf.ViTForImageClassification(config).save_pretrained(folder)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# --- data ---------------------------------------------------------------------------------------------


def write_text(folder: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    rows = ["sentence\tlabel"]
    for i in range(24):
        words = [WORDS[int(j)] for j in torch.randint(len(WORDS), (3 + i % 6,), generator=generator)]
        rows.append(f"{' '.join(words)}\t{i % CLASSES}")
    path = folder / "text.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


def write_images(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (folder / "images" / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "images" / f"c{c}" / f"{i}.png")
    return folder / "images"


# --- one profile per kind --------------------------------------------------------------------------------


def profile(family: str, tmp: Path) -> dict:
    train = {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "log_every": 1, "threads": 1}
    spec: dict[str, Any] = {"name": family, "train": train, "output": "run", "export": {"batch_sizes": [2]}}
    if family in ENCODERS:
        data = write_text(tmp)
        losses = [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0},
                  {"kind": "hidden_mse", "layers": "uniform"}]
        if family != "deberta-v2":  # DeBERTa computes attention in its own code: no scores to record
            losses.append({"kind": "attention_mse", "layers": "uniform"})
        spec.update(task="sequence-classification", teacher={"path": str(save_encoder(family, tmp / "teacher"))},
                    student={"path": "student-init", "init": {"layers": [0, 2]}},
                    data={"train": str(data), "eval": str(data), "max_length": 16}, distill={"losses": losses})
    elif family in DECODERS:
        data = write_lm_data(tmp / "lm")["train"]
        spec.update(task="causal-lm", teacher={"path": str(save_decoder(family, tmp / "teacher"))},
                    student={"path": "student-init", "init": {"layers": [0, 2]}},
                    data={"train": str(data), "eval": str(data), "max_length": 24},
                    distill={"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 1.0},
                                        {"kind": "hidden_mse", "layers": "uniform"}]})
    else:
        images = write_images(tmp)
        if family in TIMM:
            teacher, init = {"source": "timm", "path": str(save_timm(family, tmp / "teacher"))}, TIMM[family][2]
        else:
            teacher, init = {"path": str(save_hf_vision(family, tmp / "teacher"))}, {"layers": [0, 2]}
        spec.update(task="image-classification", teacher=teacher, student={"path": "student-init", "init": init},
                    data={"train": str(images), "eval": str(images), "image_size": 32},
                    distill={"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0}]})
    return spec


def write(spec: dict, tmp: Path) -> Path:
    import yaml
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- the matrix -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_family_end_to_end(family: str, tmp_path: Path, one_thread: None) -> None:
    path = write(profile(family, tmp_path), tmp_path)
    code, report = cli("init-student", path, "--json")
    if family in REFUSED:
        assert code == 2 and REFUSED[family] in report["error"], report
        return
    assert code == 0, report
    assert report["student"]["layers"] < report["teacher"]["layers"] or report["layer_map"] == []
    code, result = cli("check", path, "--json")
    assert code == 0, result
    code, result = cli("distill", path, "--json", "--quiet")
    assert code == 0, result
    code, result = cli("evaluate", path, "--json")
    assert code == 0, result
    assert result["metrics"] and result["teacher_metrics"]
    code, result = cli("export", path, "--json", "--no-latency")  # parity is the point; latency has its tests
    assert code == 0, result
    assert result["parity"]["ok"], result["parity"]
    assert Path(result["onnx"]).is_file()


@pytest.mark.parametrize("family", ["distilbert", "modernbert", "deberta-v2", "qwen3", "gpt-neox"])
def test_cut_student_loads_with_its_library_alone(family: str, tmp_path: Path, one_thread: None) -> None:
    """The kept blocks are the teacher's, bit for bit; per-layer config fields follow the kept layers."""
    spec = profile(family, tmp_path)
    assert cli("init-student", write(spec, tmp_path), "--json")[0] == 0
    auto = tf.AutoModelForCausalLM if family in DECODERS else tf.AutoModelForSequenceClassification
    teacher, student = (auto.from_pretrained(p) for p in (spec["teacher"]["path"], tmp_path / "student-init"))
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, value in s_state.items():
        source = key.replace(".1.", ".2.", 1)  # student block 1 is teacher block 2; block 0 is block 0
        assert torch.equal(value, t_state[source]), key
    types = getattr(teacher.config, "layer_types", None)
    if types is not None:
        assert student.config.layer_types == [types[0], types[2]]


def test_models_doc_lists_the_matrix() -> None:
    """docs/models.md has one row per family of the matrix, and a refused family's row says so."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \|(.*)$", text, re.M))
    assert sorted(rows) == sorted(FAMILIES)
    for family in REFUSED:
        assert "refused" in rows[family], family


def test_attention_scores_refused_where_the_model_computes_its_own_attention(tmp_path: Path, one_thread: None
                                                                            ) -> None:
    """DeBERTa-v2 (eager, disentangled attention in its own code): attention_mse is one clear exit 2."""
    spec = profile("deberta-v2", tmp_path)
    spec["distill"]["losses"].append({"kind": "attention_mse", "layers": "uniform"})
    path = write(spec, tmp_path)
    assert cli("init-student", path, "--json")[0] == 0
    code, result = cli("distill", path, "--json", "--quiet")
    assert code == 2, result
    assert "DebertaV2ForSequenceClassification computes its attention in its own code" in result["error"]
