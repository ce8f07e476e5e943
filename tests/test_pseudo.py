"""pseudo-label and learning from it: the JSONL schema, threshold and balance counts, the mixed-batch
ratio, soft and hard targets, clean inputs for the teacher, and bad input that exits 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

import kdcli.commands.preflight
from kdcli.cli import app
from kdcli.commands.checkpoints import load_student, load_teacher
from kdcli.commands.distill import distill
from kdcli.commands.init_student import init_student
from kdcli.commands.pseudo_label import pseudo_label, select, summarize
from kdcli.data.pseudo import pseudo_split, read_labels
from kdcli.data.splits import load_split
from kdcli.errors import DataError
from kdcli.profile import PseudoSpec, load_profile
from kdcli.train.step import cycle_indices

RECORD_KEYS = {"id", "source", "label", "label_name", "confidence", "topk"}


pytestmark = pytest.mark.usefixtures("one_thread")


def sentences(sst: Path) -> list[str]:
    return [line.split("\t")[0] for line in sst.read_text().splitlines()[1:]]


@pytest.fixture()
def unlabeled_txt(sst_tiny: Path) -> Path:
    """The SST sentences without their labels, one a line (blank lines are skipped by the reader)."""
    path = sst_tiny.parent / "unlabeled.txt"
    path.write_text("\n".join(sentences(sst_tiny)[:20]) + "\n\n")
    return path


def text_spec(teacher: Path, labelled: Path, unlabeled: Path | None, **sections: Any) -> dict:
    spec = {"name": "pl", "task": "sequence-classification", "teacher": {"path": str(teacher)},
            "student": {"path": "student-init", "init": {"layers": [0, 3]}},
            "data": {"train": str(labelled), "max_length": 16},
            "distill": {"losses": [{"kind": "ce"}]},
            "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "seed": 1, "log_every": 1},
            "output": "run"}
    if unlabeled is not None:
        spec["data"]["unlabeled"] = str(unlabeled)
    for name, values in sections.items():
        spec[name] = {**spec.get(name, {}), **values}
    return spec


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the JSONL schema -----------------------------------------------------------------------------


def test_text_records_carry_the_schema_and_the_teachers_softmax_at_temperature(
        write_profile, bert_cls, sst_tiny, unlabeled_txt):
    # Noise in the profile must not touch labelling: the probabilities below come from clean inputs.
    spec = text_spec(bert_cls, sst_tiny, unlabeled_txt, pseudo={"temperature": 2.0, "topk": 2},
                     train={"noise": {"token_mask": 0.5}})
    result = pseudo_label(load_profile(write_profile(spec)))
    out = Path(result.output)
    assert out == unlabeled_txt.parent / "run" / "pseudo" / "labels.jsonl"
    records = read_jsonl(out)
    texts = sentences(sst_tiny)[:20]
    assert result.total == result.kept == result.kept_samples == len(records) == 20

    tokenizer = AutoTokenizer.from_pretrained(bert_cls)
    model = AutoModelForSequenceClassification.from_pretrained(bert_cls).eval()
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer(t, return_tensors="pt", truncation=True, max_length=16)).logits
                            for t in texts])
    probs = F.softmax(logits / 2.0, dim=-1)
    for i, (record, text) in enumerate(zip(records, texts)):
        assert set(record) == RECORD_KEYS | {"text"}
        assert record["id"] == i and record["source"] == f"unlabeled.txt:{i + 1}" and record["text"] == text
        assert isinstance(record["label"], int) and record["label"] == int(probs[i].argmax())
        assert record["label_name"] == model.config.id2label[record["label"]]
        assert record["confidence"] == pytest.approx(float(probs[i].max()), abs=1e-6)
        assert [label for label, _ in record["topk"]] == probs[i].argsort(descending=True).tolist()
        for label, prob in record["topk"]:
            assert isinstance(label, int) and prob == pytest.approx(float(probs[i, label]), abs=1e-6)
        assert record["topk"][0] == [record["label"], record["confidence"]]
    counts = result.summary
    assert sum(c["labelled"] for c in counts.values()) == 20 and set(counts) == {"negative", "positive"}
    assert all(c["dropped"] == 0 and c["kept"] == c["in_output"] for c in counts.values())


def digits_npz(path: Path, count: int, offset: int = 0, labels: bool = False) -> Path:
    from sklearn.datasets import load_digits
    digits = load_digits()
    arrays = {"images": (digits.images[offset: offset + count] / 16.0).astype(np.float32)}
    if labels:
        arrays["labels"] = digits.target[offset: offset + count].astype(np.int64)
    np.savez(path, **arrays)
    return path


def test_image_records_carry_paths_and_sorted_topk(write_profile, timm_resnet, tmp_path):
    import timm
    from safetensors.torch import load_file
    unlabeled = digits_npz(tmp_path / "unlabeled.npz", 12)
    spec = {"name": "img", "task": "image-classification",
            "teacher": {"source": "timm", "path": str(timm_resnet), "arch": "resnet18", "num_classes": 10},
            "student": {"path": "student-init", "init": {"architecture": "resnet10t"}},
            "data": {"unlabeled": str(unlabeled), "image_size": 32},
            "train": {"batch_size": 5, "noise": {"randaugment": True}},  # 12 = 5 + 5 + 2: a ragged last batch
            "pseudo": {"topk": 3, "temperature": 0.5}, "output": "run"}
    result = pseudo_label(load_profile(write_profile(spec)))
    records = read_jsonl(Path(result.output))

    model = timm.create_model("resnet18", num_classes=10)
    model.load_state_dict(load_file(str(timm_resnet)))
    config = timm.data.resolve_data_config({}, model=model.eval())
    pixels = torch.from_numpy(np.load(unlabeled)["images"]).unsqueeze(1)
    pixels = F.interpolate(pixels, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1).expand(-1, 3, -1, -1)
    pixels = (pixels - torch.tensor(config["mean"]).view(1, 3, 1, 1)) / torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = F.softmax(model(pixels) / 0.5, dim=-1)
    assert len(records) == 12
    for i, record in enumerate(records):
        assert set(record) == RECORD_KEYS | {"path"}
        assert record["id"] == i and record["path"] == record["source"] == f"unlabeled.npz:{i}"
        assert record["label_name"] == str(record["label"])
        values = [prob for _, prob in record["topk"]]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        for label, prob in record["topk"]:
            assert prob == pytest.approx(float(probs[i, label]), abs=1e-5)
        assert record["label"] == int(probs[i].argmax())


# --- threshold and class balance --------------------------------------------------------------------


def constructed() -> list[dict]:
    """Class 0: five confident records and one not; class 1: two and two; class 2: one, not confident."""
    confidences = [(0, 0.91), (0, 0.95), (1, 0.70), (0, 0.30), (0, 0.93), (1, 0.40), (0, 0.92), (2, 0.20),
                   (1, 0.80), (0, 0.94), (1, 0.45)]
    return [{"id": i, "label": label, "confidence": c, "topk": [[label, c]]}
            for i, (label, c) in enumerate(confidences)]


def ids_by_class(records: list[dict]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for r in records:
        out.setdefault(r["label"], []).append(r["id"])
    return out


def test_threshold_keeps_the_confident_in_input_order():
    kept = select(constructed(), PseudoSpec(threshold=0.5))
    assert [r["id"] for r in kept] == [0, 1, 2, 4, 6, 8, 9]
    assert ids_by_class(kept) == {0: [0, 1, 4, 6, 9], 1: [2, 8]}


def test_balance_to_per_class_keeps_the_most_confident_and_repeats_the_rare():
    kept = select(constructed(), PseudoSpec(threshold=0.5, balance=True, per_class=3))
    # class 0 keeps its three most confident (0.95, 0.94, 0.93); class 1 (two left) repeats its best.
    assert ids_by_class(kept) == {0: [1, 9, 4], 1: [8, 2, 8]}
    summary = summarize(constructed(), kept, ["zero", "one", "two"])
    assert summary == {"zero": {"labelled": 6, "kept": 3, "dropped": 3, "in_output": 3},
                       "one": {"labelled": 4, "kept": 2, "dropped": 2, "in_output": 3},
                       "two": {"labelled": 1, "kept": 0, "dropped": 1, "in_output": 0}}


def test_balance_without_per_class_fills_every_class_to_the_largest():
    kept = select(constructed(), PseudoSpec(threshold=0.5, balance=True))
    assert ids_by_class(kept) == {0: [1, 9, 4, 6, 0], 1: [8, 2, 8, 2, 8]}


def test_a_threshold_that_keeps_nothing_names_it_and_the_best_confidence():
    with pytest.raises(DataError, match=r"pseudo.threshold 0.99 keeps none of 11 samples "
                                        r"\(the highest confidence is 0.9500\)") as info:
        select(constructed(), PseudoSpec(threshold=0.99))
    assert "lower pseudo.threshold" in info.value.hint


# --- soft and hard targets, the mixed-batch ratio ---------------------------------------------------


def test_targets_are_renormalized_topk_or_one_hot(write_profile, bert_cls, sst_tiny, tmp_path):
    labels = tmp_path / "labels.jsonl"
    rows = [{"id": 0, "text": "a good film", "label": 1, "label_name": "positive", "confidence": 0.6,
             "topk": [[1, 0.6], [0, 0.2]]},
            {"id": 1, "text": "bad plot", "label": 0, "label_name": "negative", "confidence": 0.9,
             "topk": [[0, 0.9]]}]
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_profile(text_spec(bert_cls, sst_tiny, None, data={"pseudo": str(labels)}))
    teacher = load_teacher(load_profile(path))
    split, soft = pseudo_split(load_profile(path), teacher)
    assert split.texts == ["a good film", "bad plot"] and split.size == 2
    torch.testing.assert_close(soft, torch.tensor([[0.25, 0.75], [1.0, 0.0]]))
    _, hard = pseudo_split(load_profile(path, ["pseudo.soft=false"]), teacher)
    torch.testing.assert_close(hard, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_cycle_walks_every_pseudo_sample_once_per_pass():
    picks = [cycle_indices(10, 4, micro, seed=3) for micro in range(5)]  # 20 picks: two passes over 10 samples
    flat = [i for p in picks for i in p]
    assert all(len(p) == 4 for p in picks)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # reshuffled each pass
    assert picks == [cycle_indices(10, 4, micro, seed=3) for micro in range(5)]  # a pure function: resume-safe


def record_inputs(monkeypatch: pytest.MonkeyPatch, submodule: str | None = None) -> dict[str, list[torch.Tensor]]:
    """Wrap distill's model loading: a forward pre-hook logs every input the teacher and the student see.

    transformers models are called with input_ids=...; timm's adapter calls forward_features, so images
    are caught on the stem (`submodule`).
    """
    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}

    def hook(role: str):
        def pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            seen[role].append((kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).detach().clone())
        return pre

    def wrap(loader, role: str):
        def load(*args, **kwargs):
            adapter = loader(*args, **kwargs)
            module = adapter.module.get_submodule(submodule) if submodule else adapter.module
            module.register_forward_pre_hook(hook(role), with_kwargs=True)
            return adapter
        return load
    monkeypatch.setattr(kdcli.commands.preflight, "load_teacher", wrap(load_teacher, "teacher"))
    monkeypatch.setattr(kdcli.commands.preflight, "load_student", wrap(load_student, "student"))
    return seen


def clean_batches(profile, key: str, steps: int) -> list[torch.Tensor]:
    """The training batches distill collates, before any noise: the same order, from the public Split."""
    train = load_split(profile, "train", load_teacher(profile))
    cfg = profile.train
    per_epoch = len(train.order(cfg.batch_size, shuffle=True, seed=cfg.seed))
    out = []
    for step in range(steps):
        epoch, position = divmod(step, per_epoch)
        out.append(train.collate(train.order(cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch)[position])[key])
    return out


def test_text_batches_mix_labelled_and_pseudo_at_the_ratio_and_noise_only_the_student(
        write_profile, bert_cls, sst_tiny, unlabeled_txt, monkeypatch):
    path = write_profile(text_spec(bert_cls, sst_tiny, unlabeled_txt, pseudo={"ratio": 1.5, "topk": 2}))
    labels = Path(pseudo_label(load_profile(path)).output)
    spec = text_spec(bert_cls, sst_tiny, unlabeled_txt, pseudo={"ratio": 1.5},
                     data={"pseudo": str(labels)}, train={"max_steps": 4, "noise": {"token_mask": 0.5}},
                     distill={"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton"}]})
    path = write_profile(spec)
    init_student(load_profile(path))
    seen = record_inputs(monkeypatch)
    distill(load_profile(path))

    profile = load_profile(path)
    clean = clean_batches(profile, "input_ids", 4)
    mask_id = AutoTokenizer.from_pretrained(bert_cls).mask_token_id
    # The teacher runs once per step, on exactly the clean batch (no eval split: no other teacher calls).
    assert len(seen["teacher"]) == 4
    for got, want in zip(seen["teacher"], clean):
        assert torch.equal(got, want) and not (got == mask_id).any()
    # The student runs twice per step: the labelled batch, then round(1.5 x 8) = 12 pseudo-labelled samples.
    assert [len(x) for x in seen["student"]] == [8, 12] * 4
    labelled, pseudo = seen["student"][0::2], seen["student"][1::2]
    masked = 0
    for got, want in zip(labelled, clean):
        assert got.shape == want.shape
        changed = got != want
        assert (got[changed] == mask_id).all()  # noise only ever writes [MASK]
        assert torch.equal(got[:, 0], want[:, 0])  # never on [CLS]
        masked += int(changed.sum())
    assert masked > 0.2 * sum(int((w != 0).sum()) for w in clean)
    assert all((p == mask_id).any() for p in pseudo)
    # The pseudo part appears in the logged loss as its own term: total = ce + hinton + ratio x soft CE.
    steps = [json.loads(line) for line in (path.parent / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "loss" in s]
    assert len(steps) == 4
    for s in steps:
        assert s["loss/pseudo"] > 0
        assert s["loss"] == pytest.approx(s["loss/ce"] + s["loss/hinton"] + s["loss/pseudo"])


def test_images_the_teacher_sees_clean_pixels_and_the_student_randaugmented_ones(
        write_profile, timm_resnet, tmp_path, monkeypatch):
    unlabeled = digits_npz(tmp_path / "unlabeled.npz", 24, offset=100)
    spec = {"name": "img", "task": "image-classification",
            "teacher": {"source": "timm", "path": str(timm_resnet), "arch": "resnet18", "num_classes": 10},
            "student": {"path": "student-init", "init": {"architecture": "resnet10t",
                                                         "model_args": {"drop_path_rate": 0.1}}},
            "data": {"train": "sklearn:digits", "unlabeled": str(unlabeled), "image_size": 32, "limit": 32},
            "distill": {"losses": [{"kind": "ce"}, {"kind": "hinton"}]},
            "train": {"max_steps": 2, "batch_size": 16, "lr": 1e-3, "log_every": 1,
                      "noise": {"randaugment": True}},
            "pseudo": {"ratio": 0.5}, "output": "img"}
    path = write_profile(spec)
    labels = Path(pseudo_label(load_profile(path)).output)
    path = write_profile({**spec, "data": {**spec["data"], "pseudo": str(labels)}})
    init_student(load_profile(path))
    seen = record_inputs(monkeypatch, submodule="conv1")
    distill(load_profile(path))

    clean = clean_batches(load_profile(path), "pixel_values", 2)
    assert len(seen["teacher"]) == 2
    for got, want in zip(seen["teacher"], clean):
        assert torch.equal(got, want)
    assert [len(x) for x in seen["student"]] == [16, 8, 16, 8]
    for got, want in zip(seen["student"][0::2], clean):
        assert got.shape == want.shape and not torch.allclose(got, want, atol=1e-3)
    student = json.loads((path.parent / "img" / "student" / "config.json").read_text())
    assert student["model_args"]["drop_path_rate"] == 0.1  # stochastic depth travels with the student


# --- the command line ---------------------------------------------------------------------------------


runner = CliRunner()


def test_cli_input_and_output_options(write_profile, bert_cls, sst_tiny, unlabeled_txt, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("a good film\nbad plot\nthe acting was great\n")
    out = tmp_path / "elsewhere" / "labels.jsonl"
    path = write_profile(text_spec(bert_cls, sst_tiny, unlabeled_txt))
    result = runner.invoke(app, ["pseudo-label", str(path), "--input", str(other), "--output", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["output"] == str(out) and report["total"] == report["kept"] == 3
    assert [r["text"] for r in read_labels(out)] == ["a good film", "bad plot", "the acting was great"]
    assert not (tmp_path / "run" / "pseudo").exists()
    human = runner.invoke(app, ["pseudo-label", str(path)])  # the default: data.unlabeled -> RUN/pseudo/
    assert human.exit_code == 0 and "20 records of 20 samples" in human.stderr
    assert len(read_labels(tmp_path / "run" / "pseudo" / "labels.jsonl")) == 20


@pytest.mark.parametrize("case, message", [
    ("no-unlabeled", "data.unlabeled is not set in the profile"),
    ("empty", "empty.txt: the file is empty"),
    ("threshold", "pseudo.threshold 1.0 keeps none of 20 samples (the highest confidence is 0."),
    ("no-teacher", "pseudo-label needs a teacher"),
])
def test_cli_bad_input_exits_2_with_one_clear_message(write_profile, bert_cls, sst_tiny, unlabeled_txt, tmp_path,
                                                      case, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    spec = text_spec(bert_cls, sst_tiny, {"no-unlabeled": None, "empty": empty}.get(case, unlabeled_txt))
    if case == "no-teacher":
        del spec["teacher"]
    overrides = ["--set", "pseudo.threshold=1.0"] if case == "threshold" else []
    result = runner.invoke(app, ["pseudo-label", str(write_profile(spec)), *overrides])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()) and "Traceback" not in result.output
    assert result.stdout == ""
    assert not (tmp_path / "run" / "pseudo" / "labels.jsonl").exists()
