"""The command line: exit codes, one-message errors, --json on stdout only, and the installed script.

Click 8.2+ (here with typer's CliRunner) keeps stdout and stderr apart: `result.stdout` is stdout
alone, `result.stderr` is stderr alone, and `result.output` is both interleaved. `--json` assertions
read `result.stdout` only; human output and error messages are asserted on `result.stderr`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification
from typer.testing import CliRunner

from kdcli.cli import app

COMMANDS = ["check", "init-student", "distill", "pseudo-label", "noisy-student", "evaluate", "export"]


def spec(teacher: Path, data: Path) -> dict:
    """A tiny text job: 4-layer teacher, student of teacher layers 0 and 3, two training steps."""
    return {
        "name": "tiny", "task": "sequence-classification", "teacher": {"path": str(teacher)},
        "student": {"path": "student-init", "init": {"layers": [0, 3], "drop": ["token_type_embeddings"]}},
        "data": {"train": str(data), "eval": str(data), "max_length": 16},
        "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0},
                               {"kind": "hidden_mse", "layers": {1: 2, 2: 4}}]},
        "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "log_every": 1},
        "output": "run",
    }


@pytest.fixture()
def kd() -> CliRunner:
    return CliRunner()


@pytest.fixture()
def job(write_profile, bert_cls, sst_tiny) -> Path:
    return write_profile(spec(bert_cls, sst_tiny))


def run(kd: CliRunner, *args: str, env: dict | None = None):
    return kd.invoke(app, [str(a) for a in args], env=env)


def assert_bad_input(result, *needles: str) -> str:
    """Exit 2, one error message (and at most one hint) after any progress lines, nothing on stdout,
    no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert sum(line.startswith("error:") for line in lines) == 1 and first >= len(lines) - 2
    assert sum(line.startswith("  hint:") for line in lines) <= 1
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


def test_help_lists_every_command(kd):
    result = run(kd, "--help")
    assert result.exit_code == 0
    registered = list(typer.main.get_command(app).commands)
    assert set(COMMANDS) <= set(registered)
    for name in registered:
        assert f"│ {name} " in result.stdout  # a row of the Commands panel


# --- bad input: exit 2, one message, no traceback -------------------------------------------------

def test_missing_profile(kd, tmp_path):
    message = assert_bad_input(run(kd, "check", tmp_path / "nope.yaml"), "profile not found", "nope.yaml")
    assert "hint:" in message


def test_yaml_syntax_error_names_file_and_line(kd, write_profile):
    path = write_profile("name: tiny\ntask: sequence-classification\nstudent: {path: s}\noutput: x: y\n")
    assert_bad_input(run(kd, "check", path), f"{path}:4: YAML syntax error", "hint:")


def test_unknown_key_did_you_mean(kd, job):
    text = job.read_text().replace("batch_size:", "batchsize:")
    job.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "batchsize" in row)
    assert_bad_input(run(kd, "check", job),
                     f"{job}:{line}: train.batchsize: unknown key 'batchsize' (did you mean 'batch_size'?)")


def test_unknown_loss_kind(kd, job):
    job.write_text(job.read_text().replace("kind: hinton", "kind: hintn"))
    assert_bad_input(run(kd, "check", job), "distill.losses.1: unknown loss kind 'hintn' (did you mean 'hinton'?)")


@pytest.mark.parametrize("item, needle", [
    ("train.lr", "--set 'train.lr': expected KEY=VALUE"),
    ("distill.losses.7.weight=1", "distill.losses.7 is not an index of a list of 3"),
    ("train.lr=fast", "train.lr: Input should be a valid number"),
])
def test_bad_set(kd, job, item, needle):
    assert_bad_input(run(kd, "check", job, "--set", item), needle)


