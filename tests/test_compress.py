"""kdcli compress: the choice on injected latencies, a whole tiny run through the CLI, resume and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.search import Candidate, Goal, closest, front, meets, ranked, shapes

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
    assert len(candidates) >= 6 and all(c["speedup"].keys() == {"1", "4"} for c in candidates.values())
    biggest = max(candidates.values(), key=lambda c: c["params"])
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
