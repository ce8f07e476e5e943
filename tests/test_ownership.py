"""--force and every other clean-up remove only what kdcli wrote (issue 25): never the profile, its data, the
pseudo-labels distill reads, or a file of the user's; and nothing at all when the job is refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from kdcli.cli import app


def kd(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder: Path, skip: set[str] = frozenset()) -> dict[str, str]:
    """Every file under `folder` with its digest, outside the paths kdcli writes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] not in skip}


def job_in(folder: Path, bert_cls: Path, sst_tiny: Path, output: str) -> Path:
    """A profile, its data and a notes file in `folder`; the run in `output` (relative to the profile)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mydata.tsv").write_bytes(sst_tiny.read_bytes())
    (folder / "notes.md").write_text("my notes\n")
    spec = {"name": "mine", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "student-init", "init": {"layers": [0, 3]}},
            "data": {"train": "mydata.tsv", "eval": "mydata.tsv", "unlabeled": "mydata.tsv", "max_length": 16},
            "distill": {"losses": [{"kind": "hinton"}]},
            "train": {"max_steps": 2, "batch_size": 8, "threads": 1}, "output": output}
    profile = folder / "p.yaml"
    profile.write_text(yaml.safe_dump(spec, sort_keys=False))
    return profile


OWNED = {"student", "student-best", "checkpoints", "cache", "export", "pseudo", "student-init", ".lock",
         "profile.lock.yaml", "metrics.jsonl", "metrics.png", "eval.json"}


def test_force_in_the_profiles_own_folder_keeps_the_profile_the_data_and_the_notes(tmp_path, bert_cls, sst_tiny,
                                                                                   one_thread):
    profile = job_in(tmp_path / "proj", bert_cls, sst_tiny, output=".")
    assert kd("init-student", profile).exit_code == 0
    assert kd("distill", profile, "--quiet").exit_code == 0
    before = snapshot(profile.parent, skip=OWNED)
    forced = kd("distill", profile, "--quiet", "--force")
    assert forced.exit_code == 0, forced.output
    assert snapshot(profile.parent, skip=OWNED) == before
    assert {"p.yaml", "mydata.tsv", "notes.md"} <= set(before)


def test_force_keeps_the_pseudo_labels_it_trains_on(tmp_path, bert_cls, sst_tiny, one_thread):
    profile = job_in(tmp_path / "proj", bert_cls, sst_tiny, output="run")
    assert kd("init-student", profile).exit_code == 0
    assert kd("distill", profile, "--quiet").exit_code == 0
    assert kd("pseudo-label", profile, "--quiet").exit_code == 0
    labels = profile.parent / "run" / "pseudo" / "labels.jsonl"
    kept = labels.read_bytes()
    forced = kd("distill", profile, "--quiet", "--force", "--set", f"data.pseudo={labels}")
    assert forced.exit_code == 0, forced.output
    assert labels.read_bytes() == kept


def test_force_refuses_when_the_profile_reads_from_what_it_would_replace(tmp_path, bert_cls, sst_tiny, one_thread):
    profile = job_in(tmp_path / "proj", bert_cls, sst_tiny, output="run")
    assert kd("init-student", profile).exit_code == 0
    assert kd("distill", profile, "--quiet").exit_code == 0
    student = profile.parent / "run" / "student"
    before = snapshot(profile.parent)
    refused = kd("distill", profile, "--force", "--set", f"student.path={student}")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert f"--force would delete {student}" in refused.stderr and "(student.path)" in refused.stderr
    assert snapshot(profile.parent) == before


def test_force_removes_nothing_when_the_preflight_refuses_the_job(tmp_path, bert_cls, sst_tiny, one_thread):
    profile = job_in(tmp_path / "proj", bert_cls, sst_tiny, output="run")
    assert kd("init-student", profile).exit_code == 0
    assert kd("distill", profile, "--quiet").exit_code == 0
    before = snapshot(profile.parent)
    refused = kd("distill", profile, "--force", "--set", "data.train=nosuch.tsv")
    assert refused.exit_code == 2, refused.output
    assert snapshot(profile.parent) == before


COMMANDS = [("init-student",), ("distill", "--quiet"), ("distill", "--quiet", "--force"),
            ("distill", "--quiet", "--resume"), ("pseudo-label", "--quiet"), ("evaluate", "--quiet"),
            ("export", "--quiet", "--no-latency")]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=4))
def test_no_sequence_of_commands_touches_a_file_kdcli_did_not_write(tmp_path_factory, bert_cls, sst_tiny,
                                                                     one_thread, commands):
    folder = tmp_path_factory.mktemp("seq")
    profile = job_in(folder, bert_cls, sst_tiny, output=".")
    (folder / "results.csv").write_text("a,b\n")
    before = snapshot(folder, skip=OWNED)
    codes = []
    for command in [("init-student",), ("distill", "--quiet"), *commands]:
        result = kd(command[0], profile, *command[1:])
        assert result.exit_code in (0, 2), (command, result.output)
        codes.append(result.exit_code)
        assert "Traceback" not in result.output
        assert snapshot(folder, skip=OWNED) == before, command
    assert codes[:2] == [0, 0]  # the sequence ran on a real run folder
