"""Adapters: one Outputs view over transformers and timm, computing only what is asked."""

from __future__ import annotations

import pickle

import pytest
import torch

from kdcli.errors import CheckpointError
from kdcli.models import load_model
from kdcli.models.hf import load_hf


@pytest.mark.parametrize("fixture, task", [("bert_cls", "sequence-classification"),
                                           ("roberta_cls", "sequence-classification"),
                                           ("distilbert_cls", "sequence-classification"),
                                           ("bert_mlm", "masked-lm"), ("bert_encoder", "embedding")])
def test_transformers_outputs(request, fixture, task):
    model = load_hf(request.getfixturevalue(fixture), task)
    batch = model.example_batch(2, 6)
    out = model.forward(batch, frozenset({"logits", "hidden_states", "attentions", "embedding"}))
    assert len(out.hidden_states) == model.depth + 1  # 0 = embedding output
    assert len(out.attentions) == model.depth and out.attentions[0].shape[-2:] == (6, 6)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones_like(out.attentions[0].sum(-1)))
    assert out.embedding.shape == (2, model.width(0))
    if task == "masked-lm":
        assert out.logits.shape == (2, 6, 64)
    elif task == "sequence-classification":
        assert out.logits.shape == (2, 2) and model.label_names == ["negative", "positive"]


def test_only_what_is_asked(bert_cls):
    model = load_hf(bert_cls, "sequence-classification")
    out = model.forward(model.example_batch(), frozenset({"logits"}))
    assert out.hidden_states == () and out.attentions == () and out.attention_scores == () and out.embedding is None


def test_attention_scores_match_stock_attention_and_softmax_to_probabilities(bert_cls):
    model = load_hf(bert_cls, "sequence-classification")
    batch = model.example_batch(2, 8)
    stock = model.forward(batch, frozenset({"logits", "attentions"}))
    scored = model.forward(batch, frozenset({"logits", "attention_scores"}))
    torch.testing.assert_close(scored.logits, stock.logits, atol=1e-6, rtol=0)
    assert len(scored.attention_scores) == model.depth
    for scores, probs in zip(scored.attention_scores, stock.attentions):
        torch.testing.assert_close(scores.softmax(-1), probs, atol=1e-6, rtol=0)
    assert scored.attention_scores[0][1, 0, 0, -1] < -1e2  # padded keys carry the additive mask


def test_mean_pooling_ignores_padding(bert_encoder):
    model = load_hf(bert_encoder, "embedding")
    ids = torch.tensor([[2, 7, 9, 3]])
    alone = model.forward({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, frozenset({"embedding"}))
    padded_ids = torch.tensor([[2, 7, 9, 3, 0, 0]])
    padded = model.forward({"input_ids": padded_ids, "attention_mask": (padded_ids != 0).long()},
                           frozenset({"embedding"}))
    torch.testing.assert_close(alone.embedding, padded.embedding, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture, arch, kwargs", [
    ("timm_resnet", "resnet18", {"num_classes": 10}),
])
def test_timm_outputs(request, fixture, arch, kwargs):
    model = load_model("timm", request.getfixturevalue(fixture), "image-classification", arch=arch, **kwargs)
    batch = {"pixel_values": torch.randn(2, 3, 32, 32)}
    out = model.forward(batch, frozenset({"logits", "features", "embedding"}))
    assert out.logits.shape == (2, 10) and len(out.features) == model.depth
    assert [f.shape[1] for f in out.features] == [model.width(i) for i in range(model.depth)]
    assert out.embedding.shape == (2, 512)
    torch.testing.assert_close(out.logits, model.module(batch["pixel_values"]))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_hf(tmp_path / "none", "embedding")


def test_folder_without_weights(tmp_path, bert_cls):
    (tmp_path / "config.json").write_text((bert_cls / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no weights file"):
        load_hf(tmp_path, "sequence-classification")


def test_truncated_safetensors(tmp_path, bert_cls):
    import shutil
    folder = tmp_path / "torn"
    shutil.copytree(bert_cls, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot load the weights"):
        load_hf(folder, "sequence-classification")


def test_encoder_checkpoint_is_not_a_classifier_teacher(bert_encoder):
    with pytest.raises(CheckpointError, match="lacks weights the sequence-classification model needs"):
        load_hf(bert_encoder, "sequence-classification")


def test_timm_wrong_arch(timm_resnet):
    with pytest.raises(CheckpointError, match="do not fit timm 'resnet34'"):
        load_model("timm", timm_resnet, "image-classification", arch="resnet34", num_classes=10)


def test_timm_unknown_arch(timm_resnet):
    with pytest.raises(CheckpointError, match="did you mean 'resnet18'"):
        load_model("timm", timm_resnet, "image-classification", arch="resnet18x", num_classes=10)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"weight": _Payload(str(marker))}, handle)
    with pytest.raises(CheckpointError, match="cannot read the weights"):
        load_model("timm", path, "image-classification", arch="resnet18", num_classes=10)
    assert not marker.exists()
