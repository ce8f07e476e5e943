"""The profile schema: every error path gives one message naming file, line, field and a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdcli.errors import ProfileDeprecation, ProfileError
from kdcli.profile import load_profile

BASE = """\
name: job
task: sequence-classification
teacher: {path: teacher}
student:
  path: student
  init: {layers: [0, 2]}
data: {train: train.tsv, eval: sklearn:digits}
distill:
  losses:
    - {kind: ce, weight: 0.1}
    - {kind: hinton, weight: 0.9, temperature: 4.0}
train: {epochs: 2, batch_size: 8}
output: runs/job
"""


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ProfileError) as info:
        load_profile(path, overrides)
    return str(info.value)


def test_valid_profile_resolves_paths_against_its_folder(write_profile):
    path = write_profile(BASE)
    profile = load_profile(path)
    assert profile.teacher.path == path.parent / "teacher"
    assert profile.output == path.parent / "runs" / "job"
    assert profile.data.train == str(path.parent / "train.tsv")
    assert profile.data.eval == "sklearn:digits"  # a scheme, not a path
    assert [loss.kind for loss in profile.loss_specs()] == ["ce", "hinton"]


def test_missing_file(tmp_path):
    message = error_of(tmp_path / "nope.yaml")
    assert "profile not found" in message and "nope.yaml" in message


def test_yaml_syntax_error_names_line(write_profile):
    path = write_profile(BASE.replace("train: {epochs: 2, batch_size: 8}", "train: {epochs: 2, batch_size: 8"))
    message = error_of(path)
    assert "YAML syntax error" in message and f"{path}:" in message


def test_not_a_mapping(write_profile):
    assert "a profile is a YAML mapping" in error_of(write_profile("- just\n- a list\n"))


def test_unknown_key_did_you_mean_with_line(write_profile):
    path = write_profile(BASE.replace("batch_size: 8", "batchsize: 8"))
    message = error_of(path)
    assert f"{path}:12: train.batchsize: unknown key 'batchsize' (did you mean 'batch_size'?)" in message


def test_unknown_key_in_a_loss(write_profile):
    message = error_of(write_profile(BASE.replace("temperature: 4.0", "temprature: 4.0")))
    assert "distill.losses.1.temprature" in message and "did you mean 'temperature'?" in message


def test_wrong_type(write_profile):
    message = error_of(write_profile(BASE.replace("epochs: 2", "epochs: many")))
    assert ":12: train.epochs:" in message and "'many'" in message


def test_out_of_range(write_profile):
    message = error_of(write_profile(BASE.replace("temperature: 4.0", "temperature: -1")))
    assert "distill.losses.1.temperature: Input should be greater than 0" in message and ":11:" in message


def test_unknown_loss_kind_did_you_mean(write_profile):
    message = error_of(write_profile(BASE.replace("kind: hinton", "kind: hintn")))
    assert "distill.losses.1: unknown loss kind 'hintn' (did you mean 'hinton'?)" in message


def test_missing_required_field(write_profile):
    message = error_of(write_profile(BASE.replace("output: runs/job\n", "")))
    assert "output: required field is missing" in message


def test_export_opset_moved_under_onnx_and_old_profiles_still_load(write_profile):
    with pytest.warns(ProfileDeprecation, match="export.onnx.opset"):
        profile = load_profile(write_profile(BASE + "export: {opset: 17}\n"))
    assert profile.export.onnx.opset == 17


def test_bad_enum(write_profile):
    message = error_of(write_profile(BASE.replace("task: sequence-classification", "task: regression")))
    assert "task:" in message and "'regression'" in message


def test_set_overrides_are_typed_by_the_schema(write_profile):
    path = write_profile(BASE)
    profile = load_profile(path, ["train.lr=3e-5", "distill.losses.1.temperature=2", "data.limit=10"])
    assert profile.train.lr == pytest.approx(3e-5)
    assert profile.distill.losses[1].temperature == 2.0
    assert profile.data.limit == 10


def test_set_layer_map_override(write_profile):
    profile = load_profile(write_profile(BASE), ["distill.losses.1={kind: hidden_cosine, layers: {2: 4}}"])
    assert profile.distill.losses[1].layers == {2: 4}


@pytest.mark.parametrize("override, expected", [
    ("train.lr", "expected KEY=VALUE"),
    ("distill.losses.7.weight=1", "not an index of a list of 2"),
    ("train.batch_size.x=1", "train.batch_size is a value, not a section"),
    ("train.lr=fast", "train.lr:"),
    ("train.nope=1", "unknown key 'nope'"),
])
def test_bad_overrides(write_profile, override, expected):
    assert expected in error_of(write_profile(BASE), [override])


def test_every_bundled_profile_validates():
    profiles = sorted(Path(__file__).parent.parent.joinpath("profiles").glob("*.yaml"))
    assert profiles, "profiles/ is empty"
    for path in profiles:
        profile = load_profile(path)
        assert profile.name and profile.stages()
