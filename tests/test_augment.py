"""Consistent augmentation (train.augment): teacher and student see the same augmented view, proven by
forward hooks on both models; Noisy Student's noise stays student-only."""

from __future__ import annotations

import pytest
import torch

import kdcli.commands.preflight as preflight_module  # where distill loads its models
from kdcli.commands.distill import distill
from kdcli.commands.init_student import init_student
from kdcli.errors import BadInput
from kdcli.profile import load_profile


def _record_inputs(monkeypatch, layer: str | None) -> dict[str, list[torch.Tensor]]:
    """What the teacher's and the student's first layer receive, call by call."""
    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}

    def hooked(load, name):
        def loader(*args, **kwargs):
            adapter = load(*args, **kwargs)
            module = adapter.module.get_submodule(layer) if layer else adapter.module
            if layer:
                module.register_forward_pre_hook(lambda m, a: seen[name].append(a[0].detach().clone()))
            else:
                module.register_forward_pre_hook(
                    lambda m, a, kw: seen[name].append(kw["input_ids"].detach().clone()), with_kwargs=True)
            return adapter
        return loader
    monkeypatch.setattr(preflight_module, "load_teacher", hooked(preflight_module.load_teacher, "teacher"))
    monkeypatch.setattr(preflight_module, "load_student", hooked(preflight_module.load_student, "student"))
    return seen


def test_text_views_are_identical_and_masked(monkeypatch, write_profile, bert_cls, sst_tiny):
    spec = {"name": "a", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "init", "init": {"layers": [0, 3]}},
            "data": {"train": str(sst_tiny), "max_length": 16},
            "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton"}]},
            "train": {"max_steps": 3, "batch_size": 8, "augment": {"token_mask": 0.3}}, "output": "run"}
    path = write_profile(spec)
    init_student(load_profile(path))
    seen = _record_inputs(monkeypatch, None)
    distill(load_profile(path))
    assert len(seen["teacher"]) == len(seen["student"]) == 3
    mask_id = 4  # [MASK] in the tiny vocabulary (conftest.write_tokenizer)
    for teacher_ids, student_ids in zip(seen["teacher"], seen["student"]):
        assert torch.equal(teacher_ids, student_ids)
    assert any((ids == mask_id).any() for ids in seen["teacher"])


def test_student_noise_is_not_consistent_augmentation(monkeypatch, write_profile, bert_cls, sst_tiny):
    spec = {"name": "n", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "init", "init": {"layers": [0, 3]}},
            "data": {"train": str(sst_tiny), "max_length": 16},
            "distill": {"losses": [{"kind": "hinton"}]},
            "train": {"max_steps": 2, "batch_size": 8, "noise": {"token_mask": 0.3}}, "output": "run"}
    path = write_profile(spec)
    init_student(load_profile(path))
    seen = _record_inputs(monkeypatch, None)
    distill(load_profile(path))
    assert not any(torch.equal(t, s) for t, s in zip(seen["teacher"], seen["student"]))


def test_image_views_are_identical_with_randaugment_and_mixup(monkeypatch, write_profile, timm_resnet):
    spec = {"name": "i", "task": "image-classification",
            "teacher": {"source": "timm", "path": str(timm_resnet), "arch": "resnet18", "num_classes": 10},
            "student": {"path": "init", "init": {"architecture": "resnet18"}},
            "data": {"train": "sklearn:digits", "image_size": 32, "limit": 32},
            "distill": {"losses": [{"kind": "ce", "weight": 0.5}, {"kind": "hinton"}]},
            "train": {"max_steps": 2, "batch_size": 16,
                      "augment": {"randaugment": True, "mixup": 0.8, "cutmix": 1.0}}, "output": "run"}
    path = write_profile(spec)
    init_student(load_profile(path))
    seen = _record_inputs(monkeypatch, "conv1")
    distill(load_profile(path))
    assert len(seen["teacher"]) == len(seen["student"]) == 2
    for teacher_pixels, student_pixels in zip(seen["teacher"], seen["student"]):
        assert torch.equal(teacher_pixels, student_pixels)
    assert not torch.equal(seen["teacher"][0], seen["teacher"][1])


def test_augmentation_refuses_the_teacher_cache(write_profile, bert_cls, sst_tiny):
    spec = {"name": "c", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "init", "init": {"layers": [0, 3]}},
            "data": {"train": str(sst_tiny), "max_length": 16}, "distill": {"losses": [{"kind": "hinton"}]},
            "train": {"max_steps": 1, "batch_size": 8, "cache_teacher": True, "augment": {"token_mask": 0.2}},
            "output": "run"}
    path = write_profile(spec)
    init_student(load_profile(path))
    with pytest.raises(BadInput, match="cache_teacher cannot serve train.augment"):
        distill(load_profile(path))
