"""Bad data through `kdcli distill`, end to end with tiny real checkpoints: exit 2, one message that
names the file and the line or item, a hint, no traceback, and nothing trained.

tests/test_data.py covers the readers one by one; here the same failures go through the command an
ops engineer runs, so a message lost (or a crash) between the reader and the terminal shows up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.commands.init_student import init_student
from kdcli.profile import load_profile

WIRED = ("needs kdcli.data.check_train_labels called in kdcli.commands.preflight after train_and_eval "
         "(see docs/reliability.md, 'Where each guard lives')")


def assert_bad_input(result, *needles: str, why: str = "") -> str:
    """Exit 2, one error message with a hint, nothing on stdout, no traceback."""
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, f"{why}\n{result.output}"
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, result.stderr
    assert sum(line.startswith("  hint:") for line in lines) <= 1, result.stderr
    flat = result.stderr.replace("\n", "")
    for needle in needles:
        assert needle in flat, f"{why}\n{needle!r} not in {result.stderr}"
    return result.stderr


def distill(profile: Path):
    return CliRunner().invoke(app, ["distill", str(profile), "--quiet"], env={"KDCLI_DEBUG": "0"})


# --- text ----------------------------------------------------------------------------------------------

GOOD = ["the film is good", "a bad plot", "great acting really", "dull and awful story", "fun movie", "worst plot"]


def text_job(tmp_path: Path, teacher: Path, train: Path, losses: list[dict] | None = None) -> Path:
    spec = {"name": "bad-data", "task": "sequence-classification", "teacher": {"path": str(teacher)},
            "student": {"path": str(teacher)},  # the teacher's own weights: no init-student needed
            "data": {"train": str(train), "max_length": 16},
            "distill": {"losses": losses or [{"kind": "ce", "weight": 0.5}, {"kind": "hinton"}]},
            "train": {"max_steps": 2, "batch_size": 4, "threads": 1}, "output": "run"}
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def tsv(rows: list[str]) -> bytes:
    return ("sentence\tlabel\n" + "".join(f"{r}\n" for r in rows)).encode()


LABELLED = [f"{text}\t{i % 2}" for i, text in enumerate(GOOD)]

TEXT_CASES = {
    # name: (file name, content, needles after the file's path)
    "empty file": ("train.tsv", b"", [": the file is empty"]),
    "blank lines only": ("train.tsv", b"\n\n  \n", [": the file is empty"]),
    "header only": ("train.tsv", b"sentence\tlabel\n", [": no data rows"]),
    "unknown label": ("train.tsv", tsv(LABELLED + ["meh film\tneutral"]), [": unknown label 'neutral' (line 8)"]),
    "label id out of range": ("train.tsv", tsv(LABELLED + ["meh film\t7"]), [": unknown label '7' (line 8)"]),
    "mixed encodings": ("train.tsv", tsv(LABELLED) + "café crème\t1\n".encode("latin-1"),
                        [", line 8: not valid UTF-8 (byte 0xe9)"]),
    "utf-16": ("train.tsv", "sentence\tlabel\nthe film\t0\n".encode("utf-16"), ["UTF-16LE text", "iconv -f utf-16le"]),
    "over-long tsv line": ("train.tsv", tsv(LABELLED + ["good " * 40_000 + "\t1"]),
                           [", line 8: a field longer than 131,072 characters"]),
    "over-long csv line": ("train.csv", ("sentence,label\n" + "the film,0\n" * 3 + '"' + "good " * 30_000
                                         + '",1\n').encode(), [", line 5: a field longer than 131,072 characters"]),
    "over-long jsonl line": ("train.jsonl", ('{"sentence": "the film", "label": 0}\n' * 3 + '{"sentence": "'
                                             + "good " * 30_000 + '", "label": 1}\n').encode(),
                             [", line 4: a text of 149,999 characters"]),
    "over-long txt line (unlabelled)": ("train.txt", ("the film\n" * 3 + "good " * 30_000 + "\n").encode(),
                                        [", line 4: a text of 149,999 characters"]),
    "unclosed quote": ("train.csv", ('sentence,label\nthe film,0\n"a bad plot,1\n' + "x,0\n" * 3).encode(),
                       [", line 3: 1 fields, the header has 2", "a quote opened on line 3 closes on line 6"]),
    "wrong field count": ("train.tsv", tsv(LABELLED[:2] + ["too\tmany\tfields"]), [", line 4: 3 fields"]),
    "empty text": ("train.tsv", tsv(LABELLED[:2] + ["\t1"]), [", line 4: empty text in column 'sentence'"]),
    "half labelled": ("train.tsv", tsv(LABELLED[:2] + ["no label here\t"]), [", line 4: no label in column"]),
    "no text column": ("train.tsv", b"sentense\tlabel\nthe film\t0\n", [": no column 'sentence'",
                                                                          "did you mean 'sentense'?"]),
    "invalid jsonl": ("train.jsonl", b'{"sentence": "the film", "label": 0}\n{"sentence": \n',
                      [", line 2: invalid JSON"]),
    "jsonl not an object": ("train.jsonl", b'{"sentence": "the film", "label": 0}\n["the film", 0]\n',
                            [", line 2: expected a JSON object"]),
    "jsonl nested past the stack": ("train.jsonl", b'{"sentence": "the film", "label": ' + b"[" * 100_000
                                    + b"]" * 100_000 + b"}\n", [", line 1: unreadable JSON"]),
    "jsonl 5000-digit label": ("train.jsonl", b'{"sentence": "the film", "label": ' + b"9" * 5000 + b"}\n",
                               [", line 1: unreadable JSON"]),
    "jsonl label is a list": ("train.jsonl", b'{"sentence": "the film", "label": [0]}\n' * 3,
                              [": unknown label '[0]' (line 1)"]),
    "binary file": ("train.tsv", bytes(range(256)) * 8, [", line 2: not valid UTF-8 (byte 0x80)"]),
    "unsupported suffix": ("train.xlsx", b"PK\x03\x04", [": unsupported text file type '.xlsx'"]),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_bad_text_data_names_the_file_and_line(case, tmp_path, bert_cls):
    name, content, needles = TEXT_CASES[case]
    data = tmp_path / name
    data.write_bytes(content)
    result = distill(text_job(tmp_path, bert_cls, data, None if name != "train.txt" else [{"kind": "hinton"}]))
    assert_bad_input(result, *[f"{data}{n}" if n.startswith((":", ",")) else n for n in needles])
    assert not (tmp_path / "run" / "student").exists()


def test_missing_file_and_folder(tmp_path, bert_cls):
    assert_bad_input(distill(text_job(tmp_path, bert_cls, tmp_path / "nope.tsv")), f"{tmp_path / 'nope.tsv'}: no such file")
    (tmp_path / "dir.tsv").mkdir()
    assert_bad_input(distill(text_job(tmp_path, bert_cls, tmp_path / "dir.tsv")), "is a folder")


def test_missing_label_column_names_the_file(tmp_path, bert_cls):
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tscore\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(GOOD)))
    result = distill(text_job(tmp_path, bert_cls, data))
    assert_bad_input(result, f"{data}: no labels (column 'label'), and loss 'ce' trains on labels", why=WIRED)


def test_one_class_of_text_with_a_label_loss(tmp_path, bert_cls):
    data = tmp_path / "train.tsv"
    data.write_bytes(tsv([f"{t}\tpositive" for t in GOOD]))
    result = distill(text_job(tmp_path, bert_cls, data))
    assert_bad_input(result, f"{data}: every example has the same class (1, e.g. train.tsv:2)", why=WIRED)


def test_labels_are_fine_for_a_teacher_only_loss(tmp_path, bert_cls):
    """The same one-class file is good data for Hinton KD alone: the teacher gives the targets."""
    data = tmp_path / "train.tsv"
    data.write_bytes(tsv([f"{t}\tpositive" for t in GOOD]))
    result = distill(text_job(tmp_path, bert_cls, data, [{"kind": "hinton"}]))
    assert result.exit_code == 0, result.output


# --- images --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_student(tmp_path_factory, timm_resnet) -> Path:
    """A resnet10t student derived once from the 10-class resnet18 teacher."""
    folder = tmp_path_factory.mktemp("image-student")
    path = folder / "init.yaml"
    path.write_text(yaml.safe_dump(image_spec(timm_resnet, folder / "student", "sklearn:digits")))
    init_student(load_profile(path))
    return folder / "student"


def image_spec(teacher: Path, student: Path, train: str) -> dict:
    return {"name": "bad-images", "task": "image-classification",
            "teacher": {"source": "timm", "path": str(teacher), "arch": "resnet18", "num_classes": 10},
            "student": {"path": str(student), "init": {"architecture": "resnet10t"}},
            "data": {"train": train, "image_size": 32},
            "distill": {"losses": [{"kind": "ce"}, {"kind": "hinton"}]},
            "train": {"max_steps": 1, "batch_size": 4, "threads": 1}, "output": "run"}


def image_folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def image_job(tmp_path: Path, timm_resnet: Path, student: Path, train: Path | str) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(image_spec(timm_resnet, student, str(train))))
    return path


def test_corrupted_image_names_the_file(tmp_path, timm_resnet, image_student):
    root = image_folder(tmp_path / "images", ["cat", "dog"])
    broken = root / "dog" / "9.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    assert_bad_input(distill(image_job(tmp_path, timm_resnet, image_student, root)),
                     f"{broken}: cannot read the image")


def test_truncated_jpeg_names_the_file(tmp_path, timm_resnet, image_student):
    root = image_folder(tmp_path / "images", ["cat", "dog"])
    good = root / "cat" / "0.png"
    Image.open(good).convert("RGB").save(root / "cat" / "x.jpg")
    cut = (root / "cat" / "x.jpg").read_bytes()
    (root / "cat" / "x.jpg").write_bytes(cut[: len(cut) // 2])
    assert_bad_input(distill(image_job(tmp_path, timm_resnet, image_student, root)),
                     f"{root / 'cat' / 'x.jpg'}: cannot read the image")


def test_image_folder_with_one_class(tmp_path, timm_resnet, image_student):
    root = image_folder(tmp_path / "images", ["cat"])
    assert_bad_input(distill(image_job(tmp_path, timm_resnet, image_student, root)),
                     f"{root}: every example has the same class (0, e.g. cat/0.png)", why=WIRED)


def test_image_classes_the_teacher_does_not_know(tmp_path, timm_resnet, image_student):
    root = image_folder(tmp_path / "images", [f"c{i:02d}" for i in range(11)], per_class=1)
    assert_bad_input(distill(image_job(tmp_path, timm_resnet, image_student, root)),
                     f"{root}: c10/0.png: class 10, and the model knows 10 classes (0 to 9)", why=WIRED)


def test_class_folder_without_images_and_mixed_layout(tmp_path, timm_resnet, image_student):
    root = image_folder(tmp_path / "images", ["cat", "dog"])
    (root / "empty").mkdir()
    assert_bad_input(distill(image_job(tmp_path, timm_resnet, image_student, root)),
                     f"{root / 'empty'}: class folder without images")
    (root / "empty").rmdir()
    Image.open(root / "cat" / "0.png").save(root / "loose.png")
    assert_bad_input(distill(image_job(tmp_path, timm_resnet, image_student, root)),
                     f"{root}: holds both class folders and loose images (e.g. loose.png)")


def test_unreadable_npz_and_unknown_source(tmp_path, timm_resnet, image_student):
    npz = tmp_path / "images.npz"
    npz.write_bytes(b"PK\x03\x04 not a zip")
    assert_bad_input(distill(image_job(tmp_path, timm_resnet, image_student, npz)), f"{npz}: cannot read the npz")
    assert_bad_input(distill(image_job(tmp_path, timm_resnet, image_student, "sklearn:mnist")),
                     "sklearn:mnist: unknown dataset")


# --- checkpoints ---------------------------------------------------------------------------------------

MODELS = ("needs the config/weights agreement check in kdcli.models.hf.load_hf "
          "(see docs/reliability.md, 'Where each guard lives')")
PICKLES = ("needs the refused-pickle message in kdcli.models.hf/timm and the torch warning filter in kdcli.cli "
           "(see docs/reliability.md, 'Where each guard lives')")


class Payload:
    """Unpickling this runs `touch MARKER`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch '{self.marker}'",))


