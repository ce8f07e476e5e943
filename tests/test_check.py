"""`kdcli check` refuses what `kdcli distill` would: both run one preflight, so each case below is exit 2 from
check with the same message distill gives, before any training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kdcli.cli import app


def kd(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def spec(teacher: Path, train: Path, student: Path) -> dict:
    return {"name": "preflight", "task": "sequence-classification", "teacher": {"path": str(teacher)},
            "student": {"path": str(student)}, "data": {"train": str(train), "max_length": 16},
            "distill": {"losses": [{"kind": "ce"}, {"kind": "hinton"}, {"kind": "hidden_mse", "layers": {1: 2}}]},
            "train": {"max_steps": 1, "batch_size": 8, "threads": 1}, "output": "run"}


def write(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def both_refuse(profile: Path, *needles: str) -> None:
    """check and distill: exit 2, the same one error message, nothing trained."""
    messages = []
    for command in ("check", "distill"):
        result = kd(command, profile)
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output and result.stdout == ""
        for needle in needles:
            assert needle in result.stderr.replace("\n", " "), (command, result.stderr)
        messages.append(result.stderr)
    assert messages[0] == messages[1]
    assert not (profile.parent / "run" / "metrics.jsonl").exists()


def test_a_good_profile_passes_and_check_reads_the_data(tmp_path, bert_cls, sst_tiny):
    profile = write(tmp_path / "p.yaml", {**spec(bert_cls, sst_tiny, bert_cls)})
    result = kd("check", profile, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == {"train": 48}
    assert report["classes"] == {"names": ["negative", "positive"], "source": "teacher"}
    human = kd("check", profile)
    assert "classes (teacher): negative, positive" in human.stderr and "data: train 48 rows" in human.stderr


def test_check_honours_data_limit(tmp_path, bert_cls, sst_tiny):
    content = spec(bert_cls, sst_tiny, bert_cls)
    content["data"].update(limit=5, eval=str(sst_tiny))
    result = kd("check", write(tmp_path / "p.yaml", content), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == {"train": 5, "eval": 5}


def test_a_missing_train_file(tmp_path, bert_cls):
    missing = tmp_path / "nope.tsv"
    both_refuse(write(tmp_path / "p.yaml", spec(bert_cls, missing, bert_cls)), f"{missing}: no such file")


def test_a_missing_eval_or_unlabeled_file(tmp_path, bert_cls, sst_tiny):
    content = spec(bert_cls, sst_tiny, bert_cls)
    content["data"]["eval"] = str(tmp_path / "eval.tsv")
    both_refuse(write(tmp_path / "p.yaml", content), f"{tmp_path / 'eval.tsv'}: no such file")
    content["data"].pop("eval")
    content["data"]["unlabeled"] = str(tmp_path / "u.txt")  # pseudo-label's input: check reads it as well
    result = kd("check", write(tmp_path / "p.yaml", content))
    assert result.exit_code == 2 and f"{tmp_path / 'u.txt'}: no such file" in result.stderr


@pytest.mark.parametrize("transfer, needle", [("missing.txt", "no such file"), ("empty.csv", "empty"),
                                               ("latin1.txt", "not valid UTF-8")])
def test_a_bad_transfer_file_is_refused_by_check_as_by_distill(tmp_path, bert_cls, sst_tiny, transfer, needle):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "latin1.txt").write_bytes("un film tr\xe8s bon\n".encode("latin-1"))
    content = spec(bert_cls, sst_tiny, bert_cls)
    content["data"]["transfer"] = str(tmp_path / transfer)
    both_refuse(write(tmp_path / "p.yaml", content), str(tmp_path / transfer), needle)


def test_a_header_typo(tmp_path, bert_cls, sst_tiny):
    typo = tmp_path / "typo.tsv"
    typo.write_text(sst_tiny.read_text().replace("sentence\t", "sentense\t", 1))
    both_refuse(write(tmp_path / "p.yaml", spec(bert_cls, typo, bert_cls)),
                f"{typo}: no column 'sentence'", "did you mean 'sentense'?")


def test_labels_the_model_does_not_know(tmp_path, bert_cls, sst_tiny):
    odd = tmp_path / "odd.tsv"
    odd.write_text(sst_tiny.read_text().replace("\t1\n", "\tneutral\n", 1))
    both_refuse(write(tmp_path / "p.yaml", spec(bert_cls, odd, bert_cls)),
                f"{odd}: unknown label 'neutral'", "known labels: 'negative'=0, 'positive'=1")


def test_a_checkpoint_without_tokenizer_files(tmp_path, bert_cls, sst_tiny):
    bare = tmp_path / "bare"
    shutil.copytree(bert_cls, bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    both_refuse(write(tmp_path / "p.yaml", spec(bare, sst_tiny, bert_cls)), f"{bare}: no tokenizer")


def test_teacher_losses_without_a_teacher(tmp_path, bert_cls, sst_tiny):
    content = spec(bert_cls, sst_tiny, bert_cls)
    del content["teacher"]
    both_refuse(write(tmp_path / "p.yaml", content),
                "losses hidden_mse, hinton learn from a teacher, and the profile has no `teacher:`")


def test_a_missing_teacher(tmp_path, bert_cls, sst_tiny):
    both_refuse(write(tmp_path / "p.yaml", spec(tmp_path / "gone", sst_tiny, bert_cls)),
                f"checkpoint not found: {tmp_path / 'gone'}")


@pytest.mark.parametrize("layers, needle", [({3: 2}, "3: 2 is out of range"), ({1: 9}, "1: 9 is out of range")])
def test_a_layer_map_that_does_not_fit(tmp_path, bert_cls, sst_tiny, layers, needle):
    student = tmp_path / "student"
    made = kd("init-student", write(tmp_path / "init.yaml", {**spec(bert_cls, sst_tiny, student),
                                                             "student": {"path": str(student),
                                                                         "init": {"layers": [0, 3]}}}))
    assert made.exit_code == 0, made.output
    content = spec(bert_cls, sst_tiny, student)
    content["distill"]["losses"][2]["layers"] = layers
    both_refuse(write(tmp_path / "p.yaml", content), needle)
