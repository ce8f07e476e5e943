"""kdcli compress: the choice on injected latencies, a whole tiny run through the CLI, resume and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.search import Candidate, Goal, closest, front, meets, ranked, shapes, with_int8

runner = CliRunner()


def _candidate(name: str, params: int, speedup_1: float, speedup_32: float) -> Candidate:
    return Candidate(name, {}, params=params, speedup={1: speedup_1, 32: speedup_32},
                     p50_ms={1: 10 / speedup_1, 32: 100 / speedup_32})


CANDIDATES = [_candidate("big-slow", 900, 1.5, 1.6), _candidate("big-fast", 600, 3.2, 3.1),
              _candidate("small-fast", 300, 5.0, 6.0), _candidate("fast-at-1-only", 700, 3.5, 2.0)]


def test_the_biggest_candidate_that_meets_the_goal_is_tried_first():
    goal = Goal(speedup=3.0, batch_sizes=(1, 32))
    assert [c.name for c in ranked(CANDIDATES, goal)] == ["big-fast", "small-fast"]  # never small-fast first
    assert not meets(CANDIDATES[3], goal)  # the goal holds at every batch size
    assert [c.name for c in ranked(CANDIDATES, Goal(latency_ms=2.5, batch_sizes=(1,)))] == ["small-fast"]


def test_capacity_ranks_before_parameters_and_fp32_before_its_int8_twin():
    # a hidden-pruned student has fewer parameters (its embeddings shrink) but more layers than a cut one
    wide = Candidate("heads-half", {}, params=8_000_000, capacity=2_600_000, speedup={1: 3.4}, p50_ms={1: 1.0})
    shallow = Candidate("depth-1", {}, params=13_000_000, capacity=1_800_000, speedup={1: 7.0}, p50_ms={1: 0.5})
    twins = with_int8([wide, shallow])
    assert [c.name for c in twins] == ["heads-half", "heads-half+int8", "depth-1", "depth-1+int8"]
    assert twins[1].shape == "heads-half" and twins[1].int8 and twins[1].init is wide.init
    for twin in (twins[1], twins[3]):  # measured as compress measures them: the same student, faster
        source = wide if twin.shape == "heads-half" else shallow
        twin.params, twin.capacity = source.params, source.capacity
        twin.speedup, twin.p50_ms = {1: source.speedup[1] * 2}, {1: source.p50_ms[1] / 2}
    assert [c.name for c in ranked(twins, Goal(speedup=3.0))] == ["heads-half", "heads-half+int8", "depth-1",
                                                                   "depth-1+int8"]
    assert [c.name for c in ranked(twins, Goal(speedup=10.0))] == ["depth-1+int8"]


def test_a_shipped_file_that_misses_the_goal_when_timed_again_is_said():
    from kdcli.commands.compress import CompressReport, _timed_again
    chosen = Candidate("depth-5+int8", {}, shape="depth-5", int8=True, params=10, speedup={1: 2.19, 32: 2.36},
                       p50_ms={1: 2.0, 32: 38.0})

    def rows(student_b1: float) -> list[dict]:
        return [{"model": m, "runtime": "onnxruntime", "batch_size": b, "p50_ms": ms} for m, b, ms in
                (("teacher", 1, 4.4), ("teacher", 32, 86.0), ("student", 1, 3.6), ("student", 32, 74.0),
                 ("student-int8", 1, student_b1), ("student-int8", 32, 40.0))]
    report = CompressReport(goal=Goal(speedup=2.0, batch_sizes=(1, 32)), chosen=chosen.name, met=True)
    _timed_again(report, chosen, rows(2.0))
    assert report.shipped_speedup == {1: 2.2, 32: 2.15} and report.warning is None
    _timed_again(report, chosen, rows(2.3))
    assert report.shipped_speedup[1] == round(4.4 / 2.3, 3)
    assert "misses the speed goal (batch 1: 1.91× (search 2.19×), batch 32: 2.15× (search 2.36×))" in report.warning


def test_a_stored_candidate_from_before_int8_twins_loads():
    old = {"name": "depth-2", "init": {"layers": "uniform:2"}, "params": 10, "p50_ms": {"1": 2.0},
           "speedup": {"1": 1.5}}
    loaded = Candidate.from_json(old)
    assert loaded.shape == "depth-2" and not loaded.int8 and loaded.size == 10 and loaded.p50_ms == {1: 2.0}


def test_an_unmeetable_goal_names_the_closest_candidate():
    goal = Goal(speedup=10.0, batch_sizes=(1, 32))
    assert ranked(CANDIDATES, goal) == [] and closest(CANDIDATES, goal).name == "small-fast"


def test_the_front_drops_candidates_both_smaller_and_slower():
    slow_small = _candidate("slow-small", 200, 1.2, 1.2)
    assert "slow-small" not in [c.name for c in front([*CANDIDATES, slow_small], 1)]
    assert [c.name for c in front(CANDIDATES, 1)] == ["big-slow", "fast-at-1-only", "small-fast"]


def test_candidate_shapes_cover_depth_width_and_mixed():
    found = {c.name: c.init for c in shapes(6, {"heads": 12, "kv_heads": 12, "head_dim": 32, "ffn": 1536,
                                                "hidden": 384})}
    assert [f"depth-{k}" for k in (5, 4, 3, 2, 1)] == [n for n in found if n.startswith("depth-") and "+" not in n]
    assert found["ffn-half"]["prune"] == {"ffn": 768}
    assert found["heads-half+ffn-half"]["prune"] == {"heads": 6, "ffn": 768, "hidden": 192}
    assert found["depth-4+ffn-half"] == {"layers": "uniform:4", "prune": {"ffn": 768}}
    gqa = {c.name: c.init for c in shapes(4, {"heads": 4, "kv_heads": 2, "head_dim": 8, "ffn": 48, "hidden": 32},
                                          heads_with_hidden=False)}
    assert gqa["heads-half+ffn-half"]["prune"] == {"heads": 2, "ffn": 24}


def test_compress_end_to_end_then_resume_with_a_goal_it_cannot_meet(write_profile, bert_cls, sst_tiny, one_thread):
    spec = {"name": "c", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "student"}, "data": {"train": str(sst_tiny), "eval": str(sst_tiny)},
            "distill": {"losses": [{"kind": "hinton"}]}, "train": {"max_steps": 3, "batch_size": 8},
            "output": "out"}
    profile = str(write_profile(spec))
    result = runner.invoke(app, ["compress", profile, "--speedup", "0.01", "--batch", "1", "--batch", "4",
                                 "--max-drop", "1", "--latency-seconds", "0", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    candidates = {c["name"]: c for c in report["candidates"]}
    assert len(candidates) >= 12 and all(c["speedup"].keys() == {"1", "4"} for c in candidates.values())
    for name, fp32 in candidates.items():  # each shape in fp32 and int8: the same student, a quarter the file
        if not fp32["int8"]:
            twin = candidates[f"{name}+int8"]
            assert twin["shape"] == name and twin["capacity"] == fp32["capacity"] < fp32["params"]
            assert twin["size_mb"] < fp32["size_mb"] / 2
    biggest = max(candidates.values(), key=lambda c: (c["capacity"], not c["int8"]))
    assert report["met"] and report["chosen"] == biggest["name"] and biggest["trained"] and biggest["passed"]
    out = Path(report["output_dir"])
    assert {"model.onnx", "compress.json", "report.md", "config.json"} <= {p.name for p in out.iterdir()}
    assert "Goal met" in (out / "report.md").read_text()
    session = ort.InferenceSession(str(out / "model.onnx"))
    assert {i.name for i in session.get_inputs()} >= {"input_ids", "attention_mask"}

    again = runner.invoke(app, ["compress", profile, "--speedup", "0.01", "--json"])
    assert again.exit_code == 2 and "--resume" in again.output  # an earlier run is never silently redone

    resumed = runner.invoke(app, ["compress", profile, "--speedup", "1000", "--batch", "1", "--batch", "4",
                                  "--resume", "--json", "--quiet", "--latency-seconds", "0"])
    assert resumed.exit_code == 1, resumed.output
    after = json.loads(resumed.stdout)
    closest_name = min(after["candidates"], key=lambda c: (1 - min(c["speedup"].values()) / 1000, -c["params"]))["name"]
    assert after["met"] is False and after["chosen"] == closest_name
    assert "goal not met" in resumed.output and f"closest: {closest_name}" in resumed.output
    assert json.loads((out / "compress.json").read_text())["met"] is True  # the shipped winner is not replaced


def test_compress_without_a_speed_goal_exits_2(write_profile, bert_cls):
    spec = {"name": "c", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "student"}, "output": "out"}
    result = runner.invoke(app, ["compress", str(write_profile(spec))])
    assert result.exit_code == 2 and "--speedup" in result.output


def test_an_embedding_teacher_gets_no_candidate_that_changes_its_width(write_profile, bert_encoder):
    from kdcli.commands.compress import _candidates
    from kdcli.profile import load_profile
    spec = {"name": "e", "task": "embedding", "teacher": {"path": str(bert_encoder)},
            "student": {"path": "student"}, "output": "out"}
    found = _candidates(load_profile(write_profile(spec)))
    assert found and all("hidden" not in c.init.get("prune", {}) for c in found)
    assert {"depth-3", "ffn-half", "depth-3+ffn-half"} <= {c.name for c in found}


def test_sigterm_while_measuring_then_resume_keeps_what_was_measured(write_profile, bert_cls, sst_tiny):
    """A CI runner cancels compress mid-search: exit 143 with the resume command; --resume measures only the
    candidates not yet measured, then finishes."""
    spec = {"name": "c", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "student"}, "data": {"train": str(sst_tiny), "eval": str(sst_tiny)},
            "distill": {"losses": [{"kind": "hinton"}]}, "train": {"max_steps": 2, "batch_size": 8},
            "output": "out"}
    profile = write_profile(spec)
    state = profile.parent / "out" / "compress" / "compress.json"
    goal = ["--speedup", "0.01", "--batch", "2", "--max-drop", "1", "--latency-seconds", "0"]
    process = subprocess.Popen([sys.executable, "-m", "kdcli", "compress", str(profile), *goal],
                               env={**os.environ, "OMP_NUM_THREADS": "1", "KDCLI_DEBUG": "0"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    begun = time.monotonic()
    while not state.is_file():
        assert process.poll() is None and time.monotonic() - begun < 180, process.communicate()
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "stopped: compress: SIGTERM" in stderr and "Traceback" not in stderr
    assert f"resume with: kdcli compress {profile} --speedup 0.01 --max-drop 1 --batch 2 --resume" in stderr
    before = {c["name"]: c for c in json.loads(state.read_text())["candidates"] if c["params"]}
    if len(before) == len(json.loads(state.read_text())["candidates"]):
        pytest.skip("the search finished before the signal landed")  # a very fast machine

    resumed = runner.invoke(app, ["compress", str(profile), *goal, "--resume", "--json", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    after = {c["name"]: c for c in json.loads(resumed.stdout)["candidates"]}
    assert all(after[name]["p50_ms"] == c["p50_ms"] for name, c in before.items())  # not measured again
    assert all(c["params"] for c in after.values()) and json.loads(resumed.stdout)["met"]


def test_the_teacher_cache_is_shared_only_when_no_layer_map_shapes_it(write_profile, bert_cls, tmp_path):
    from kdcli.commands.compress import _link_files, _student_free_cache
    from kdcli.profile import load_profile

    def profile(losses: list[dict]) -> object:
        spec = {"name": "c", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
                "student": {"path": "student"}, "distill": {"losses": losses}, "train": {"cache_teacher": True},
                "output": "out"}
        return load_profile(write_profile(spec))
    assert _student_free_cache(profile([{"kind": "hinton"}, {"kind": "ce"}]))
    assert not _student_free_cache(profile([{"kind": "hinton"}, {"kind": "hidden_cosine"}]))

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "teacher-0.pt").write_bytes(b"cached")
    _link_files(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b" / "teacher-0.pt").read_bytes() == b"cached"
    assert (tmp_path / "b" / "teacher-0.pt").stat().st_ino == (tmp_path / "a" / "teacher-0.pt").stat().st_ino