def copy_of(folder: Path, tmp_path: Path, name: str) -> Path:
    import shutil
    return Path(shutil.copytree(folder, tmp_path / name))


def edit_config(folder: Path, **changes) -> None:
    import json
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def two_models_job(tmp_path: Path, teacher: Path, student: Path, data: Path) -> Path:
    return text_job(tmp_path, teacher, data) if teacher == student else _with_student(
        text_job(tmp_path, teacher, data), student)


def _with_student(path: Path, student: Path) -> Path:
    spec = yaml.safe_load(path.read_text())
    spec["student"]["path"] = str(student)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture()
def labelled(tmp_path) -> Path:
    path = tmp_path / "train.tsv"
    path.write_bytes(tsv(LABELLED))
    return path


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_truncated_safetensors(role, tmp_path, bert_cls, labelled):
    broken = copy_of(bert_cls, tmp_path, "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    teacher, student = (broken, bert_cls) if role == "teacher" else (bert_cls, broken)
    assert_bad_input(distill(_with_student(text_job(tmp_path, teacher, labelled), student)),
                     f"{broken}: cannot load the weights")


def test_config_width_disagrees_with_weights(tmp_path, bert_cls, labelled):
    broken = copy_of(bert_cls, tmp_path, "wider")
    edit_config(broken, hidden_size=64)
    assert_bad_input(distill(text_job(tmp_path, broken, labelled)), f"{broken}: cannot load the weights")


def test_config_with_more_layers_than_the_weights(tmp_path, bert_cls, labelled):
    """A student config.json that names 6 layers over 4 layers of weights: 2 layers would be random."""
    broken = copy_of(bert_cls, tmp_path, "deeper")
    edit_config(broken, num_hidden_layers=6)
    result = distill(_with_student(text_job(tmp_path, bert_cls, labelled), broken))
    assert_bad_input(result, f"{broken}: config.json and the weights disagree: 32 weights its config.json "
                             "describes are missing (e.g. bert.encoder.layer.4.", why=MODELS)


def test_config_with_fewer_layers_than_the_weights(tmp_path, bert_cls, labelled):
    """A teacher config.json that names 2 of its 4 layers: half the teacher would be dropped silently."""
    broken = copy_of(bert_cls, tmp_path, "shallower")
    edit_config(broken, num_hidden_layers=2)
    result = distill(text_job(tmp_path, broken, labelled))
    assert_bad_input(result, f"{broken}: config.json and the weights disagree: 32 weights are not in its "
                             "config.json (e.g. bert.encoder.layer.2.", why=MODELS)


def test_corrupted_tokenizer_and_config(tmp_path, bert_cls, labelled):
    broken = copy_of(bert_cls, tmp_path, "tokenizer")
    (broken / "tokenizer.json").write_text("{not json")
    assert_bad_input(distill(text_job(tmp_path, broken, labelled)), f"{broken}: cannot load the tokenizer")
    (broken / "config.json").write_text("{not json")
    assert_bad_input(distill(text_job(tmp_path, broken, labelled)), f"{broken}/config.json: cannot read")


def test_timm_checkpoint_of_another_arch(tmp_path, timm_resnet, image_student):
    import timm
    from safetensors.torch import save_file
    other = tmp_path / "resnet10t.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=10).state_dict(), str(other))
    assert_bad_input(distill(image_job(tmp_path, other, image_student, "sklearn:digits")),
                     f"{other}: the weights do not fit timm 'resnet18'")
    other.write_bytes(timm_resnet.read_bytes()[:1000])
    assert_bad_input(distill(image_job(tmp_path, other, image_student, "sklearn:digits")),
                     f"{other}: cannot read the weights")


def test_pickle_payload_in_a_timm_pth_never_runs(tmp_path, image_student, timm_resnet):
    import torch
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Payload(marker)}, evil)
    result = distill(image_job(tmp_path, evil, image_student, "sklearn:digits"))
    assert not marker.exists(), "a pickle in a checkpoint ran code"
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "will likely succeed" not in result.stderr, "kdcli must never suggest weights_only=False"
    assert_bad_input(result, f"{evil}: cannot read the weights: refused, a pickle that holds more than tensors", why=PICKLES)
    control = tmp_path / "CONTROL"  # the payload is live: an unsafe load would have run it
    torch.save(Payload(control), tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert control.exists()


def test_pickle_payload_in_a_transformers_bin_never_runs(tmp_path, bert_cls, labelled):
    import pickle
    marker = tmp_path / "MARKER"
    evil = copy_of(bert_cls, tmp_path, "evil")
    (evil / "model.safetensors").unlink()
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps({"bert.embeddings.word_embeddings.weight": Payload(marker)}))
    result = distill(text_job(tmp_path, evil, labelled))
    assert not marker.exists(), "a pickle in a checkpoint ran code"
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "will likely succeed" not in result.stderr, "kdcli must never suggest weights_only=False"
    assert_bad_input(result, f"{evil}: cannot load the weights: refused, a pickle that holds more than tensors",
                     why=PICKLES)


