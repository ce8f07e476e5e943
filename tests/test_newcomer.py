"""What a newcomer trips over (issue 16): one rule for relative paths, words that resolve visibly, messages
that name the fix, reruns, and docs that match the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdcli.cli import app


def run(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture()
def job(write_profile, bert_cls, sst_tiny) -> Path:
    return write_profile({
        "name": "tiny", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
        "student": {"path": "student-init", "init": {"layers": "uniform:3"}},
        "data": {"train": str(sst_tiny), "eval": sst_tiny.name, "max_length": 16},  # eval: beside the profile
        "distill": {"losses": [{"kind": "hinton"}, {"kind": "hidden_mse", "layers": "uniform"}]},
        "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3}, "output": "run"})


def test_set_paths_are_relative_to_the_working_directory_profile_paths_to_the_profile(job, sst_tiny, tmp_path,
                                                                                     monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.tsv").write_bytes(sst_tiny.read_bytes())  # check reads the data: it must be there
    monkeypatch.chdir(elsewhere)
    result = run("check", job, "--json", "--set", "data.train=mine.tsv", "--set", "output=out")
    assert result.exit_code == 0, result.output
    profile = json.loads(result.stdout)["profile"]
    assert profile["data"]["train"] == str(elsewhere / "mine.tsv")  # given on the command line
    assert profile["output"] == str(elsewhere / "out")
    assert profile["data"]["eval"] == str(job.parent / "sst.tsv")  # written in the profile
    assert profile["student"]["path"] == str(job.parent / "student-init")


def test_help_states_the_path_rule_once(job):
    assert "relative to the working directory" in " ".join(run("--help").stdout.split())


def test_check_prints_the_kept_layers_and_the_resolved_maps(job):
    assert run("init-student", job).exit_code == 0
    result = run("check", job)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stderr.split())
    assert "student.init.layers keeps teacher layers [0, 2, 3]" in text  # uniform:3 of 4 layers
    assert "map {student: teacher} {'1': 1, '2': 3, '3': 4}" in text  # uniform map: round(i * 4 / 3)
    report = json.loads(run("check", job, "--json").stdout)
    assert report["init_layers"] == [0, 2, 3]
    assert {"kind": "hidden_mse", "map": {"1": 1, "2": 3, "3": 4}}.items() <= report["losses"][1].items()


def one_line_error(result) -> str:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return result.stderr


def test_a_checkpoint_file_where_a_folder_is_expected_says_so(job, bert_cls):
    message = one_line_error(run("check", job, "--set", f"teacher.path={bert_cls / 'config.json'}"))
    assert "a folder is expected, not a file" in message and "hint: point at the folder" in message
    assert str(bert_cls) in message


def test_windows_1252_data_names_cp1252(job, tmp_path):
    data = tmp_path / "excel.csv"
    data.write_bytes("sentence,label\n\u201cgreat\u201d film,1\n".encode("cp1252"))
    assert run("init-student", job).exit_code == 0
    message = one_line_error(run("distill", job, "--set", f"data.train={data}"))
    assert "not valid UTF-8 (byte 0x93)" in message and "iconv -f cp1252 -t utf-8" in message


def test_a_bad_set_value_names_the_flag_not_a_line_of_the_profile(job):
    message = one_line_error(run("check", job, "--set", "train.lr=fast"))
    assert "--set train.lr: train.lr: Input should be a valid number" in message
    assert f"{job}:" not in message


def test_long_messages_are_not_wrapped_when_piped(job, tmp_path):
    deep = tmp_path / ("a-long-folder-name-" * 6) / "teacher"
    message = one_line_error(run("init-student", job, "--set", f"teacher.path={deep}"))
    assert f"checkpoint not found: {deep}\n" in message  # one line, however long


def test_distill_force_replaces_an_earlier_run(job, tmp_path):
    assert run("init-student", job).exit_code == 0
    assert run("distill", job, "--quiet").exit_code == 0
    stale = tmp_path / "run" / "stale.txt"
    stale.write_text("from the earlier run")
    again = run("distill", job, "--quiet")
    assert again.exit_code == 2 and "--force to replace it" in again.stderr
    forced = run("distill", job, "--quiet", "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert stale.read_text() == "from the earlier run"  # not kdcli's: it stays
    assert (tmp_path / "run" / "student" / "config.json").is_file()
    steps = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum("final" in s for s in steps) == 1  # one run's records, not two
    both = run("distill", job, "--force", "--resume")
    assert both.exit_code == 2 and "pass one of them" in both.stderr


def test_export_without_latency_still_writes_report_md(job, tmp_path):
    assert run("init-student", job).exit_code == 0
    assert run("distill", job, "--quiet").exit_code == 0
    result = run("export", job, "--no-latency")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "run" / "export" / "report.md").read_text()
    assert "Latency: not measured (--no-latency)" in report and "Parity: PASS" in report and "## Size" in report
    assert not (tmp_path / "run" / "export" / "latency.json").exists()


def test_report_flags_noisy_measurements():
    from kdcli.onnx.latency import latency_report
    from kdcli.onnx.report import render_markdown
    quiet = {"model": "student", "runtime": "onnxruntime", "batch_size": 1, "seq_len": 16, "p50_ms": 1.0,
             "p90_ms": 1.1, "p99_ms": 1.2, "samples_per_s": 1000.0, "noisy": False}
    noisy = {**quiet, "model": "teacher", "p90_ms": 3.0, "noisy": True}
    text = render_markdown(latency_report([noisy, quiet], 2, {}), None)
    assert "| teacher (noisy) | onnxruntime | 1 |" in text and "| student | onnxruntime | 1 |" in text
    assert "1 of 2 measurements are noisy" in text
    assert "noisy" not in render_markdown(latency_report([quiet], 2, {}), None)


# --- docs that match the code ----------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _leaf_fields(model: type, prefix: str = "") -> list[str]:
    """Dotted names of a pydantic model's fields, nested sections expanded (init.layers, noise.token_mask)."""
    from pydantic import BaseModel
    names = []
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        nested = info.annotation if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) \
            else None
        names += _leaf_fields(nested, f"{prefix}{name}.") if nested else [f"{prefix}{name}"]
    return names


