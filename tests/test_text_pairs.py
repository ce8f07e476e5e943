"""Text pairs (NLI, paraphrase, cross-encoders): data.text_pair_column tokenized as the teacher's tokenizer pairs
texts, token types kept where the teacher reads them, and the export taking them as an input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification, BertTokenizerFast
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.data.splits import load_split
from kdcli.models import load_model
from kdcli.profile import load_profile
from tests.conftest import WORDS


@pytest.fixture()
def pairs_tsv(tmp_path: Path) -> Path:
    gen = torch.Generator().manual_seed(3)

    def text(n: int) -> str:
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=gen))
    rows = ["premise\thypothesis\tlabel"] + [f"{text(3 + i % 5)}\t{text(2 + i % 4)}\t{['negative', 'positive'][i % 2]}"
                                             for i in range(24)]
    path = tmp_path / "pairs.tsv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture()
def pair_profile(write_profile, bert_cls: Path, pairs_tsv: Path) -> Path:
    return write_profile({
        "name": "nli", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
        "student": {"path": "student-init", "init": {"layers": [0, 3]}},
        "data": {"train": str(pairs_tsv), "eval": str(pairs_tsv), "text_column": "premise",
                 "text_pair_column": "hypothesis", "max_length": 12},
        "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0}]},
        "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "device": "cpu"},
        "export": {"batch_sizes": [1]}, "output": "run"})


def _run(args: list[str]):
    return CliRunner().invoke(app, args)


def test_pairs_are_tokenized_as_the_tokenizer_pairs_them(pair_profile: Path, bert_cls: Path, pairs_tsv: Path):
    profile = load_profile(pair_profile)
    split = load_split(profile, "train", load_model("transformers", bert_cls, profile.task))
    rows = [line.split("\t") for line in pairs_tsv.read_text().splitlines()[1:]]
    tokenizer = BertTokenizerFast.from_pretrained(bert_cls)
    own = tokenizer([r[0] for r in rows], [r[1] for r in rows], truncation=True, max_length=12)
    assert [f["input_ids"] for f in split.features] == own["input_ids"]
    assert [f["token_type_ids"] for f in split.features] == own["token_type_ids"]
    assert any(1 in types for types in own["token_type_ids"])  # the second text is segment 1
    assert split.collate([0, 1])["token_type_ids"].shape == split.collate([0, 1])["input_ids"].shape


def test_a_pair_job_runs_and_exports_with_token_types(pair_profile: Path, bert_cls: Path, one_thread):
    for command in ("init-student", "distill"):
        result = _run([command, str(pair_profile), "--quiet"])
        assert result.exit_code == 0, result.output
    result = _run(["evaluate", str(pair_profile), "--json"])
    assert result.exit_code == 0, result.output
    accuracy = json.loads(result.stdout)["metrics"]["accuracy"]
    result = _run(["export", str(pair_profile), "--json", "--no-latency"])
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)
    assert exported["parity"]["ok"]
    import onnxruntime as ort
    session = ort.InferenceSession(exported["onnx"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    # the served folder's tokenizer pairs texts, and the ONNX model reads them as the student does
    tokenizer = BertTokenizerFast.from_pretrained("run/export")
    encoded = tokenizer(["the film was good"], ["it is great"], return_tensors="np")
    (logits,) = session.run(None, {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    student = BertForSequenceClassification.from_pretrained("run/student").eval()
    with torch.no_grad():
        expected = student(**{k: torch.from_numpy(v) for k, v in encoded.items()}).logits
    assert torch.allclose(torch.from_numpy(logits), expected, atol=1e-4)
    result = _run(["evaluate", str(pair_profile), "--json", "--model", exported["onnx"]])  # judged as it ships
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("init", [{"layers": [0, 3], "drop": ["token_type_embeddings"]},
                                  {"layers": [0, 3], "architecture": "distilbert"}])
def test_folding_token_types_away_is_refused_for_pairs(pair_profile: Path, init: dict):
    result = _run(["init-student", str(pair_profile), "--set", f"student.init={json.dumps(init)}"])
    assert result.exit_code == 2, result.output
    assert "token types" in result.output and "text_pair_column" in result.output
    assert "Traceback" not in result.output


def test_a_missing_pair_column_is_bad_input(pair_profile: Path):
    assert _run(["init-student", str(pair_profile), "--quiet"]).exit_code == 0
    result = _run(["distill", str(pair_profile), "--set", "data.text_pair_column=hypothesys"])
    assert result.exit_code == 2, result.output
    assert "no column 'hypothesys'" in result.output and "did you mean 'hypothesis'" in result.output


def test_pseudo_labels_of_pairs_keep_both_texts_and_train_on_them(pair_profile: Path, pairs_tsv: Path):
    assert _run(["init-student", str(pair_profile), "--quiet"]).exit_code == 0
    result = _run(["pseudo-label", str(pair_profile), "--json", "--set", f"data.unlabeled={pairs_tsv}"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in Path(json.loads(result.stdout)["output"]).read_text().splitlines()]
    rows = [line.split("\t") for line in pairs_tsv.read_text().splitlines()[1:]]
    assert [(r["text"], r["text_pair"]) for r in records] == [(a, b) for a, b, _ in rows]
    profile = load_profile(pair_profile, [f"data.pseudo={json.loads(result.stdout)['output']}"])
    from kdcli.data.pseudo import pseudo_split
    split, _ = pseudo_split(profile, load_model("transformers", profile.teacher.path, profile.task))
    tokenizer = BertTokenizerFast.from_pretrained(profile.teacher.path)
    assert [f["input_ids"] for f in split.features] == \
        tokenizer([a for a, _, _ in rows], [b for _, b, _ in rows], truncation=True, max_length=12)["input_ids"]


def test_a_pair_column_on_a_task_of_single_texts_is_refused(pair_profile: Path):
    result = _run(["check", str(pair_profile), "--set", "task=masked-lm"])
    assert result.exit_code == 2 and "reads one text per example" in result.output, result.output


def test_the_ready_profile_runs_the_whole_job_with_the_files_substituted(bert_cls: Path, tmp_path: Path, one_thread):
    ready = str(Path(__file__).parents[1] / "profiles" / "snli-pairs.yaml")
    gen = torch.Generator().manual_seed(5)
    rows = [{"premise": " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (5,), generator=gen)),
             "hypothesis": " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (3,), generator=gen)),
             "label": ["negative", "positive"][k % 2]} for k in range(16)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = [f"teacher.path={bert_cls}", "student.path=student-init", f"data.train={data}", f"data.eval={data}",
            "output=run", "train.max_steps=2", "data.max_length=32"]
    args = [x for s in sets for x in ("--set", s)]
    for command in ("init-student", "distill"):
        result = _run([command, ready, "--quiet", *args])
        assert result.exit_code == 0, result.output
    result = _run(["export", ready, "--json", "--no-latency", *args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parity"]["ok"]
