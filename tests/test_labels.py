"""One label mapping per job, through the CLI: named classes from string labels, image folders mapped by
name (a missing class never shifts the others), and the names carried by every artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from conftest import WORDS
from PIL import Image
from typer.testing import CliRunner

from kdcli.cli import app

TOPICS = ["sports", "politics", "tech", "science"]  # sorted: politics, science, sports, tech


def kd(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def topic_csv(path: Path, rows: int = 32, topics: list[str] = TOPICS) -> Path:
    generator = torch.Generator().manual_seed(1)
    lines = ["sentence,label"]
    for i in range(rows):
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (6,), generator=generator)]
        lines.append(f"{' '.join(words)},{topics[i % len(topics)]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def from_labels_spec(encoder: Path, train: Path, **data: object) -> dict:
    """A first teacher trained from labels: no teacher, an encoder without a head, losses [ce]."""
    return {"name": "topics", "task": "sequence-classification", "student": {"path": str(encoder)},
            "data": {"train": str(train), "eval": str(train), "max_length": 16, **data},
            "distill": {"losses": [{"kind": "ce"}]},
            "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "threads": 1}, "output": "run"}


# --- text: a teacher trained from string labels ---------------------------------------------------------


def test_four_class_string_labels_train_a_teacher_with_no_extra_field(tmp_path, bert_encoder, one_thread):
    train = topic_csv(tmp_path / "topics.csv")
    profile = write(tmp_path / "teacher.yaml", from_labels_spec(bert_encoder, train))

    checked = kd("check", profile, "--json")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["classes"] == {"names": sorted(TOPICS), "source": "data"}

    result = kd("distill", profile)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "student" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(sorted(TOPICS))}
    assert config["label2id"] == {name: i for i, name in enumerate(sorted(TOPICS))}
    lock = yaml.safe_load((tmp_path / "run" / "profile.lock.yaml").read_text())
    assert lock["classes"] == {"names": sorted(TOPICS), "source": "data"}  # recorded once

    evaluated = kd("evaluate", profile, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert 0.0 <= json.loads(evaluated.stdout)["metrics"]["accuracy"] <= 1.0

    # The trained model is the next job's teacher: its names label the pseudo-labels.
    (tmp_path / "unlabeled.txt").write_text("the film is good\na bad plot\n")
    student_spec = {**from_labels_spec(tmp_path / "run" / "student", train, unlabeled="unlabeled.txt"),
                    "teacher": {"path": str(tmp_path / "run" / "student")}, "output": "run2"}
    labelled = kd("pseudo-label", write(tmp_path / "student.yaml", student_spec), "--json")
    assert labelled.exit_code == 0, labelled.output
    records = [json.loads(line) for line in (tmp_path / "run2" / "pseudo" / "labels.jsonl").read_text().splitlines()]
    assert all(r["label_name"] == sorted(TOPICS)[r["label"]] for r in records)
    assert set(json.loads(labelled.stdout)["summary"]) == set(TOPICS)


def test_profile_classes_fix_the_order_and_refuse_strangers(tmp_path, bert_encoder, one_thread):
    train = topic_csv(tmp_path / "topics.csv")
    order = ["tech", "sports", "science", "politics", "arts"]  # a class the data lacks keeps its id
    profile = write(tmp_path / "p.yaml", from_labels_spec(bert_encoder, train, classes=order))
    result = kd("distill", profile)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "student" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(order)}

    short = write(tmp_path / "short.yaml", {**from_labels_spec(bert_encoder, train, classes=["tech", "sports"]),
                                            "output": "run-short"})
    refused = kd("check", short)
    assert refused.exit_code == 2, refused.output
    assert "unknown label 'politics'" in refused.stderr and "'tech'=0, 'sports'=1" in refused.stderr


def test_a_teacher_without_class_names_keeps_its_outputs_and_says_how_to_name_them(
        tmp_path, bert_cls, sst_tiny, one_thread):
    teacher = tmp_path / "teacher"
    shutil.copytree(bert_cls, teacher)
    config = json.loads((teacher / "config.json").read_text())
    config.update(id2label={"0": "LABEL_0", "1": "LABEL_1"}, label2id={"LABEL_0": 0, "LABEL_1": 1})
    (teacher / "config.json").write_text(json.dumps(config))
    train = tmp_path / "named.tsv"
    train.write_text(sst_tiny.read_text().replace("\t0\n", "\tnegative\n").replace("\t1\n", "\tpositive\n"))
    spec = {"name": "unnamed", "task": "sequence-classification", "teacher": {"path": str(teacher)},
            "student": {"path": str(teacher)}, "data": {"train": str(train), "max_length": 16},
            "distill": {"losses": [{"kind": "hinton"}]}, "output": "run"}
    refused = kd("check", write(tmp_path / "p.yaml", spec))
    assert refused.exit_code == 2
    assert "unknown label 'negative'" in refused.stderr and "data.classes" in refused.stderr

    spec["data"]["classes"] = ["negative", "positive"]
    named = kd("check", write(tmp_path / "p.yaml", spec), "--json")
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout)["classes"] == {"names": ["negative", "positive"], "source": "profile"}


def test_profile_classes_must_agree_with_a_named_teacher(tmp_path, bert_cls, sst_tiny):
    spec = {"name": "clash", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": str(bert_cls)}, "data": {"train": str(sst_tiny), "classes": ["pos", "neg"]},
            "distill": {"losses": [{"kind": "hinton"}]}, "output": "run"}
    result = kd("check", write(tmp_path / "p.yaml", spec))
    assert result.exit_code == 2
    assert "data.classes lists ['pos', 'neg'], but the teacher names its classes ['negative', 'positive']" \
        in result.stderr.replace("\n", " ")
    twice = kd("check", write(tmp_path / "p.yaml", {**spec, "data": {"classes": ["a", "a"]}}))
    assert twice.exit_code == 2 and "class 'a' is listed twice" in twice.stderr


# --- images: classes by name, whatever folders a split holds --------------------------------------------


CLASSES = ["ant", "bee", "cat"]


@pytest.fixture(scope="module")
def image_teacher(tmp_path_factory) -> tuple[Path, Path]:
    """A timm teacher that names its classes, and a folder of images sorted into the class it predicts for
    each: on that folder the teacher is right every time, whatever subset of classes is present."""
    import timm

    from kdcli.data.splits import load_split
    from kdcli.models.timm import TimmAdapter
    from kdcli.profile import load_profile

    root = tmp_path_factory.mktemp("labels-images")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    teacher = root / "teacher"
    TimmAdapter(model, "resnet10t", {"num_classes": 3}, class_names=CLASSES).save(teacher)
    pool = root / "pool"
    pool.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        tint = rng.integers(0, 255, 3)
        pixels = np.clip(rng.normal(tint, 60, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(pool / f"{i:02d}.png")
    probe = write(root / "probe.yaml", {"name": "probe", "task": "image-classification",
                                        "teacher": {"source": "timm", "path": str(teacher)},
                                        "student": {"path": str(teacher)},
                                        "data": {"unlabeled": str(pool), "image_size": 16},
                                        "output": "run"})
    from kdcli.commands.checkpoints import load_teacher
    adapter = load_teacher(load_profile(probe))
    split = load_split(load_profile(probe), "unlabeled", adapter, labels=False)
    batch = split.collate(list(range(split.size)))
    with torch.inference_mode():  # a head over the centred features: the classes split the pool between them
        features = adapter.forward(batch, frozenset({"embedding"})).embedding
        head = adapter.module.fc
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(0)))
        head.bias.copy_(-head.weight @ features.mean(0))
        predicted = adapter.forward(batch).logits.argmax(-1).tolist()
    adapter.save(teacher)
    counts = {c: predicted.count(i) for i, c in enumerate(CLASSES)}
    assert min(counts.values()) >= 2, counts  # every class present, so that one can be left out
    full = root / "full"
    for name, label in zip(split.sources, predicted):
        (full / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(pool / name, full / CLASSES[label] / name)
    return teacher, full


def image_spec(teacher: Path, student: Path, eval_dir: Path, train: Path) -> dict:
    return {"name": "images", "task": "image-classification", "teacher": {"source": "timm", "path": str(teacher)},
            "student": {"path": str(student), "init": {"architecture": "resnet10t"}},
            "data": {"train": str(train), "eval": str(eval_dir), "image_size": 16},
            "distill": {"losses": [{"kind": "ce"}, {"kind": "hinton"}]},
            "train": {"max_steps": 1, "batch_size": 8, "threads": 1},
            "export": {"batch_sizes": [1]}, "output": "run"}


def test_an_eval_folder_missing_a_class_is_judged_like_the_full_one(tmp_path, image_teacher, one_thread):
    teacher, full = image_teacher
    partial = tmp_path / "partial"
    shutil.copytree(full, partial)
    shutil.rmtree(partial / "bee")  # "cat" would become class 1 if ids came from the folders present
    for eval_dir in (full, partial):
        profile = write(tmp_path / "p.yaml", image_spec(teacher, teacher, eval_dir, full))
        result = kd("evaluate", profile, "--model", "teacher", "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["metrics"]["accuracy"] == 1.0, (eval_dir.name, report)
        assert report["samples"] == sum(1 for _ in eval_dir.rglob("*.png"))


def test_an_unknown_class_folder_is_named(tmp_path, image_teacher):
    teacher, full = image_teacher
    odd = tmp_path / "odd"
    shutil.copytree(full, odd)
    (odd / "bee").rename(odd / "wasp")
    result = kd("check", write(tmp_path / "p.yaml", image_spec(teacher, teacher, odd, full)))
    assert result.exit_code == 2, result.output
    assert f"{odd}: class 'wasp'" in result.stderr and "'ant'=0, 'bee'=1, 'cat'=2" in result.stderr


def test_class_names_travel_with_the_timm_student_and_its_onnx(tmp_path, image_teacher, one_thread):
    teacher, full = image_teacher
    profile = write(tmp_path / "p.yaml", image_spec(teacher, tmp_path / "init", full, full))
    assert kd("init-student", profile).exit_code == 0
    assert json.loads((tmp_path / "init" / "config.json").read_text())["label_names"] == CLASSES
    result = kd("distill", profile)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "student" / "config.json").read_text())["label_names"] == CLASSES
    exported = kd("export", profile, "--no-latency")
    assert exported.exit_code == 0, exported.output
    out = tmp_path / "run" / "export"
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(meta["id2label"]) == {"0": "ant", "1": "bee", "2": "cat"}
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == CLASSES and config["id2label"] == {"0": "ant", "1": "bee", "2": "cat"}


def test_a_timm_student_from_labels_takes_its_classes_from_the_folders(tmp_path, image_teacher, one_thread):
    _, full = image_teacher
    spec = {"name": "scratch", "task": "image-classification",
            "student": {"path": "init", "init": {"architecture": "resnet10t"}},
            "data": {"train": str(full), "image_size": 16}, "distill": {"losses": [{"kind": "ce"}]},
            "train": {"max_steps": 1, "batch_size": 8, "threads": 1}, "output": "run"}
    profile = write(tmp_path / "p.yaml", spec)
    made = kd("init-student", profile)
    assert made.exit_code == 0, made.output
    config = json.loads((tmp_path / "init" / "config.json").read_text())
    assert config["num_classes"] == 3 and config["label_names"] == CLASSES
    result = kd("distill", profile)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "student" / "config.json").read_text())["label_names"] == CLASSES


def test_a_default_binary_classifier_teacher_runs_the_whole_job(tmp_path, bert_encoder, sst_tiny, one_thread):
    """transformers 5 writes no id2label for 2 default-named classes: the config object's LABEL_0/LABEL_1 count."""
    from conftest import tiny_bert_config
    from transformers import AutoTokenizer, BertForSequenceClassification
    teacher = tmp_path / "teacher"
    BertForSequenceClassification(tiny_bert_config(num_labels=2)).save_pretrained(teacher)
    AutoTokenizer.from_pretrained(bert_encoder).save_pretrained(teacher)
    assert "id2label" not in json.loads((teacher / "config.json").read_text())  # saved as the library saves it
    spec = {"name": "binary", "task": "sequence-classification", "teacher": {"path": str(teacher)},
            "student": {"path": "student-init", "init": {"layers": [0, 1]}},
            "data": {"train": str(sst_tiny), "eval": str(sst_tiny), "max_length": 16},
            "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "weight": 0.5}]},
            "train": {"max_steps": 2, "batch_size": 8, "threads": 1}, "output": "run"}
    profile = write(tmp_path / "p.yaml", spec)
    for command in ("init-student", "check", "distill", "evaluate"):
        result = kd(command, profile, "--json")
        assert result.exit_code == 0, (command, result.output)
    assert json.loads(result.stdout)["metrics"]["accuracy"] >= 0.0
    checked = json.loads(kd("check", profile, "--json").stdout)
    assert checked["classes"] == {"names": ["LABEL_0", "LABEL_1"], "source": "teacher"}
    exported = kd("export", profile, "--json")
    assert exported.exit_code == 0, exported.output


def test_no_class_names_says_what_it_saw(tmp_path, bert_encoder, sst_tiny):
    unlabelled = tmp_path / "text.tsv"
    unlabelled.write_text("sentence\n" + "".join(f"{line.split(chr(9))[0]}\n" for line in
                                                 sst_tiny.read_text().splitlines()[1:]))
    refused = kd("check", write(tmp_path / "p.yaml", from_labels_spec(bert_encoder, unlabelled)))
    assert refused.exit_code == 2, refused.output
    assert "the training data shows no labels" in refused.stderr and "data.classes" in refused.stderr