def _sections(text: str) -> dict[str, str]:
    parts = text.split("\n## ")
    return {part.split("\n", 1)[0].strip(): part for part in parts[1:]}


def test_every_profile_field_is_documented_in_profile_md():
    from pydantic import BaseModel

    from kdcli.profile import Profile
    sections = _sections((DOCS / "profile.md").read_text())
    missing = []
    for name, info in Profile.model_fields.items():
        if info.exclude:
            continue
        top = info.annotation
        model = next((a for a in (top, *getattr(top, "__args__", ())) if isinstance(a, type) and issubclass(a, BaseModel)),
                     None)
        if model is None:
            missing += [] if f"`{name}`" in sections["Top level"] else [name]
            continue
        if name == "distill":  # losses: documented per kind in losses.md (checked below)
            continue
        missing += [f"{name}.{leaf}" for leaf in _leaf_fields(model) if f"`{leaf}`" not in sections.get(name, "")]
    assert not missing, f"fields without a row in docs/profile.md: {missing}"


def test_every_loss_option_is_documented_in_losses_md():
    from kdcli.losses.specs import LOSS_SPECS
    text = (DOCS / "losses.md").read_text()
    missing = [f"{kind}.{field}" for kind, spec in LOSS_SPECS.items() for field in spec.model_fields
               if field not in ("kind", "weight") and f"{field}" not in text]
    assert not missing, f"loss options not in docs/losses.md: {missing}"


def test_docs_name_the_metric_behind_min_metric_for_every_task():
    from kdcli.tasks import TASKS
    text = " ".join((DOCS / "profile.md").read_text().split())
    for name, task in TASKS.items():
        assert f"`{name}`: `{task.primary[1]}`" in text, name


def test_install_md_states_the_bounds_pyproject_declares():
    import tomllib
    pyproject = tomllib.loads((DOCS.parent / "pyproject.toml").read_text())
    text = (DOCS / "install.md").read_text()
    for requirement in pyproject["project"]["dependencies"]:
        name, _, bound = requirement.partition(">=")
        if name in ("torch", "transformers", "timm"):
            assert f"| {name} | `>={bound}` |" in text, requirement


def test_distill_before_init_student_says_to_run_it(job):
    message = one_line_error(run("distill", job))
    assert "no student at" in message and "run kdcli init-student first" in message


def test_init_student_refuses_to_write_over_a_student_without_force(job, tmp_path):
    assert run("init-student", job).exit_code == 0
    made = (tmp_path / "student-init" / "config.json").read_bytes()
    message = one_line_error(run("init-student", job, "--set", "student.init.layers=[0]"))
    assert "already holds files" in message and "--force" in message
    assert (tmp_path / "student-init" / "config.json").read_bytes() == made
    forced = run("init-student", job, "--force", "--set", "student.init.layers=[0]")
    assert forced.exit_code == 0, forced.output
    assert json.loads((tmp_path / "student-init" / "config.json").read_text())["num_hidden_layers"] == 1


def test_utf16_data_gets_the_utf16_conversion(job, tmp_path):
    data = tmp_path / "unicode.csv"
    data.write_bytes("sentence,label\ngreat film,1\n".encode("utf-16"))  # with its byte-order mark, as Excel saves
    assert run("init-student", job).exit_code == 0
    message = one_line_error(run("check", job, "--set", f"data.train={data}"))
    assert "UTF-16LE text" in message and "iconv -f utf-16le -t utf-8" in message and "cp1252" not in message


def test_an_output_that_is_a_file_says_so(job, tmp_path):
    (tmp_path / "taken").write_text("a file of the user's\n")
    assert run("init-student", job).exit_code == 0
    message = one_line_error(run("distill", job, "--set", f"output={tmp_path / 'taken'}"))
    assert f"output: {tmp_path / 'taken'} is a file, not a folder" in message
    assert (tmp_path / "taken").read_text() == "a file of the user's\n"


def test_drop_pooler_on_a_same_architecture_student_is_refused_by_check_too(job):
    for command in ("check", "init-student"):
        message = one_line_error(run(command, job, "--set", "student.init.drop=[pooler]"))
        assert "drop: [pooler] needs architecture: distilbert" in message