def test_remote_code_in_a_checkpoint_folder_never_runs(tmp_path, bert_cls, labelled):
    marker = tmp_path / "MARKER"
    evil = copy_of(bert_cls, tmp_path, "remote")
    edit_config(evil, model_type="evil", auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                                                    "AutoModelForSequenceClassification": "modeling_evil.Evil"})
    (evil / "modeling_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    (evil / "configuration_evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    for command in ("distill", "check"):
        result = CliRunner().invoke(app, [command, str(text_job(tmp_path, evil, labelled))])
        assert_bad_input(result, f"{evil}/config.json: cannot read the model config")
    assert not marker.exists(), "remote code in a checkpoint folder ran"


def test_kdcli_never_trusts_remote_code_or_unpickles():
    """Source guard: every loader in kdcli is safe by construction, and stays so."""
    import re
    root = Path(__file__).parent.parent / "kdcli"
    rules = {
        r"trust_remote_code\s*=\s*(?!False\b)": "trust_remote_code other than False",
        r"weights_only\s*=\s*(?!True\b)": "torch.load without weights_only=True",
        r"torch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
        r"yaml\.(load|full_load|unsafe_load|load_all)\(|yaml\.(Unsafe|Full)?Loader\b": "unsafe YAML",
        r"\bpickle\.loads?\(|\bdill\b|\bcloudpickle\b|allow_pickle\s*=\s*True": "unpickling",
        r"(?<![\w.])(eval|exec)\(": "eval/exec",
    }
    hits = []
    for file in sorted(root.rglob("*.py")):
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if line.strip().startswith("#"):
                continue
            for pattern, what in rules.items():
                if re.search(pattern, line):
                    hits.append(f"{file.relative_to(root.parent)}:{number}: {what}: {line.strip()}")
    assert hits == []
    text = "\n".join(f.read_text() for f in root.rglob("*.py"))
    assert text.count("trust_remote_code=False") >= 3  # every transformers loader says it explicitly