def test_missing_teacher_checkpoint_at_init_student(kd, job, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a --set path is relative to the working directory
    message = assert_bad_input(run(kd, "init-student", job, "--set", "teacher.path=gone"),
                               f"checkpoint not found: {tmp_path / 'gone'}")
    assert "hint: teacher.path" in message
    assert not (tmp_path / "student-init").exists()


def test_wrong_layer_map_at_distill_names_both_depths(kd, job, tmp_path):
    assert run(kd, "init-student", job).exit_code == 0
    result = run(kd, "distill", job, "--set", "distill.losses.2.layers={3: 4}")
    # The field keeps its [kind]: rich markup must not swallow "[hidden_mse]".
    assert_bad_input(result, "distill.losses[hidden_mse].layers: 3: 4 is out of range",
                     "the student has 2 layers and the teacher has 4")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_debug_env_shows_the_traceback(kd, job):
    args = ("init-student", job, "--quiet", "--set", "teacher.path=gone")
    plain = run(kd, *args)
    debug = run(kd, *args, env={"KDCLI_DEBUG": "1"})
    assert plain.exit_code == debug.exit_code == 2
    assert "Traceback" not in plain.stderr
    assert "Traceback (most recent call last)" in debug.stderr and "CheckpointError" in debug.stderr
    assert debug.stderr.rstrip().endswith(plain.stderr.rstrip())  # the same message closes it
    assert debug.stdout == ""


def test_ctrl_c_exits_130(kd, job, monkeypatch):
    import kdcli.commands.distill

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(kdcli.commands.distill, "distill", interrupted)
    result = run(kd, "distill", job)
    assert result.exit_code == 130 and "interrupted" in result.stderr and "Traceback" not in result.output


def test_an_unexpected_error_is_one_line_and_exit_1(kd, job, monkeypatch):
    import kdcli.commands.check

    def broken(profile):
        raise RuntimeError("no such layer [/encoder] in [bold]x")
    monkeypatch.setattr(kdcli.commands.check, "check_profile", broken)
    result = run(kd, "check", job)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: RuntimeError: no such layer [/encoder] in [bold]x" in result.stderr  # printed as written
    assert "rerun with KDCLI_DEBUG=1" in result.stderr
    debug = run(kd, "check", job, env={"KDCLI_DEBUG": "1"})
    assert debug.exit_code == 1 and "Traceback (most recent call last)" in debug.stderr


# --- check, init-student ---------------------------------------------------------------------------

def test_check_json_before_and_after_init_student(kd, job, bert_cls, tmp_path):
    before = run(kd, "check", job, "--json")
    assert before.exit_code == 0, before.output
    report = json.loads(before.stdout)  # exactly one JSON document on stdout, nothing else
    profile = report["profile"]
    assert profile["teacher"]["path"] == str(bert_cls)
    assert profile["student"]["path"] == str(tmp_path / "student-init")
    assert profile["output"] == str(tmp_path / "run")
    assert all(Path(p).is_absolute() for p in (profile["data"]["train"], profile["data"]["eval"]))
    assert report["teacher"]["loaded"] is True and report["student"]["loaded"] is False
    assert "run init-student" in report["student"]["status"]
    assert report["losses"] == []

    assert run(kd, "init-student", job, "--json").exit_code == 0
    after = run(kd, "check", job, "--json", "--set", "distill.losses.2.layers=uniform")
    assert after.exit_code == 0, after.output
    report = json.loads(after.stdout)
    teacher, student = report["teacher"], report["student"]
    assert (teacher["layers"], student["layers"]) == (4, 2)
    assert teacher["params"] == sum(p.numel() for p in
                                    AutoModelForSequenceClassification.from_pretrained(bert_cls).parameters())
    assert teacher["output_shape"] == student["output_shape"] == [2, 2]
    losses = {loss["kind"]: loss for loss in report["losses"]}
    assert list(losses) == ["ce", "hinton", "hidden_mse"]
    assert losses["hidden_mse"]["map"] == {"1": 2, "2": 4}  # "uniform" resolved against both depths
    assert losses["hinton"]["weight"] == 1.0 and losses["ce"]["weight"] == 0.5


def test_check_human_output_goes_to_stderr(kd, job):
    result = run(kd, "check", job)
    assert result.exit_code == 0 and result.stdout == ""
    assert "profile ok" in result.stderr and "not there yet" in result.stderr


def test_init_student_json(kd, job, tmp_path):
    result = run(kd, "init-student", job, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["layer_map"] == [0, 3] and report["dropped"] == ["token_type_embeddings"]
    assert report["output_dir"] == str(tmp_path / "student-init")
    t, s = report["teacher"], report["student"]
    assert (t["layers"], s["layers"]) == (4, 2)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student-init")
    assert s["params"] == sum(p.numel() for p in model.parameters()) < t["params"]
    model_files = [f for f in (tmp_path / "student-init").iterdir() if f.name != "README.md"]  # not the card
    assert s["size_bytes"] == sum(f.stat().st_size for f in model_files) < t["size_bytes"]
    assert report["copied_tensors"] == len(model.state_dict())


def test_init_student_human_table(kd, job, bert_cls):
    result = run(kd, "init-student", job)
    assert result.exit_code == 0 and result.stdout == ""
    lines = result.stderr.splitlines()
    row = {name: next(line for line in lines if name in line) for name in ("layers", "parameters", "size on disk")}
    assert row["layers"].split()[-4:] == ["4", "│", "2", "│"]
    teacher_params = sum(p.numel() for p in AutoModelForSequenceClassification.from_pretrained(bert_cls).parameters())
    assert f"{teacher_params:,}" in row["parameters"] and "KB" in row["size on disk"]
    assert "teacher" in result.stderr and "student" in result.stderr
    assert "student layer ← teacher layer: 0←0, 1←3" in result.stderr


# --- distill ---------------------------------------------------------------------------------------

def test_distill_refuses_an_earlier_run_and_resumes(kd, job, tmp_path):
    assert run(kd, "init-student", job).exit_code == 0
    first = run(kd, "distill", job, "--json")
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    student = tmp_path / "run" / "student"
    assert summary["student"] == str(student) and summary["output_dir"] == str(tmp_path / "run")
    assert AutoModelForSequenceClassification.from_pretrained(student).config.num_hidden_layers == 2
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s] == [1, 2]
    trained = load_file(student / "model.safetensors")

    again = run(kd, "distill", job)
    assert_bad_input(again, f"{tmp_path / 'run'} holds an earlier run", "hint: pass --resume")

    resumed = run(kd, "distill", job, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "done" in resumed.stderr and "accuracy" in resumed.stderr
    after = load_file(student / "model.safetensors")  # resuming a finished run keeps the trained weights
    for key in trained:
        assert torch.equal(trained[key], after[key]), key


# --- the installed script ----------------------------------------------------------------------------

def test_installed_script_json_and_bad_input(job, write_profile):
    script = Path(sys.executable).with_name("kdcli")
    assert script.is_file(), "pip install -e . puts kdcli beside the venv's python"
    bad = write_profile(yaml.safe_dump({**yaml.safe_load(job.read_text()), "tasks": "x"}), "bad.yaml")
    env = {k: v for k, v in os.environ.items() if k != "KDCLI_DEBUG"}
    # Both at once: each spends its time importing torch and transformers.
    good, wrong = (subprocess.Popen([str(script), "check", str(path), *extra], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
                   for path, extra in ((job, ["--json"]), (bad, [])))
    (out, err), (bad_out, bad_err) = good.communicate(timeout=120), wrong.communicate(timeout=120)
    assert good.returncode == 0, err
    assert json.loads(out)["profile"]["name"] == "tiny"
    assert wrong.returncode == 2 and bad_out == ""
    assert f"{bad}:" in bad_err and "unknown key 'tasks' (did you mean 'task'?)" in bad_err
    assert "Traceback" not in bad_err


def test_distill_nproc_validates_the_profile_before_launching_torchrun(kd, job, write_profile):
    bad = write_profile(yaml.safe_dump({**yaml.safe_load(job.read_text()), "tasks": "x"}), "bad.yaml")
    result = run(kd, "distill", bad, "--nproc", "2")
    assert_bad_input(result, "unknown key 'tasks'")  # one message from this process, none from N workers


def test_init_student_without_a_teacher_prints_its_table(kd, write_profile, tmp_path):
    profile = write_profile({"name": "scratch", "task": "image-classification",
                             "student": {"path": "student", "init": {"architecture": "resnet18", "num_classes": 10}},
                             "data": {"train": "sklearn:digits"}, "distill": {"losses": [{"kind": "ce"}]},
                             "output": "run"})
    result = run(kd, "init-student", profile)
    assert result.exit_code == 0, result.output
    assert "ResNet" in result.stderr and "student written to" in result.stderr
    assert (tmp_path / "student" / "config.json").is_file()
