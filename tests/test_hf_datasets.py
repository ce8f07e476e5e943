"""Text kept as Hugging Face datasets (parquet, arrow, save_to_disk): read by column name, with the same
messages a csv gets, and a parquet train file through `kdcli distill`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.data import read_text

datasets = pytest.importorskip("datasets")
LABEL2ID = {"negative": 0, "positive": 1}


def rows_of(tsv: Path) -> dict[str, list]:
    lines = tsv.read_text().splitlines()[1:]
    return {"sentence": [line.split("\t")[0] for line in lines], "label": [int(line.split("\t")[1]) for line in lines],
            "extra": list(range(len(lines)))}


@pytest.fixture()
def stored(tmp_path, sst_tiny) -> dict[str, Path]:
    """The same rows as a tsv, a parquet file, an arrow file and a save_to_disk folder."""
    dataset = datasets.Dataset.from_dict(rows_of(sst_tiny))
    dataset.to_parquet(str(tmp_path / "train.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    (arrow,) = (tmp_path / "saved").glob("*.arrow")
    return {"tsv": sst_tiny, "parquet": tmp_path / "train.parquet", "arrow": arrow, "folder": tmp_path / "saved"}


@pytest.mark.parametrize("kind", ["parquet", "arrow", "folder"])
def test_a_dataset_reads_as_the_same_examples_as_the_tsv(stored, kind):
    expected = read_text(stored["tsv"], "sentence", "label", LABEL2ID)
    got = read_text(stored[kind], "sentence", "label", LABEL2ID)
    assert [(e.text, e.label) for e in got] == [(e.text, e.label) for e in expected]
    assert got[2].source.endswith(":3")


def test_dataset_errors_read_as_a_csvs_do(stored, tmp_path):
    from kdcli.errors import DataError
    with pytest.raises(DataError) as missing:
        read_text(stored["parquet"], "sentense", "label", LABEL2ID)
    assert missing.value.message == f"{stored['parquet']}: no column 'sentense'"
    assert missing.value.hint.startswith("did you mean 'sentence'?")
    bad = datasets.Dataset.from_dict({"sentence": ["good", "  ", "bad"], "label": [1, 0, 7]})
    bad.to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"bad.parquet, line 2: empty or non-string text in column 'sentence'"):
        read_text(tmp_path / "bad.parquet", "sentence", "label", LABEL2ID)
    datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 7]}).to_parquet(str(tmp_path / "l.parquet"))
    with pytest.raises(DataError, match=r"l.parquet: unknown label '7' \(line 2\) in column 'label'"):
        read_text(tmp_path / "l.parquet", "sentence", "label", LABEL2ID)
    splits = datasets.DatasetDict({"train": bad, "test": bad})
    splits.save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match="a DatasetDict folder with splits test, train") as folder:
        read_text(tmp_path / "dict", "sentence", "label", LABEL2ID)
    assert folder.value.hint == f"point at one split, e.g. {tmp_path / 'dict' / 'test'}"
    (tmp_path / "torn.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="torn.parquet: cannot read the .parquet file"):
        read_text(tmp_path / "torn.parquet", "sentence", "label", LABEL2ID)


def test_distill_trains_from_a_parquet_file(stored, bert_cls, write_profile):
    profile = write_profile({
        "name": "parquet", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
        "student": {"path": "student-init", "init": {"layers": [0, 3]}},
        "data": {"train": str(stored["parquet"]), "eval": str(stored["folder"]), "max_length": 16},
        "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton"}]},
        "train": {"max_steps": 2, "batch_size": 8, "threads": 1}, "output": "run"})
    runner = CliRunner()
    assert runner.invoke(app, ["init-student", str(profile), "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["distill", str(profile), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["eval"]["metrics"]["accuracy"] >= 0
    typo = runner.invoke(app, ["distill", str(profile), "--set", "data.text_column=sentense", "--set",
                               f"output={profile.parent / 'x'}"])
    assert typo.exit_code == 2 and f"error: {stored['parquet']}: no column 'sentense'" in typo.stderr
    assert yaml.safe_load((profile.parent / "run" / "profile.lock.yaml").read_text())["profile"]["data"]["train"]
