"""ONNX export, parity and int8 quantization on tiny random models (CPU)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_bert_config
from torch import nn

from kdcli.errors import KdcliError
from kdcli.onnx.export import export_onnx
from kdcli.onnx.parity import ParityReport, check_parity, default_atol, ort_session
from kdcli.onnx.quantize import quantize_int8

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TEXT_AXES = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
TEXT_SHAPES = [(1, 5), (1, 17), (3, 5), (3, 17)]


class TextWrapper(nn.Module):
    """(input_ids, attention_mask) -> one named field of a transformers output."""

    def __init__(self, model: nn.Module, field: str) -> None:
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, input_ids, attention_mask):
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), self.field)


class Shifted(nn.Module):
    """The wrapped module's output plus a constant: a deliberately non-matching model."""

    def __init__(self, inner: nn.Module, delta: float) -> None:
        super().__init__()
        self.inner = inner
        self.delta = delta

    def forward(self, *args):
        return self.inner(*args) + self.delta


class Truncated(nn.Module):
    """Drops the last position of the output: a shape mismatch against the ONNX file."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        return self.inner(*args)[:, :-1]


def bert_config(layers: int = 2) -> transformers.BertConfig:
    return tiny_bert_config(layers, vocab_size=100)


def text_batch(batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1000 + batch * 100 + seq)
    ids = torch.randint(0, 100, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if seq > 2:
        mask[-1, seq // 2 :] = 0  # right padding on the last row
    return {"input_ids": ids, "attention_mask": mask}


def onnx_dims(path: Path) -> dict[str, list]:
    m = onnx.load(str(path))
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in list(m.graph.input) + list(m.graph.output)
    }


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def bert(out_dir):
    torch.manual_seed(0)
    module = TextWrapper(transformers.BertModel(bert_config()), "last_hidden_state").eval()
    path = export_onnx(
        module,
        text_batch(2, 8),
        out_dir / "bert.onnx",
        output_names=["last_hidden_state"],
        dynamic_axes={**TEXT_AXES, "last_hidden_state": {0: "batch", 1: "seq"}},
    )
    return module, path


# ----------------------------------------------------------------------------- export


def test_bert_export_is_symbolic_and_matches(bert, out_dir):
    module, path = bert
    assert path == out_dir / "bert.onnx" and path.is_file()
    onnx.checker.check_model(str(path))
    dims = onnx_dims(path)
    assert dims["input_ids"] == ["batch", "seq"]
    assert dims["attention_mask"] == ["batch", "seq"]
    assert dims["last_hidden_state"] == ["batch", "seq", 32]
    # one self-contained file, no temp leftovers
    assert sorted(p.name for p in out_dir.iterdir() if p.name.startswith("bert")) == ["bert.onnx"]
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]

    batches = [text_batch(b, s) for b, s in TEXT_SHAPES]
    report = check_parity(module, path, batches, atol=default_atol("transformers"), output_names=["last_hidden_state"])
    assert report.ok, report.to_json()
    assert report.shapes == [[b, s] for b, s in TEXT_SHAPES]
    assert 0.0 <= report.outputs["last_hidden_state"]["max_abs_diff"] <= 1e-4


def test_parity_report_json_keys(bert):
    module, path = bert
    report = check_parity(module, path, [text_batch(1, 5), text_batch(3, 17)], 1e-4, ["last_hidden_state"])
    js = report.to_json()
    assert {"ok", "atol", "outputs", "shapes"} <= set(js)
    assert isinstance(js["ok"], bool) and js["atol"] == 1e-4
    assert set(js["outputs"]) == {"last_hidden_state"}
    assert {"max_abs_diff", "ok"} <= set(js["outputs"]["last_hidden_state"])
    assert isinstance(js["outputs"]["last_hidden_state"]["max_abs_diff"], float)
    assert js["shapes"] == [[1, 5], [3, 17]]
    json.loads(json.dumps(js, allow_nan=False))  # strict JSON


def test_parity_miss_is_reported_not_raised(bert):
    module, path = bert
    batches = [text_batch(2, 6)]
    shifted = check_parity(Shifted(module, 1e-2), path, batches, atol=1e-4, output_names=["last_hidden_state"])
    assert shifted.ok is False
    assert shifted.outputs["last_hidden_state"]["ok"] is False
    assert shifted.outputs["last_hidden_state"]["max_abs_diff"] == pytest.approx(1e-2, abs=1e-4)
    # same data, a tolerance that admits the shift
    assert check_parity(Shifted(module, 1e-2), path, batches, 0.02, ["last_hidden_state"]).ok
    # atol=0 with a perturbed model can never pass
    assert check_parity(Shifted(module, 1e-6), path, batches, 0.0, ["last_hidden_state"]).ok is False


def test_parity_shape_mismatch(bert):
    module, path = bert
    report = check_parity(Truncated(module), path, [text_batch(2, 6)], 1.0, ["last_hidden_state"])
    out = report.outputs["last_hidden_state"]
    assert report.ok is False and out["ok"] is False
    assert out["shape_mismatch"] is True and math.isinf(out["max_abs_diff"])
    # the fresh wrapper (training=True) must not flip the wrapped eval model to training
    assert not any(m.training for m in module.modules())
    js = report.to_json()
    assert js["outputs"]["last_hidden_state"]["max_abs_diff"] is None
    json.dumps(js, allow_nan=False)


def test_onnx_runs_in_fresh_process_at_new_shape(bert):
    """The file alone is enough: numpy + onnxruntime, no kdcli/torch, unseen shape."""
    _, path = bert
    script = textwrap.dedent(
        """
        import sys
        import numpy as np, onnxruntime as ort
        s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        b, t = 4, 23  # the export example was (2, 8)
        ids = np.random.default_rng(0).integers(0, 100, (b, t)).astype(np.int64)
        (out,) = s.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": np.ones((b, t), np.int64)})
        assert out.shape == (b, t, 32), out.shape
        assert np.isfinite(out).all()
        assert not any(m == "kdcli" or m.startswith(("kdcli.", "torch")) for m in sys.modules)
        print("OK", out.shape)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(path.parent),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OK (4, 23, 32)" in proc.stdout


