"""Unattended runs (CI, Kubernetes), through the CLI: progress lines when stderr is a pipe, every gate
reported, unwritable outputs refused up front (exit 2, naming the path), --version, --json errors, the
exit codes in --help, and tracking (metrics.jsonl timestamps, TensorBoard, MLflow, metrics.png).

typer's CliRunner hands the command a pipe for stderr, as a CI runner does: what it reads is a CI log.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import kdcli
from kdcli.cli import app

STEPS = 4


@pytest.fixture(scope="module")
def kd() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def job(tmp_path_factory, bert_cls) -> Path:
    """A tiny text job, distilled once through the CLI with both trackers on."""
    from tests.conftest import WORDS
    folder = tmp_path_factory.mktemp("ops")
    rows = [f"{' '.join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(3 + i % 5))}\t{i % 2}" for i in range(32)]
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    spec = {"name": "ops", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "student-init", "init": {"layers": [0, 3]}},
            "data": {"train": "train.tsv", "eval": "train.tsv", "unlabeled": "train.tsv", "max_length": 16},
            "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton", "temperature": 2.0}]},
            "train": {"max_steps": STEPS, "batch_size": 8, "lr": 1e-3, "log_every": 1, "eval_every": 2,
                      "threads": 1, "report_to": ["tensorboard", "mlflow"]},
            "output": "run"}
    profile = folder / "profile.yaml"
    profile.write_text(yaml.safe_dump(spec, sort_keys=False))
    runner = CliRunner()
    init = runner.invoke(app, ["init-student", str(profile)])
    assert init.exit_code == 0, init.output
    assert "init-student: loading the teacher from" in init.stderr  # phases, in a pipe
    done = runner.invoke(app, ["distill", str(profile)])
    assert done.exit_code == 0, done.output
    return profile


def invoke(kd: CliRunner, *args: object, env: dict | None = None):
    return kd.invoke(app, [str(a) for a in args], env=env)


# --- progress in a pipe -----------------------------------------------------------------------------------


def test_evaluate_pseudo_label_and_export_show_progress_lines_in_a_pipe(kd, job, tmp_path):
    evaluated = invoke(kd, "evaluate", job, "--output", tmp_path / "e.json")
    assert evaluated.exit_code == 0, evaluated.output
    assert re.search(r"^evaluate student batch 4/4 \(100%\) · elapsed \d+:\d\d:\d\d · ETA 0:00:00$",
                     evaluated.stderr, re.M)
    assert re.search(r"^evaluate teacher batch 1/4 \(25%\) · elapsed ", evaluated.stderr, re.M)
    labelled = invoke(kd, "pseudo-label", job, "--output", tmp_path / "labels.jsonl")
    assert labelled.exit_code == 0 and "pseudo-label batch 4/4 (100%)" in labelled.stderr
    exported = invoke(kd, "export", job, "--output", tmp_path / "export", "--no-latency")
    assert exported.exit_code == 0, exported.output
    assert "exporting " in exported.stderr and "checking parity in onnxruntime" in exported.stderr
    quiet = invoke(kd, "evaluate", job, "--output", tmp_path / "e.json", "--quiet")
    assert "batch" not in quiet.stderr and "evaluate:" in quiet.stderr  # the table stays


def test_distill_progress_paces_itself_by_time_in_a_long_run(monkeypatch):
    """A tenth of the work or KDCLI_PROGRESS_SECONDS, whichever comes first: a long run stays audible."""
    import io

    from rich.console import Console

    from kdcli.runtime import progress
    clock = iter(float(t) for t in range(0, 10_000, 7))  # each update 7 s after the last
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    with progress.Progress(Console(file=out, force_terminal=False, width=200)) as shown:
        task = shown.task("distill", "step")
        for step in range(1, 1001):
            task.update(step, 1000, loss=0.5, samples_per_s=100.0)
    lines = out.getvalue().splitlines()
    # 30 s between lines (every 5th update at 7 s each), far sooner than a tenth of the steps;
    # the ETA is the rate since the first update (7 s a step) times the 994 steps left
    assert lines[0] == "distill step 1/1000 (0%) · loss 0.5000 · 100 samples/s · elapsed 0:00:00"
    assert lines[1] == "distill step 6/1000 (0%) · loss 0.5000 · 100 samples/s · elapsed 0:00:35 · ETA 1:55:58"
    assert len(lines) == 1000 // 5 + 1 and lines[-1].startswith("distill step 1000/1000 (100%)")


# --- gates ------------------------------------------------------------------------------------------------


def test_every_failing_gate_is_named_and_reported(kd, job, tmp_path):
    out = tmp_path / "eval.json"
    result = invoke(kd, "evaluate", job, "--output", out, "--json", "--min-retention", "2", "--min-metric", "1.5",
                    "--max-kl", "-1")
    assert result.exit_code == 1, result.output
    printed = json.loads(result.stdout)  # the report, no second (error) object
    written = json.loads(out.read_text())
    assert printed["gates"] == written["gates"]
    assert [(g["name"], g["threshold"], g["passed"]) for g in written["gates"]] == [
        ("--min-retention", 2.0, False), ("--min-metric", 1.5, False), ("--max-kl", -1.0, False)]
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert error.startswith("error: 3 of 3 gates failed: gate --min-retention 2.0 failed: retention is ")
    for gate in written["gates"]:
        assert f"gate {gate['name']} {gate['threshold']} failed: {gate['measures']} is {gate['value']:.4f}" in error
    passing = invoke(kd, "evaluate", job, "--output", out, "--json", "--min-metric", "0", "--max-kl", "-1")
    assert passing.exit_code == 1
    assert [g["passed"] for g in json.loads(passing.stdout)["gates"]] == [True, False]
    assert "error: gate --max-kl -1.0 failed: kl is" in passing.stderr  # one failing gate: named alone


# --- unwritable outputs -----------------------------------------------------------------------------------


def unwritable(tmp_path: Path) -> Path:
    """A folder kdcli cannot write into: read-only for a normal user; for root (who ignores permission
    bits), a path under a regular file."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return blocker


