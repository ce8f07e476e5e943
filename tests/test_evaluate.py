"""evaluate: eval.json against numbers computed by hand from the models, the CI gates, embeddings, ONNX.

The teacher is a tiny random BERT whose bias is set so that it splits the sentences about evenly; the
labels are its own predictions with every fourth one flipped, so its accuracy is exactly 0.75.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import LABELS, WORDS, tiny_bert_config, write_tokenizer
from sklearn.metrics import f1_score
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.commands.distill import distill
from kdcli.commands.export import export_profile
from kdcli.commands.init_student import init_student
from kdcli.profile import load_profile

MAX_LENGTH = 16


def sentences(n: int = 40, seed: int = 11) -> list[str]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(3, 12, (1,), generator=generator))
        out.append(" ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=generator)))
    return out


def encode(folder: Path, texts: list[str]) -> dict[str, torch.Tensor]:
    """transformers' own tokenizer call and padding: an independent path to kdcli's batches."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=MAX_LENGTH)


@torch.no_grad()
def logits_of(folder: Path, texts: list[str]) -> torch.Tensor:
    return AutoModelForSequenceClassification.from_pretrained(folder).eval()(**encode(folder, texts)).logits


@torch.no_grad()
def embeddings_of(folder: Path, texts: list[str]) -> torch.Tensor:
    batch = encode(folder, texts)
    hidden = AutoModel.from_pretrained(folder).eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def params(folder: Path) -> int:
    return sum(p.numel() for p in AutoModelForSequenceClassification.from_pretrained(folder).parameters())