def test_sequence_classification_logits(out_dir):
    torch.manual_seed(1)
    model = transformers.BertForSequenceClassification(bert_config())
    module = TextWrapper(model, "logits").eval()
    path = export_onnx(
        module, text_batch(2, 8), out_dir / "cls.onnx", output_names=["logits"], dynamic_axes=TEXT_AXES
    )
    assert onnx_dims(path)["logits"] == ["batch", 2]
    report = check_parity(module, path, [text_batch(b, s) for b, s in TEXT_SHAPES], 1e-4, ["logits"])
    assert report.ok, report.to_json()


def test_distilbert(out_dir):
    torch.manual_seed(2)
    cfg = transformers.DistilBertConfig(
        dim=32, n_layers=2, n_heads=2, hidden_dim=37, vocab_size=100, max_position_embeddings=64
    )
    module = TextWrapper(transformers.DistilBertModel(cfg), "last_hidden_state").eval()
    path = export_onnx(
        module, text_batch(2, 8), out_dir / "distil.onnx", output_names=["last_hidden_state"], dynamic_axes=TEXT_AXES
    )
    assert onnx_dims(path)["input_ids"] == ["batch", "seq"]
    report = check_parity(module, path, [text_batch(b, s) for b, s in TEXT_SHAPES], 1e-4, ["last_hidden_state"])
    assert report.ok, report.to_json()


def _timm_arch() -> str:
    for name in ("test_resnet", "resnet10t", "resnet18"):
        if timm.is_model(name):
            return name
    pytest.skip("no small timm resnet available")


