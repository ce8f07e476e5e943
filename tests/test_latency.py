"""Latency measurement and report rendering (CPU, tiny models, short timings)."""

from __future__ import annotations

import json
import time

import pytest
import torch
from conftest import tiny_bert_config
from torch import nn

from kdcli.onnx.export import export_onnx
from kdcli.onnx.latency import latency_report, latency_rows, measure, speedup
from kdcli.onnx.report import plot_png, render_markdown

transformers = pytest.importorskip("transformers")

FAST = {"warmup": 1, "min_runs": 3, "min_seconds": 0.01, "max_runs": 50}


class Passthrough(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        return self.inner(*args)


class TextWrapper(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def tiny_bert(layers: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return TextWrapper(transformers.BertModel(tiny_bert_config(layers, vocab_size=100))).eval()


SEQ = 16


def make_inputs(batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    return {
        "input_ids": torch.randint(0, 100, (batch, SEQ), generator=g),
        "attention_mask": torch.ones(batch, SEQ, dtype=torch.long),
    }


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("latency")
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    models = {}
    for name, layers in (("teacher", 2), ("student", 1)):
        module = tiny_bert(layers, seed=layers)
        path = export_onnx(module, make_inputs(2), d / f"{name}.onnx", output_names=["last_hidden_state"], dynamic_axes=axes)
        models[name] = (module, path)
    return models


@pytest.fixture(scope="module")
def rows(pair):
    return latency_rows(pair, make_inputs, [1, 4], "seq_len", SEQ, threads=1, **FAST)


# ----------------------------------------------------------------------------- measure


def test_measure_stats_are_ordered():
    calls = []
    stats = measure(lambda: calls.append(sum(range(2000))), warmup=2, min_runs=7, min_seconds=0.0)
    assert stats["runs"] >= 7
    assert len(calls) == stats["runs"] + 2  # warm-up calls are not timed
    assert 0 <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    assert stats["min_ms"] <= stats["mean_ms"] <= stats["max_ms"]
    assert {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "runs"} <= set(stats)


def test_measure_runs_until_min_seconds_and_respects_max_runs():
    stats = measure(lambda: time.sleep(0.002), warmup=0, min_runs=1, min_seconds=0.05, max_runs=1000)
    assert stats["runs"] >= 2 and stats["total_s"] >= 0.05
    assert stats["p50_ms"] >= 1.5
    capped = measure(lambda: time.sleep(0.001), warmup=0, min_runs=2, min_seconds=10.0, max_runs=5)
    assert capped["runs"] == 5


def test_measure_rejects_bad_settings():
    with pytest.raises(ValueError):
        measure(lambda: None, min_runs=0)
    with pytest.raises(ValueError):
        measure(lambda: None, min_runs=10, max_runs=5)


# ----------------------------------------------------------------------------- rows


def test_latency_rows_shape(rows):
    assert len(rows) == 2 * 2 * 2  # model x runtime x batch
    keys = {"model", "runtime", "batch_size", "seq_len", "p50_ms", "p90_ms", "p99_ms", "samples_per_s"}
    for r in rows:
        assert keys <= set(r)
        assert "image_size" not in r
        assert r["model"] in ("teacher", "student")
        assert r["runtime"] in ("pytorch", "onnxruntime")
        assert r["seq_len"] == SEQ
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["samples_per_s"] == pytest.approx(r["batch_size"] / (r["p50_ms"] / 1e3), rel=1e-2)
    combos = {(r["model"], r["runtime"], r["batch_size"]) for r in rows}
    assert len(combos) == 8


def test_latency_rows_restores_torch_threads_and_modes(pair):
    before = torch.get_num_threads()
    teacher, _ = pair["teacher"]
    wrapped = Passthrough(teacher)  # training=True wrapper around an eval model
    models = {"teacher": (wrapped, None), "student": (pair["student"][0], None)}
    out = latency_rows(models, make_inputs, [2], "seq_len", SEQ, threads=1, **FAST)
    assert torch.get_num_threads() == before
    assert {r["runtime"] for r in out} == {"pytorch"}  # no ONNX path, no ORT rows
    assert wrapped.training is True and not any(m.training for m in teacher.modules())


def test_latency_rows_bad_shape_key(pair):
    with pytest.raises(ValueError):
        latency_rows(pair, make_inputs, [1], "height", 32, threads=1, **FAST)


def test_speedup_and_report(rows):
    sp = speedup(rows)
    assert set(sp) == {"onnxruntime", "pytorch"}
    for runtime in sp:
        assert set(sp[runtime]) == {"1", "4"}
        for x in sp[runtime].values():
            assert x > 0
    p50 = {(r["model"], r["runtime"], r["batch_size"]): r["p50_ms"] for r in rows}
    assert sp["pytorch"]["4"] == pytest.approx(p50[("teacher", "pytorch", 4)] / p50[("student", "pytorch", 4)], rel=1e-2)

    sizes = {"teacher_onnx": 400_000, "student_onnx": 250_000}
    report = latency_report(rows, threads=1, sizes=sizes)
    assert set(report) == {"threads", "rows", "speedup", "size_bytes"}
    assert report["threads"] == 1 and report["size_bytes"] == sizes
    assert report["speedup"] == sp
    json.loads(json.dumps(report, allow_nan=False))


def test_speedup_handcrafted():
    rows = [
        {"model": "teacher", "runtime": "pytorch", "batch_size": 8, "p50_ms": 10.0},
        {"model": "student", "runtime": "pytorch", "batch_size": 8, "p50_ms": 4.0},
        {"model": "teacher", "runtime": "onnxruntime", "batch_size": 8, "p50_ms": 6.0},
    ]
    assert speedup(rows) == {"onnxruntime": {}, "pytorch": {"8": 2.5}}


def test_render_markdown(rows):
    report = latency_report(rows, threads=1, sizes={"teacher_onnx": 1_234_567})
    parity = {"ok": True, "atol": 1e-4, "outputs": {"last_hidden_state": {"max_abs_diff": 3e-7, "ok": True}}, "shapes": [[1, 5], [3, 17]]}
    md = render_markdown(report, parity)
    assert "| model | runtime | batch | seq_len | p50 ms | p90 ms | p99 ms | samples/s |" in md
    table = [line for line in md.splitlines() if line.startswith("| teacher") or line.startswith("| student")]
    assert len(table) == len(rows)
    assert "onnxruntime, batch 4:" in md and "pytorch, batch 1:" in md
    assert "Parity: PASS" in md and "1e-04" in md
    assert "teacher_onnx" in md
    failed = dict(parity, ok=False, outputs={"last_hidden_state": {"max_abs_diff": None, "ok": False}})
    assert "Parity: FAIL" in render_markdown(report, failed)
    assert "Parity: not checked" in render_markdown(report, None)


def test_render_markdown_image_rows():
    rows = [
        {"model": m, "runtime": "pytorch", "batch_size": 1, "image_size": 224, "p50_ms": p, "p90_ms": p, "p99_ms": p, "samples_per_s": 1e3 / p}
        for m, p in (("teacher", 8.0), ("student", 2.0))
    ]
    md = render_markdown(latency_report(rows, 4, {}), None)
    assert "| image_size |" in md and "pytorch, batch 1: 4.00x" in md


def test_plot_png(rows, tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_png(latency_report(rows, 1, {}), tmp_path / "sub" / "latency.png")
    assert out == tmp_path / "sub" / "latency.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["latency.png"]