def folder_bytes(folder: Path) -> int:
    """The model's bytes: the folder without its model card (README.md), which evaluate itself updates."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and f.name != "README.md")


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> dict:
    """Teacher, data, init student, a two-step distilled student; the profile path and the texts."""
    root = tmp_path_factory.mktemp("evaluate")
    texts = sentences()
    torch.manual_seed(7)
    teacher = BertForSequenceClassification(tiny_bert_config(num_labels=2, initializer_range=0.3, **LABELS)).eval()
    tokenizer = write_tokenizer(root / "teacher")
    with torch.no_grad():  # centre the decision so that the teacher predicts both classes
        margin = teacher(**tokenizer(texts, return_tensors="pt", padding=True)).logits.diff(dim=-1)
        teacher.classifier.bias[1] -= float(margin.median()) + 1e-3
    teacher.save_pretrained(root / "teacher")
    t_pred = logits_of(root / "teacher", texts).argmax(-1)
    assert 0.3 < t_pred.float().mean() < 0.7
    labels = [int(p) if i % 4 else 1 - int(p) for i, p in enumerate(t_pred)]
    (root / "eval.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, labels)))
    spec = {"name": "eval", "task": "sequence-classification", "teacher": {"path": "teacher"},
            "student": {"path": "student-init", "init": {"layers": [0, 3], "drop": ["token_type_embeddings"]}},
            "data": {"train": "eval.tsv", "eval": "eval.tsv", "max_length": MAX_LENGTH},
            "distill": {"losses": [{"kind": "hinton", "temperature": 2.0}]},
            "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3}, "output": "run", "export": {"batch_sizes": [1]}}
    path = root / "profile.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    init_student(load_profile(path))
    distill(load_profile(path))
    return {"profile": path, "root": root, "texts": texts, "labels": torch.tensor(labels)}


def evaluate(*args: str):
    return CliRunner().invoke(app, ["evaluate", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def report(job) -> dict:
    result = evaluate(job["profile"], "--json")
    assert result.exit_code == 0, result.output
    on_disk = json.loads((job["root"] / "run" / "eval.json").read_text())
    printed = json.loads(result.stdout)
    assert printed.pop("output_dir") == str(job["root"] / "run")
    assert printed == on_disk
    return on_disk


def test_eval_json_has_the_documented_keys(report, job):
    assert {"model", "metrics", "teacher_metrics", "agreement", "retention", "params", "size_bytes"} <= set(report)
    assert {"accuracy", "macro_f1"} <= set(report["metrics"]) and set(report["agreement"]) == {"top1", "kl"}
    assert set(report["params"]) == set(report["size_bytes"]) == {"teacher", "student"}
    assert report["model"] == str(job["root"] / "run" / "student")
    assert report["samples"] == len(job["texts"])


def test_numbers_match_a_hand_computation(report, job):
    root, labels = job["root"], job["labels"]
    t_logits, s_logits = logits_of(root / "teacher", job["texts"]), logits_of(root / "run" / "student", job["texts"])
    t_pred, s_pred = t_logits.argmax(-1), s_logits.argmax(-1)
    assert report["teacher_metrics"]["accuracy"] == pytest.approx(0.75, abs=1e-9)
    assert report["metrics"]["accuracy"] == pytest.approx((s_pred == labels).float().mean().item(), abs=1e-9)
    assert report["metrics"]["macro_f1"] == pytest.approx(f1_score(labels, s_pred, average="macro"), abs=1e-9)
    assert report["teacher_metrics"]["macro_f1"] == pytest.approx(f1_score(labels, t_pred, average="macro"))
    assert report["agreement"]["top1"] == pytest.approx((s_pred == t_pred).float().mean().item(), abs=1e-9)
    kl = (F.softmax(t_logits, -1) * (F.log_softmax(t_logits, -1) - F.log_softmax(s_logits, -1))).sum(-1).mean()
    assert report["agreement"]["kl"] == pytest.approx(kl.item(), rel=1e-3, abs=1e-7)
    assert report["agreement"]["kl"] > 0
    assert report["retention"] == pytest.approx(report["metrics"]["accuracy"] / 0.75)
    assert report["params"] == {"teacher": params(root / "teacher"), "student": params(root / "run" / "student")}
    assert report["params"]["student"] < report["params"]["teacher"]
    assert report["size_bytes"] == {"teacher": folder_bytes(root / "teacher"),
                                    "student": folder_bytes(root / "run" / "student")}


def test_the_teacher_against_itself(job, tmp_path):
    result = evaluate(job["profile"], "--model", "teacher", "--output", tmp_path / "teacher.json", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "teacher.json").read_text())
    assert report["model"] == "teacher"
    assert report["agreement"]["top1"] == 1.0 and report["agreement"]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert report["retention"] == 1.0 and report["metrics"] == report["teacher_metrics"]
    assert report["params"]["student"] == report["params"]["teacher"]


# --- gates -------------------------------------------------------------------------------------------

def test_gates_met_exit_0_with_a_table_on_stderr(job, report, tmp_path):
    result = evaluate(job["profile"], "--output", tmp_path / "e.json",
                      "--min-retention", report["retention"] - 0.01, "--min-metric", report["metrics"]["accuracy"],
                      "--max-kl", report["agreement"]["kl"] * 2)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    for row in ("accuracy", "agreement top1", "agreement kl", "retention", "parameters", "size"):
        assert row in result.stderr


@pytest.mark.parametrize("flag, label", [("--min-retention", "retention"), ("--min-metric", "accuracy"),
                                         ("--max-kl", "kl")])
def test_gate_unmet_exits_1_naming_gate_and_number(job, report, tmp_path, flag, label):
    value = {"retention": report["retention"], "accuracy": report["metrics"]["accuracy"],
             "kl": report["agreement"]["kl"]}[label]
    gate = value / 2 if flag == "--max-kl" else value + 0.01
    result = evaluate(job["profile"], "--output", tmp_path / "e.json", "--json", flag, gate)
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["model"]  # the report is still printed, then the gate fails
    assert f"error: gate {flag} {gate} failed: {label} is {value:.4f}" in result.stderr
    assert "Traceback" not in result.output


def test_a_gate_without_its_number_fails(job, tmp_path):
    teacherless = ["--set", "teacher=null", "--model", str(job["root"] / "run" / "student")]
    result = evaluate(job["profile"], *teacherless, "--output", tmp_path / "e.json", "--min-retention", "0.5")
    assert result.exit_code == 1
    assert "gate --min-retention 0.5: this evaluation has no retention" in result.stderr


def test_bad_model_argument(job, tmp_path):
    result = evaluate(job["profile"], "--model", tmp_path / "missing")
    assert result.exit_code == 2 and "no such file or folder" in result.stderr and "Traceback" not in result.output
    result = evaluate(job["profile"], "--set", f"output={tmp_path / 'empty'}")
    assert result.exit_code == 2 and "no distilled student at" in result.stderr


# --- ONNX --------------------------------------------------------------------------------------------

def test_exported_onnx_scores_like_pytorch(job, report):
    profile = load_profile(job["profile"])
    export_profile(profile, latency=False)
    onnx = job["root"] / "run" / "export" / "model.onnx"
    out = job["root"] / "eval-onnx.json"
    result = evaluate(job["profile"], "--model", onnx, "--output", out)
    assert result.exit_code == 0, result.output
    from_onnx = json.loads(out.read_text())
    assert from_onnx["model"] == str(onnx) and from_onnx["size_bytes"]["student"] == onnx.stat().st_size
    assert from_onnx["params"]["student"] is None
    assert from_onnx["metrics"] == report["metrics"]
    assert from_onnx["agreement"]["top1"] == report["agreement"]["top1"]
    assert from_onnx["agreement"]["kl"] == pytest.approx(report["agreement"]["kl"], rel=1e-3, abs=1e-7)


@pytest.mark.parametrize("content", [b"", b"not a model\n", "truncated"], ids=["empty", "text", "truncated"])
def test_a_bad_onnx_file_is_bad_input_naming_it(job, report, tmp_path, content):
    exported = job["root"] / "run" / "export" / "model.onnx"
    if not exported.is_file():
        export_profile(load_profile(job["profile"]), latency=False)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(exported.read_bytes()[:2000] if content == "truncated" else content)
    result = evaluate(job["profile"], "--model", bad)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"--model {bad}: not a model onnxruntime can load" in result.stderr
    assert "bug in kdcli" not in result.stderr


def test_an_onnx_model_of_another_task_is_refused(job, report, write_profile, bert_encoder, tmp_path):
    spec = {"name": "emb", "task": "embedding", "teacher": {"path": str(bert_encoder)},
            "student": {"path": str(bert_encoder)}, "data": {"eval": str(job["root"] / "eval.tsv"), "max_length": 16},
            "distill": {"losses": [{"kind": "hidden_cosine"}]}, "output": str(tmp_path / "emb-run"),
            "export": {"batch_sizes": [1]}}
    exported = CliRunner().invoke(app, ["export", str(write_profile(spec)), "--student", str(bert_encoder),
                                        "--output", str(tmp_path / "emb"), "--no-latency"])
    assert exported.exit_code == 0, exported.output
    result = evaluate(job["profile"], "--model", tmp_path / "emb" / "model.onnx")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "exported for task embedding, and this profile's task is sequence-classification" in result.stderr


# --- embeddings --------------------------------------------------------------------------------------

def test_embedding_task_reports_cosine_and_neighbours(write_profile, bert_encoder, tmp_path):
    texts = sentences(24, seed=5)
    (tmp_path / "texts.tsv").write_text("sentence\n" + "".join(f"{t}\n" for t in texts))
    path = write_profile({"name": "emb", "task": "embedding", "teacher": {"path": str(bert_encoder)},
                          "student": {"path": "student-init", "init": {"layers": [0, 3]}},
                          "data": {"eval": "texts.tsv", "max_length": MAX_LENGTH},
                          "distill": {"losses": [{"kind": "hidden_cosine"}]}, "output": "run"})
    init_student(load_profile(path))
    result = evaluate(path, "--model", tmp_path / "student-init", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["agreement"]) == {"cosine_to_teacher", "nn_agreement"} and report["metrics"] == {}

    teacher, student = embeddings_of(bert_encoder, texts), embeddings_of(tmp_path / "student-init", texts)
    cosine = F.cosine_similarity(student, teacher, dim=-1).mean().item()
    assert report["agreement"]["cosine_to_teacher"] == pytest.approx(cosine, abs=1e-5)
    assert report["retention"] == report["agreement"]["cosine_to_teacher"]

    def nearest(x: torch.Tensor) -> torch.Tensor:
        sim = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T
        return sim.fill_diagonal_(-2).argmax(-1)
    assert report["agreement"]["nn_agreement"] == pytest.approx(
        (nearest(student) == nearest(teacher)).float().mean().item())

    itself = evaluate(path, "--model", "teacher", "--json", "--min-retention", "0.9999")
    assert itself.exit_code == 0, itself.output
    assert json.loads(itself.stdout)["agreement"] == {"cosine_to_teacher": pytest.approx(1.0), "nn_agreement": 1.0}
    gate = evaluate(path, "--model", tmp_path / "student-init", "--min-metric", "1.01")
    assert gate.exit_code == 1 and f"cosine_to_teacher is {cosine:.4f}" in gate.stderr
    kl = evaluate(path, "--model", tmp_path / "student-init", "--max-kl", "0.1")
    assert kl.exit_code == 2 and "--max-kl does not apply to task embedding" in kl.stderr