def test_timm_image_model(out_dir):
    torch.manual_seed(3)
    module = timm.create_model(_timm_arch(), num_classes=10, pretrained=False).eval()
    axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"}}
    path = export_onnx(
        module,
        {"pixel_values": torch.randn(2, 3, 32, 32)},
        out_dir / "timm.onnx",
        output_names=["logits"],
        dynamic_axes=axes,
    )
    dims = onnx_dims(path)
    assert dims["pixel_values"] == ["batch", 3, "height", "width"]
    assert dims["logits"] == ["batch", 10]
    g = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(b, 3, s, s, generator=g)} for b in (1, 3) for s in (32, 48)]
    report = check_parity(module, path, batches, default_atol("timm"), ["logits"])
    assert report.ok, report.to_json()
    assert report.shapes == [[1, 3, 32, 32], [1, 3, 48, 48], [3, 3, 32, 32], [3, 3, 48, 48]]


def test_size_one_example_still_exports_dynamic(out_dir):
    """batch=1, seq=1 examples would specialise (and break SDPA tracing); they are tiled."""
    torch.manual_seed(4)
    module = TextWrapper(transformers.BertModel(bert_config(layers=1)), "last_hidden_state").eval()
    path = export_onnx(
        module, text_batch(1, 1), out_dir / "one.onnx", output_names=["last_hidden_state"], dynamic_axes=TEXT_AXES
    )
    assert onnx_dims(path)["input_ids"] == ["batch", "seq"]
    assert check_parity(module, path, [text_batch(3, 9), text_batch(1, 1)], 1e-4, ["last_hidden_state"]).ok


def test_export_replaces_existing_file(out_dir):
    target = out_dir / "replace.onnx"
    target.write_bytes(b"old junk")
    module = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    export_onnx(module, {"x": torch.randn(2, 4)}, target, output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    onnx.checker.check_model(str(target))
    assert onnx_dims(target) == {"x": ["batch", 4], "y": ["batch", 3]}
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".replace")]
    assert module.training is False


def test_export_restores_training_flag(out_dir):
    module = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5)).train()
    export_onnx(module, {"x": torch.randn(2, 4)}, out_dir / "drop.onnx", output_names=["y"], dynamic_axes={"x": {0: "b"}})
    assert module.training is True
    rep = check_parity(module, out_dir / "drop.onnx", [{"x": torch.randn(5, 4)}], 1e-5, ["y"])
    assert rep.ok and module.training is True  # parity ran in eval mode (no dropout)


def test_a_broken_call_is_a_bug_not_bad_input(tmp_path):
    """Arguments come from kdcli itself, never from the user: a broken contract is a ValueError (exit 1, bug hint)."""
    module = nn.Linear(4, 3)
    ex = {"x": torch.randn(2, 4)}
    with pytest.raises(ValueError, match="neither inputs"):
        export_onnx(module, ex, tmp_path / "a.onnx", output_names=["y"], dynamic_axes={"nope": {0: "b"}})
    with pytest.raises(ValueError, match="out of range"):
        export_onnx(module, ex, tmp_path / "a.onnx", output_names=["y"], dynamic_axes={"x": {5: "b"}})
    with pytest.raises(ValueError, match="at least one example"):
        export_onnx(module, {}, tmp_path / "a.onnx", output_names=["y"], dynamic_axes={})
    with pytest.raises(ValueError, match="not found"):
        ort_session(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(KdcliError, match="onnxruntime cannot load"):
        ort_session(tmp_path / "bad.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_unexportable_model_raises_kdcli_error(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
                return x * 2
            return x

    with pytest.raises(KdcliError):
        export_onnx(DataDependent(), {"x": torch.randn(2, 4)}, tmp_path / "dd.onnx", output_names=["y"], dynamic_axes={"x": {0: "b"}})
    assert list(tmp_path.iterdir()) == []


def test_default_atol():
    assert default_atol("transformers") == 1e-4
    assert default_atol("timm") == 1e-3
    with pytest.raises(ValueError, match="unknown model family"):
        default_atol("sklearn")


def test_quantize_int8(bert, out_dir):
    module, path = bert
    q = quantize_int8(path, out_dir / "bert.int8.onnx")
    assert q.is_file()
    onnx.checker.check_model(str(q))
    model = onnx.load(str(q))
    assert any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul") for n in model.graph.node)
    sess = ort_session(q, threads=1)
    batch = text_batch(3, 17)
    (out,) = sess.run(["last_hidden_state"], {k: v.numpy() for k, v in batch.items()})
    with torch.inference_mode():
        ref = module(*batch.values()).numpy()
    assert out.shape == ref.shape
    diff = float(np.abs(out - ref).max())
    assert 0.0 < diff < 0.1 * float(np.abs(ref).max()), diff  # quantized: close, not exact
    # fp32 parity helper also works on the int8 file with a loose tolerance
    assert check_parity(module, q, [batch], 0.5, ["last_hidden_state"]).ok
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".bert.int8")]


