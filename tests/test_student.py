"""init-student: kept layers copied bit for bit; the token-type fold is exact; outputs load without kdcli."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from kdcli.commands.init_student import init_student
from kdcli.errors import BadInput
from kdcli.models.layers import select_layers
from kdcli.profile import load_profile


def profile_for(write_profile, teacher, task="sequence-classification", source="transformers", **init):
    spec = {"name": "t", "task": task, "teacher": {"source": source, "path": str(teacher)},
            "student": {"path": "student", "init": init}, "output": "runs"}
    return load_profile(write_profile(spec))


@pytest.mark.parametrize("spec, depth, expected", [
    ("every-other", 6, [0, 2, 4]), ("distilbert", 12, [0, 2, 4, 7, 9, 11]), ("first:2", 6, [0, 1]),
    ("last:2", 6, [4, 5]), ("uniform:3", 6, [0, 2, 5]), ("uniform:1", 6, [5]), ([1, 3], 4, [1, 3]),
])
def test_layer_strategies(spec, depth, expected):
    assert select_layers(spec, depth) == expected


@pytest.mark.parametrize("spec, message", [
    ([0, 9], "layer 9 is out of range: the teacher has 4 layers"),
    ("distilbert", "this teacher has 4"), ("uniform:7", "asks for 7 layers; the teacher has 4"),
    ("sideways:2", "unknown strategy"), ([2, 1], "must be increasing"),
])
def test_bad_layer_selection(spec, message):
    with pytest.raises(BadInput, match=message):
        select_layers(spec, 4)


def test_kept_layers_are_copied_tensor_by_tensor(write_profile, bert_cls):
    report = init_student(profile_for(write_profile, bert_cls, layers=[1, 3]))
    teacher = AutoModelForSequenceClassification.from_pretrained(bert_cls).state_dict()
    student = AutoModelForSequenceClassification.from_pretrained(report.output_dir).state_dict()
    assert report.layer_map == [1, 3] and report.student["layers"] == 2 and report.teacher["layers"] == 4
    for key, value in student.items():
        source = key.replace("encoder.layer.0.", "encoder.layer.1.").replace("encoder.layer.1.", "encoder.layer.3.") \
            if "encoder.layer.1." in key else key.replace("encoder.layer.0.", "encoder.layer.1.")
        assert torch.equal(value, teacher[source]), key
    assert report.student["params"] < report.teacher["params"]


@pytest.mark.parametrize("architecture", ["same", "distilbert"])
def test_fold_keeps_hidden_states_when_every_layer_is_kept(write_profile, bert_encoder, architecture):
    report = init_student(profile_for(write_profile, bert_encoder, task="embedding", layers=[0, 1, 2, 3],
                                      drop=["token_type_embeddings"] + (["pooler"] if architecture == "distilbert"
                                                                        else []), architecture=architecture))
    teacher = AutoModel.from_pretrained(bert_encoder).eval()
    student = AutoModel.from_pretrained(report.output_dir).eval()  # transformers alone, no kdcli
    ids = torch.tensor([[2, 7, 9, 11, 3, 0], [2, 14, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        t = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        s = student(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(s) == len(t) == 5
    for a, b in zip(s, t):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert teacher.embeddings.token_type_embeddings.weight[0].abs().sum() > 0  # the fold did real work


def test_distilbert_student_from_bert_classifier(write_profile, bert_cls):
    report = init_student(profile_for(write_profile, bert_cls, layers="every-other", architecture="distilbert",
                                      drop=["token_type_embeddings", "pooler"]))
    model = AutoModelForSequenceClassification.from_pretrained(report.output_dir)
    assert type(model).__name__ == "DistilBertForSequenceClassification"
    assert model.config.n_layers == 2 and model.config.id2label[1] == "positive"
    files = {p.name for p in Path(report.output_dir).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert AutoTokenizer.from_pretrained(report.output_dir)("a good film")["input_ids"][0] == 2


def test_roberta_keeps_its_architecture(write_profile, roberta_cls):
    report = init_student(profile_for(write_profile, roberta_cls, layers="last:2", drop=["token_type_embeddings"]))
    model = AutoModelForSequenceClassification.from_pretrained(report.output_dir)
    assert type(model).__name__ == "RobertaForSequenceClassification" and model.config.num_hidden_layers == 2


def test_same_architecture_keeps_its_pooler(write_profile, bert_encoder):
    with pytest.raises(BadInput, match="keeps its pooler"):
        init_student(profile_for(write_profile, bert_encoder, task="embedding", drop=["pooler"]))


def test_distilbert_blocks_found_and_absent_token_types_left_alone(write_profile, distilbert_cls):
    report = init_student(profile_for(write_profile, distilbert_cls, layers=[1], drop=["token_type_embeddings"]))
    teacher = AutoModelForSequenceClassification.from_pretrained(distilbert_cls).state_dict()
    student = AutoModelForSequenceClassification.from_pretrained(report.output_dir)
    assert student.config.n_layers == 1 and report.layer_map == [1]
    for key, value in student.state_dict().items():
        assert torch.equal(value, teacher[key.replace("layer.0.", "layer.1.")]), key


def test_timm_vit_blocks_subset_loads_with_timm_alone(write_profile, timm_vit):
    import timm
    spec = {"name": "v", "task": "image-classification",
            "teacher": {"source": "timm", "path": str(timm_vit), "arch": "vit_tiny_patch16_224"},
            "student": {"path": "student", "init": {"layers": [0, 3]}}, "output": "runs"}
    # the teacher was built with non-default arguments: give them through a saved folder instead
    from kdcli.models.timm import TimmAdapter, create
    args = {"num_classes": 10, "img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 48, "num_heads": 2}
    model = create("vit_tiny_patch16_224", **args)
    model.load_state_dict(torch.load(timm_vit, weights_only=True))
    folder = timm_vit.parent / "vit-folder"
    TimmAdapter(model, "vit_tiny_patch16_224", args).save(folder)
    spec["teacher"] = {"source": "timm", "path": str(folder)}
    report = init_student(load_profile(write_profile(spec)))
    student = timm.create_model(f"local-dir:{report.output_dir}", pretrained=True)
    assert len(student.blocks) == 2
    torch.testing.assert_close(student.blocks[1].attn.qkv.weight, model.blocks[3].attn.qkv.weight, rtol=0, atol=0)
    assert json.loads((Path(report.output_dir) / "config.json").read_text())["architecture"] \
        == "vit_tiny_patch16_224"


def test_timm_named_smaller_arch_copies_matching_tensors(write_profile, timm_resnet):
    import timm
    spec = {"name": "r", "task": "image-classification",
            "teacher": {"source": "timm", "path": str(timm_resnet), "arch": "resnet18", "num_classes": 10},
            "student": {"path": "student", "init": {"architecture": "resnet10t"}}, "output": "runs"}
    report = init_student(load_profile(write_profile(spec)))
    student = timm.create_model(f"local-dir:{report.output_dir}", pretrained=True)
    assert student.num_classes == 10 and report.copied_tensors > 0
    assert report.student["params"] < report.teacher["params"]
