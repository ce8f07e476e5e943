"""A sentence-transformers teacher's pipeline survives distillation: SentenceTransformer(student) pools and
normalizes as the teacher's folder says, evaluate measures that embedding, and the ONNX export has it as
`sentence_embedding` beside `last_hidden_state`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from conftest import tiny_bert_config, write_tokenizer
from transformers import BertModel
from typer.testing import CliRunner

from kdcli.cli import app

SentenceTransformer = pytest.importorskip("sentence_transformers").SentenceTransformer

SENTENCES = ["the film is good", "a bad plot", "really fun and very good", "the acting was awful",
             "this story is the best", "not a dull movie", "it was great", "love the plot but hate it"]


def kd(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def st_folder(folder: Path, pooling: dict, normalize: bool = True, max_seq_length: int = 12) -> Path:
    """A tiny sentence-transformers folder in the 2.x layout the demo's MiniLM ships: the BERT checkpoint at the
    root, 1_Pooling/config.json, a Normalize module without a folder, sentence_bert_config.json."""
    torch.manual_seed(7)
    BertModel(tiny_bert_config()).eval().save_pretrained(folder)
    write_tokenizer(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **pooling}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                  "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"__version__": {
        "sentence_transformers": "2.0.0"}}))
    return folder


CLS = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}


@pytest.fixture(scope="module")
def st_job(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("st-job")
    teacher = st_folder(root / "teacher", CLS)
    (root / "sentences.tsv").write_text("sentence\n" + "".join(f"{s}\n" for s in SENTENCES * 3))
    spec = {"name": "st", "task": "embedding", "teacher": {"path": str(teacher)},
            "student": {"path": "student-init", "init": {"layers": [0, 3]}},
            "data": {"train": "sentences.tsv", "eval": "sentences.tsv", "max_length": 32},
            "distill": {"losses": [{"kind": "hidden_cosine", "layers": "last"}, {"kind": "similarity"}]},
            "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "threads": 1},
            "export": {"batch_sizes": [2]}, "output": "run"}
    profile = root / "profile.yaml"
    profile.write_text(yaml.safe_dump(spec, sort_keys=False))
    made = kd("init-student", profile)
    assert made.exit_code == 0, made.output
    return profile


def encode(folder: Path, sentences: list[str] = SENTENCES) -> np.ndarray:
    return SentenceTransformer(str(folder), device="cpu").encode(sentences, convert_to_numpy=True)


def test_the_teacher_folder_is_a_sentence_transformers_pipeline(st_job):
    model = SentenceTransformer(str(st_job.parent / "teacher"), device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
    assert np.allclose(np.linalg.norm(encode(st_job.parent / "teacher"), axis=1), 1.0, atol=1e-5)


def test_the_student_folder_carries_the_pipeline(st_job, one_thread):
    student = st_job.parent / "student-init"
    for name in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json"):
        assert (student / name).is_file(), name
    model = SentenceTransformer(str(student), device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
    assert model[1].pooling_mode == "cls" and model.max_seq_length == 12
    assert np.allclose(np.linalg.norm(encode(student), axis=1), 1.0, atol=1e-5)
    from huggingface_hub import ModelCard
    card = ModelCard.load(student / "README.md")
    assert card.data.library_name == "sentence-transformers" and card.data.pipeline_tag == "sentence-similarity"
    assert card.data.to_dict()["kdcli"]["pipeline"] == {"pooling": ["cls"], "normalize": True, "max_seq_length": 12}

    result = kd("distill", st_job)
    assert result.exit_code == 0, result.output
    trained = st_job.parent / "run" / "student"
    model = SentenceTransformer(str(trained), device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
    assert model[1].pooling_mode == "cls" and model.max_seq_length == 12
    vectors = encode(trained)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    # evaluate measures the pipeline's embedding: its cosine is the one sentence-transformers gives.
    judged = kd("evaluate", st_job, "--json")
    assert judged.exit_code == 0, judged.output
    teacher_vectors = encode(st_job.parent / "teacher")
    expected = float(np.mean(np.sum(vectors * teacher_vectors, axis=1)))  # both unit length
    assert json.loads(judged.stdout)["agreement"]["cosine_to_teacher"] == pytest.approx(expected, abs=1e-4)


def test_the_onnx_export_has_the_sentence_embedding(st_job, tmp_path, one_thread):
    student = st_job.parent / "student-init"
    result = kd("export", st_job, "--student", student, "--output", tmp_path, "--no-latency")
    assert result.exit_code == 0, result.output
    parity = json.loads((tmp_path / "parity.json").read_text())
    assert set(parity["outputs"]) == {"last_hidden_state", "sentence_embedding"} and parity["ok"] is True
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state", "sentence_embedding"]
    from transformers import AutoConfig, AutoTokenizer
    alone = tmp_path.parent / f"{tmp_path.name}-alone"  # the export folder by itself serves the embedding
    shutil.copytree(tmp_path, alone)
    assert AutoConfig.from_pretrained(alone).hidden_size == 32
    batch = AutoTokenizer.from_pretrained(alone)(SENTENCES, padding=True, truncation=True, max_length=12,
                                                 return_tensors="np")
    (got,) = session.run(["sentence_embedding"], {"input_ids": batch["input_ids"],
                                                  "attention_mask": batch["attention_mask"]})
    np.testing.assert_allclose(got, encode(student), atol=1e-5)

    # A text past the pipeline's limit (12 tokens) is cut where SentenceTransformer cuts it: the tokenizer
    # written to export/ says so itself, with no max_length from the caller.
    tokenizer = AutoTokenizer.from_pretrained(alone)
    assert tokenizer.model_max_length == 12
    long_text = [" ".join(SENTENCES)]
    batch = tokenizer(long_text, truncation=True, return_tensors="np")
    assert batch["input_ids"].shape[1] == 12
    (got,) = session.run(["sentence_embedding"], {"input_ids": batch["input_ids"],
                                                  "attention_mask": batch["attention_mask"]})
    np.testing.assert_allclose(got, encode(student, long_text), atol=1e-5)


@pytest.mark.parametrize("pooling, normalize", [({"pooling_mode": "mean"}, False),
                                                ({"pooling_mode_max_tokens": True}, True),
                                                ({"pooling_mode": ["mean", "lasttoken"]}, True),
                                                ({"pooling_mode": "weightedmean"}, False),
                                                ({"pooling_mode_mean_sqrt_len_tokens": True}, True)])
def test_kdcli_pools_as_sentence_transformers_does(tmp_path, pooling, normalize):
    from kdcli.models.hf import load_hf
    folder = st_folder(tmp_path / "st", pooling, normalize)
    model = load_hf(folder, "embedding")
    batch = model.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ours = model.forward({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                             frozenset({"embedding"})).embedding.numpy()
    np.testing.assert_allclose(ours, encode(folder), atol=1e-5)


def test_a_module_kdcli_cannot_reproduce_is_refused(tmp_path):
    teacher = st_folder(tmp_path / "dense", CLS)
    modules = json.loads((teacher / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (teacher / "modules.json").write_text(json.dumps(modules))
    spec = {"name": "dense", "task": "embedding", "teacher": {"path": str(teacher)},
            "student": {"path": str(tmp_path / "s"), "init": {"layers": [0]}}, "output": "run"}
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(spec))
    result = kd("init-student", profile)
    assert result.exit_code == 2, result.output
    assert "module 2 is 'sentence_transformers.models.Dense'" in result.stderr.replace("\n", " ")
    shutil.rmtree(teacher)
