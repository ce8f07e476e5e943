"""The teacher-output cache gives the same student as asking the teacher every step."""

from __future__ import annotations

import pytest
import torch

from kdcli.commands.distill import distill
from kdcli.commands.init_student import init_student
from kdcli.errors import BadInput
from kdcli.profile import load_profile


def _run(write_profile, spec: dict, cache: bool, name: str) -> dict[str, torch.Tensor]:
    path = write_profile(spec, f"{name}.yaml")
    profile = load_profile(path, [f"train.cache_teacher={str(cache).lower()}", f"output={path.parent / name}"])
    summary = distill(profile)
    from kdcli.commands.checkpoints import load_student
    return load_student(profile, summary.student).module.state_dict()


def _assert_same(a: dict, b: dict, atol: float) -> None:
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


def test_text_cache_matches_live_teacher(write_profile, bert_cls, sst_tiny):
    spec = {"name": "c", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "init", "init": {"layers": [0, 3]}},
            "data": {"train": str(sst_tiny), "max_length": 16},
            "distill": {"losses": [{"kind": "ce"}, {"kind": "hinton"}, {"kind": "hidden_cosine", "layers": {2: 4}},
                                   {"kind": "similarity"}]},
            "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 1}, "output": "x"}
    init_student(load_profile(write_profile(spec, "init.yaml")))
    live = _run(write_profile, spec, False, "live")
    cached = _run(write_profile, spec, True, "cached")
    _assert_same(live, cached, atol=1e-4)


def test_image_cache_matches_live_teacher(write_profile, timm_resnet, tmp_path):
    spec = {"name": "i", "task": "image-classification",
            "teacher": {"source": "timm", "path": str(timm_resnet), "arch": "resnet18", "num_classes": 10},
            "student": {"path": "init", "init": {"architecture": "resnet10t"}},
            "data": {"train": "sklearn:digits", "image_size": 32, "limit": 64},
            "distill": {"losses": [{"kind": "hinton"}, {"kind": "attention_transfer", "stages": {4: 4}},
                                   {"kind": "rkd"}]},
            "train": {"max_steps": 3, "batch_size": 16, "lr": 1e-3, "seed": 1}, "output": "x"}
    init_student(load_profile(write_profile(spec, "init.yaml")))
    live = _run(write_profile, spec, False, "live")
    cached = _run(write_profile, spec, True, "cached")
    _assert_same(live, cached, atol=1e-4)
    assert (tmp_path / "cached" / "cache" / "teacher-0.pt").is_file()


def test_padding_bound_losses_are_refused(write_profile, bert_cls, sst_tiny):
    spec = {"name": "r", "task": "sequence-classification", "teacher": {"path": str(bert_cls)},
            "student": {"path": "init", "init": {"layers": [0, 3]}},
            "data": {"train": str(sst_tiny), "max_length": 16},
            "distill": {"losses": [{"kind": "hidden_mse"}]},
            "train": {"max_steps": 1, "batch_size": 8, "cache_teacher": True}, "output": "r"}
    path = write_profile(spec)
    init_student(load_profile(path))
    with pytest.raises(BadInput, match="cache_teacher cannot serve hidden_mse"):
        distill(load_profile(path))


def _hinton_job(teacher, data, output: str) -> dict:
    """A 2-layer student on logits alone, with the teacher cache on."""
    return {"name": "c", "task": "sequence-classification", "teacher": {"path": str(teacher)},
            "student": {"path": "init", "init": {"layers": [0, 3]}},
            "data": {"train": str(data), "max_length": 16},
            "distill": {"losses": [{"kind": "hinton"}]},
            "train": {"max_steps": 3, "batch_size": 8, "lr": 1e-3, "seed": 1, "cache_teacher": True},
            "output": output}


def test_a_fresh_run_never_reads_an_earlier_runs_cache(write_profile, bert_cls, sst_tiny):
    """An earlier run's cache/ (its checkpoints gone, so the next run is fresh) held other losses' outputs:
    the fresh run builds its own, and trains as a run in an empty folder does."""
    spec = _hinton_job(bert_cls, sst_tiny, "reused")
    init_student(load_profile(write_profile(spec, "init.yaml")))
    distill(load_profile(write_profile(spec, "first.yaml")))
    import shutil
    shutil.rmtree(write_profile(spec, "first.yaml").parent / "reused" / "checkpoints")
    spec["distill"]["losses"] = [{"kind": "hinton"}, {"kind": "hidden_cosine", "layers": {2: 4}}]
    second = _run(write_profile, {**spec, "output": "reused"}, True, "reused")
    fresh = _run(write_profile, spec, True, "fresh")
    _assert_same(second, fresh, atol=1e-6)


def test_a_cache_the_caller_vouches_for_is_kept(write_profile, bert_cls, sst_tiny):
    """compress hands a second candidate the first one's cache (logits only: nothing a student's shape
    chooses): with trust_cache the fresh run reads that file instead of building its own, and trains as a run
    that built it would."""
    import os
    spec = _hinton_job(bert_cls, sst_tiny, "first")
    init_student(load_profile(write_profile(spec, "init.yaml")))
    first = _run(write_profile, spec, True, "first")
    root = write_profile(spec, "x.yaml").parent
    (root / "second" / "cache").mkdir(parents=True)
    os.link(root / "first" / "cache" / "teacher-0.pt", root / "second" / "cache" / "teacher-0.pt")
    profile = load_profile(write_profile({**spec, "output": "second"}, "second.yaml"))
    summary = distill(profile, trust_cache=True)
    kept = root / "second" / "cache" / "teacher-0.pt"
    assert kept.stat().st_ino == (root / "first" / "cache" / "teacher-0.pt").stat().st_ino
    from kdcli.commands.checkpoints import load_student
    _assert_same(load_student(profile, summary.student).module.state_dict(), first, atol=1e-6)