def test_parity_report_dataclass_roundtrip():
    r = ParityReport(ok=True, atol=1e-3, outputs={"logits": {"max_abs_diff": 1e-5, "ok": True}}, shapes=[[1, 3]])
    js = r.to_json()
    assert js["ok"] is True and js["outputs"] == {"logits": {"max_abs_diff": 1e-5, "ok": True}}
    assert js["shapes"] == [[1, 3]]


def test_fallback_to_dim_auto_renames_axes(tmp_path, monkeypatch):
    """If the named (Dim.DYNAMIC) export fails, Dim.AUTO is tried and its s0/s1 symbols renamed."""
    import kdcli.onnx.export as ex

    real = ex._torch_export
    calls = []

    def flaky(module, args, input_names, output_names, dynamic_shapes, opset):
        calls.append(dynamic_shapes)
        if len(calls) == 1:
            raise RuntimeError("Constraints violated (simulated)")
        return real(module, args, input_names, output_names, dynamic_shapes, opset)

    monkeypatch.setattr(ex, "_torch_export", flaky)

    class Two(nn.Module):
        def forward(self, a, b):
            return a @ b.transpose(-1, -2)

    path = export_onnx(
        Two(),
        {"a": torch.randn(2, 5, 4), "b": torch.randn(2, 7, 4)},
        tmp_path / "two.onnx",
        output_names=["scores"],
        dynamic_axes={"a": {0: "batch", 1: "rows"}, "b": {0: "batch", 1: "cols"}},
    )
    assert len(calls) == 2 and calls[0][0] == {0: "batch", 1: "rows"}
    assert calls[1][0] == {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}
    dims = onnx_dims(path)
    assert dims["a"] == ["batch", "rows", 4] and dims["b"] == ["batch", "cols", 4]
    assert dims["scores"] == ["batch", "rows", "cols"]


class _ViewToConstant(nn.Module):
    def forward(self, x):
        return x.view(8)  # only valid when batch == 2


class _BranchOnSize(nn.Module):
    def forward(self, x):
        if x.shape[0] == 2:  # torch.export keeps the ONNX dim symbolic but bakes in this branch
            return x * 2
        return x


@pytest.mark.parametrize("model", [_ViewToConstant(), _BranchOnSize()], ids=["view", "branch"])
def test_axis_pinned_to_example_size_is_an_error(model, tmp_path):
    with pytest.raises(KdcliError, match=r"pinned dynamic axes.*x\[0\]=2"):
        export_onnx(model, {"x": torch.randn(2, 4)}, tmp_path / "f.onnx", output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    assert list(tmp_path.iterdir()) == []


def test_an_exported_file_finds_its_target_by_suffix():
    from kdcli.onnx.target import TARGETS, target_for
    assert target_for(Path("export/model.onnx")) is TARGETS["onnx"]
    assert target_for(Path("export/model.int8.onnx")) is TARGETS["onnx"]
    assert target_for(Path("student/model.safetensors")) is None