@pytest.mark.parametrize("command", ["evaluate", "export", "pseudo-label"])
def test_an_unwritable_output_is_exit_2_naming_the_path_before_the_work(kd, job, tmp_path, command):
    target = unwritable(tmp_path) / ("out.json" if command == "evaluate" else "out")
    result = invoke(kd, command, job, "--output", target)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "bug" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: cannot write {target}: "), result.stderr  # before any progress
    assert lines[1].startswith("  hint: make the folder writable, or write elsewhere")


def test_an_unwritable_run_folder_refuses_distill_before_loading(kd, job, tmp_path):
    target = unwritable(tmp_path) / "run"
    result = invoke(kd, "distill", job, "--set", f"output={target}", "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert error["exit_code"] == 2 and error["error"].startswith(f"cannot write {target}: ")
    assert error["hint"].startswith("make the folder writable")


# --- conventions --------------------------------------------------------------------------------------------


def help_text(kd: CliRunner, command: str) -> str:
    """--help as one line of words, without rich's panel borders."""
    return " ".join(invoke(kd, command, "--help", env={"COLUMNS": "400"}).stdout.replace("│", " ").split())


def test_version_completion_and_exit_codes_in_help(kd):
    version = invoke(kd, "--version")
    assert version.exit_code == 0 and version.stdout == f"kdcli {kdcli.__version__}\n"
    top = invoke(kd, "--help")
    assert "--install-completion" in top.stdout and "--show-completion" in top.stdout
    for command in ("distill", "evaluate", "export", "init-student", "pseudo-label", "noisy-student", "check"):
        text = help_text(kd, command)
        assert "Exit codes: 0 done" in text and "143 terminated (SIGTERM)" in text, command
    evaluate_help = help_text(kd, "evaluate")
    assert "Default: RUN/eval.json" in evaluate_help and "nats per sample" in evaluate_help


def test_json_errors_are_one_object_on_stdout(kd, job, tmp_path):
    result = invoke(kd, "evaluate", job, "--json", "--set", "data.eval=missing.tsv")
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert set(error) == {"error", "hint", "exit_code"} and error["exit_code"] == 2
    assert "missing.tsv" in error["error"] and error["error"] in result.stderr  # the human message too
    plain = invoke(kd, "evaluate", job, "--set", "data.eval=missing.tsv")
    assert plain.stdout == ""


# --- tracking -----------------------------------------------------------------------------------------------


def test_metrics_records_carry_time_and_elapsed(job):
    records = [json.loads(line) for line in (job.parent / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert all(r["time"] > 1.7e9 for r in records)
    elapsed = [r["elapsed_s"] for r in steps]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0


def test_tensorboard_event_file_holds_every_scalar_and_the_profile(job):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    folder = job.parent / "run" / "tensorboard"
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "loss/ce", "loss/hinton", "lr", "samples_per_s", "eval/metrics/accuracy",
            "eval/agreement/top1"} <= tags
    assert [e.step for e in events.Scalars("loss")] == list(range(1, STEPS + 1))
    records = [json.loads(line) for line in (job.parent / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/hinton"] for r in records if "loss" in r]
    assert [e.value for e in events.Scalars("loss/hinton")] == pytest.approx(losses, rel=1e-6)
    assert [e.step for e in events.Scalars("eval/metrics/accuracy")] == [2, 4]
    plugin = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugin and b"train.lr" in plugin["_hparams_/experiment"]


def test_mlflow_run_holds_the_metrics_and_the_profile(job):
    mlflow = pytest.importorskip("mlflow")
    client = mlflow.tracking.MlflowClient((job.parent / "run" / "mlruns").resolve().as_uri())
    (run,) = client.search_runs(["0"])
    assert run.data.params["train.batch_size"] == "8" and run.data.params["name"] == "ops"
    assert {"loss", "loss.ce", "lr", "eval.metrics.accuracy"} <= set(run.data.metrics)  # "/" is "." there
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, STEPS + 1))


def test_distill_ends_with_a_loss_curve_chart(job):
    chart = job.parent / "run" / "metrics.png"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_tracker_is_exit_2_before_training(kd, job, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_mlflow(name, *args, **kwargs):  # the extra not installed
        if name == "mlflow":
            raise ImportError(name)
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    result = invoke(kd, "distill", job, "--set", "output=other")
    assert result.exit_code == 2
    assert "error: train.report_to: mlflow is not installed" in result.stderr
    assert "pip install mlflow-skinny" in result.stderr
    assert not (job.parent / "other").exists()


# --- signals ------------------------------------------------------------------------------------------------


def test_sigterm_outside_training_stops_at_once_with_143(kd, job, monkeypatch):
    import signal
    import time

    import kdcli.commands.pseudo_label

    def labelling(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the runner cancels the job while the teacher labels
        time.sleep(30)
        raise AssertionError("SIGTERM did not stop pseudo-label")
    monkeypatch.setattr(kdcli.commands.pseudo_label, "pseudo_label", labelling)
    result = invoke(kd, "pseudo-label", job, "--json")
    assert result.exit_code == 143
    assert "stopped: pseudo-label: SIGTERM" in result.stderr and "Traceback" not in result.output
    assert json.loads(result.stdout) == {"error": "pseudo-label: SIGTERM", "exit_code": 143,
                                         "hint": "nothing was written; run the same command again"}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the command's alone


def test_in_a_step_the_first_signal_waits_for_the_step_and_a_second_stops_at_once():
    import signal

    from kdcli.runtime.signals import Interrupted, Terminated, finish_the_step, raise_if_stopped
    from kdcli.runtime.signals import terminate_as_interrupt as handled
    with handled(), finish_the_step():
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step: the step goes on
        with pytest.raises(Terminated):
            raise_if_stopped()  # between steps: now
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: at once
        with pytest.raises(Interrupted):
            raise_if_stopped()  # the first one, still pending
