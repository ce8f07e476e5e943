"""Width pruning (Minitron): slicing that removes nothing changes nothing, importance equals an independent
numpy computation, sizes follow the parameter formula, and a pruned student loads, exports and distils."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_lm, tiny_bert_config, tiny_lm_config
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    RobertaConfig,
)
from typer.testing import CliRunner

from kdcli.cli import app
from kdcli.models.importance import measure
from kdcli.models.prune import Kept, keep_heads, layout_of, prune_width, shape_of

runner = CliRunner()


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 60, (3, 9), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _bert(**extra) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config(num_labels=3, **extra)).eval()


def _permutations(shape, depth: int, seed: int, heads: bool) -> Kept:
    g = torch.Generator().manual_seed(seed)
    return Kept(heads=[torch.randperm(shape.heads, generator=g) for _ in range(depth)] if heads else None,
                neurons=[torch.randperm(shape.ffn, generator=g) for _ in range(depth)],
                hidden=torch.randperm(shape.hidden, generator=g))


def _encoder(family: str) -> torch.nn.Module:
    small = {"vocab_size": 64, "num_hidden_layers": 2, "max_position_embeddings": 64, "num_labels": 2}
    bert_like = {**small, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 48}
    config = {
        "distilbert": lambda: DistilBertConfig(**{**small, "n_layers": 2}, dim=32, n_heads=2, hidden_dim=48),
        "deberta-v2": lambda: DebertaV2Config(**bert_like, relative_attention=True, pos_att_type=["c2p", "p2c"],
                                              type_vocab_size=0, position_biased_input=False),
        "electra": lambda: ElectraConfig(**bert_like, embedding_size=16),
        "roberta": lambda: RobertaConfig(**{**bert_like, "max_position_embeddings": 70}, pad_token_id=1),
    }[family]()
    return AutoModelForSequenceClassification.from_config(config).eval()


@pytest.mark.parametrize("family", ["bert", "llama", "qwen2", "distilbert", "deberta-v2", "electra", "roberta"])
def test_a_permutation_that_removes_nothing_keeps_the_outputs(family):
    torch.manual_seed(0)
    model = _bert() if family == "bert" else AutoModelForCausalLM.from_config(tiny_lm_config(family)).eval() \
        if family in ("llama", "qwen2") else _encoder(family)
    layout, stack = layout_of(model)
    shape = shape_of(model, layout, stack)
    # grouped-query attention: heads permute within their key/value group (here one group of two)
    student = prune_width(model, _permutations(shape, len(stack.blocks), 1, heads=True)).eval()
    batch = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, model(**batch).logits, atol=2e-6, rtol=1e-5)
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in model.parameters())


def _numpy_score(activations: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """Minitron's reduction, written again in numpy: mean |x| over real tokens, L2 over the batch, summed."""
    total = 0.0
    for x, mask in zip(activations, masks):
        per_sample = (np.abs(x) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        total = total + np.sqrt((per_sample ** 2).sum(0))
    return total


def test_importance_equals_an_independent_numpy_computation():
    model = _bert()
    layout, stack = layout_of(model)
    shape = shape_of(model, layout, stack)
    seen: dict[str, list[np.ndarray]] = {"o": [], "down": [], "blocks": []}
    block = stack.blocks[1]
    hooks = [block.get_submodule(layout.o).register_forward_pre_hook(lambda m, a: seen["o"].append(a[0].numpy())),
             block.get_submodule(layout.down).register_forward_pre_hook(
                 lambda m, a: seen["down"].append(a[0].numpy()))]
    batches = [_inputs(0), _inputs(1)]
    with torch.no_grad():
        outputs = [model(**b, output_hidden_states=True).hidden_states for b in batches]
    for h in hooks:
        h.remove()
    importance = measure(model, layout, stack, shape, batches, lambda b: model(**b))
    masks = [b["attention_mask"].numpy().astype(np.float64) for b in batches]
    np.testing.assert_allclose(importance.neurons[1].numpy(), _numpy_score(seen["down"], masks), rtol=1e-5)
    per_head = [np.linalg.norm(x.reshape(*x.shape[:2], shape.heads, shape.head_dim), axis=-1) for x in seen["o"]]
    np.testing.assert_allclose(importance.heads[1].numpy(), _numpy_score(per_head, masks), rtol=1e-5)
    # a block's importance: mean over real tokens of 1 - cos(its input, its output)
    change, tokens = 0.0, 0.0
    for hidden, mask in zip(outputs, masks):
        a, b = hidden[1].double().numpy(), hidden[2].double().numpy()
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        change += ((1 - cos) * mask).sum()
        tokens += mask.sum()
    assert importance.layers[1].item() == pytest.approx(change / tokens, rel=1e-5)
    assert importance.samples == 6 and importance.hidden.shape == (shape.hidden,)


def test_grouped_query_heads_are_ranked_within_their_group():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.8, 0.2, 0.3, 0.4])  # 2 groups of 4 query heads
    assert keep_heads(scores, 4, groups=2).tolist() == [1, 3, 4, 7]
    assert keep_heads(scores, 3, groups=8).tolist() == [1, 3, 4]   # every head its own key/value: global


def _bert_params(vocab: int, positions: int, types: int, hidden: int, heads: int, head_dim: int, ffn: int,
                 depth: int, classes: int) -> int:
    embeddings = (vocab + positions + types) * hidden + 2 * hidden
    attention = 3 * (hidden * heads * head_dim + heads * head_dim) + heads * head_dim * hidden + hidden + 2 * hidden
    mlp = hidden * ffn + ffn + ffn * hidden + hidden + 2 * hidden
    return embeddings + depth * (attention + mlp) + hidden * hidden + hidden + hidden * classes + classes


def _profile(write_profile, teacher: Path, data: Path | None, task: str = "sequence-classification", **init) -> Path:
    spec = {"name": "prune", "task": task, "teacher": {"path": str(teacher)},
            "student": {"path": "student", "init": init}, "output": "runs",
            "train": {"batch_size": 4, "max_steps": 4, "device": "cpu"},
            "distill": {"losses": [{"kind": "hinton"}, {"kind": "hidden_mse", "layers": {1: 2, 2: 4}}]}}
    if data is not None:
        spec["data"] = {"train": str(data), "eval": str(data)}
    return write_profile(spec)


def test_init_student_prunes_width_and_depth_to_a_standard_checkpoint(write_profile, bert_cls, sst_tiny, one_thread):
    profile = _profile(write_profile, bert_cls, sst_tiny, layers="importance:2",
                       prune={"heads": 1, "hidden": 16, "ffn": 20, "calibration_samples": 16})
    result = runner.invoke(app, ["init-student", str(profile), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pruned"]["teacher"]["heads"] == 2 and report["pruned"]["student"] == {
        "heads": 1, "kv_heads": 1, "head_dim": 16, "ffn": 20, "hidden": 16}
    assert report["pruned"]["calibration_samples"] == 16
    scores = report["pruned"]["layer_importance"]
    assert report["layer_map"] == sorted(sorted(range(4), key=lambda i: -scores[i])[:2])
    student = AutoModelForSequenceClassification.from_pretrained("student")  # transformers alone, no kdcli
    c = student.config
    assert (c.num_attention_heads, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (1, 16, 20, 2)
    assert student.num_parameters() == report["student"]["params"] == _bert_params(
        64, 64, 2, hidden=16, heads=1, head_dim=16, ffn=20, depth=2, classes=2)
    assert "Width pruned by activation importance" in Path("student/README.md").read_text()


def test_pruning_nothing_keeps_the_teachers_outputs(write_profile, bert_cls, sst_tiny, one_thread):
    profile = _profile(write_profile, bert_cls, sst_tiny, layers=[0, 1, 2, 3],
                       prune={"heads": 2, "hidden": 32, "ffn": 48, "calibration_samples": 8})
    assert runner.invoke(app, ["init-student", str(profile)]).exit_code == 0
    teacher = AutoModelForSequenceClassification.from_pretrained(bert_cls).eval()
    student = AutoModelForSequenceClassification.from_pretrained("student").eval()
    batch = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, teacher(**batch).logits, atol=1e-6, rtol=1e-5)


def test_a_pruned_student_exports_with_parity_and_distils_with_hidden_losses(write_profile, bert_cls, sst_tiny,
                                                                              one_thread):
    profile = _profile(write_profile, bert_cls, sst_tiny, layers=[1, 3],
                       prune={"heads": 1, "hidden": 16, "ffn": 24, "calibration_samples": 8})
    assert runner.invoke(app, ["init-student", str(profile)]).exit_code == 0
    result = runner.invoke(app, ["distill", str(profile), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    logged = [json.loads(line) for line in Path("runs/metrics.jsonl").read_text().splitlines()]
    steps = [row for row in logged if "loss/hidden_mse" in row]  # 16-wide student, 32-wide teacher: projected
    assert steps and steps[-1]["step"] == 4 and steps[-1]["loss/hidden_mse"] > 0
    result = runner.invoke(app, ["export", str(profile), "--no-latency", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["parity"]["ok"] is True


def test_a_decoder_keeps_its_key_value_heads_and_tied_embeddings(write_profile, tmp_path, lm_data, one_thread):
    teacher = save_tiny_lm(tmp_path / "llama", "llama")
    spec = {"name": "lm", "task": "causal-lm", "teacher": {"path": str(teacher)},
            "student": {"path": "student", "init": {"layers": "importance:3",
                                                   "prune": {"heads": 1, "ffn": 24, "calibration_samples": 8}}},
            "data": {"train": str(lm_data["train"])}, "output": "runs"}
    result = runner.invoke(app, ["init-student", str(write_profile(spec))])
    assert result.exit_code == 0, result.output
    student = AutoModelForCausalLM.from_pretrained("student")
    c = student.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size, c.num_hidden_layers) \
        == (1, 1, 16, 24, 3)
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("prune, message", [
    ({"heads": 4}, "heads: 4 is more than the teacher's 2"),
    ({"ffn": 100}, "ffn: 100 is more than the teacher's 48"),
    ({"heads": 1}, "1 heads of 16 need hidden 16, not 32"),
    ({"hidden": 24}, "2 heads of 16 need hidden 32, not 24"),
])
def test_sizes_the_architecture_cannot_take_exit_2(write_profile, bert_cls, sst_tiny, prune, message):
    result = runner.invoke(app, ["init-student", str(_profile(write_profile, bert_cls, sst_tiny, prune=prune))])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_query_heads_that_do_not_divide_the_key_value_groups_exit_2(write_profile, tmp_path, lm_data):
    torch.manual_seed(0)
    folder = tmp_path / "gqa"
    AutoModelForCausalLM.from_config(tiny_lm_config("qwen2", num_attention_heads=4, num_key_value_heads=2)
                                     ).save_pretrained(folder)
    save_tiny_lm(tmp_path / "tok", "qwen2")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tmp_path / "tok" / name).read_bytes())
    spec = {"name": "lm", "task": "causal-lm", "teacher": {"path": str(folder)},
            "student": {"path": "student", "init": {"prune": {"heads": 3}}},
            "data": {"train": str(lm_data["train"])}, "output": "runs"}
    result = runner.invoke(app, ["init-student", str(write_profile(spec))])
    assert result.exit_code == 2 and "do not divide into the teacher's 2 key/value groups" in result.output


def test_pruning_without_calibration_data_exits_2(write_profile, bert_cls):
    result = runner.invoke(app, ["init-student", str(_profile(write_profile, bert_cls, None, prune={"ffn": 8}))])
    assert result.exit_code == 2 and "calibration data" in result.output


def _vit(folder: Path) -> tuple[torch.nn.Module, dict]:
    import timm

    from kdcli.models.timm import TimmAdapter
    torch.manual_seed(6)
    args = {"num_classes": 10, "img_size": 32, "patch_size": 8, "depth": 4, "embed_dim": 48, "num_heads": 4,
            "init_values": 0.1}  # LayerScale: a vector over the hidden size inside every block
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()
    TimmAdapter(model, "vit_tiny_patch16_224", args).save(folder)
    return model, args


def test_a_vit_permutation_that_removes_nothing_keeps_the_outputs(tmp_path):
    from kdcli.models.prune import pruned_args, pruned_state
    from kdcli.models.timm import create
    model, args = _vit(tmp_path / "vit")
    layout, stack = layout_of(model)
    kept = _permutations(shape_of(model, layout, stack), 4, 2, heads=True)
    student = create("vit_tiny_patch16_224", **{**args, **pruned_args(model, kept)}).eval()
    student.load_state_dict(pruned_state(model, kept), strict=True)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(student(images), model(images), atol=2e-6, rtol=1e-5)


def test_a_pruned_vit_loads_with_timm_alone(write_profile, tmp_path, one_thread):
    import timm
    model, _ = _vit(tmp_path / "vit")
    spec = {"name": "v", "task": "image-classification", "teacher": {"source": "timm", "path": str(tmp_path / "vit")},
            "student": {"path": "student", "init": {"layers": "importance:3",
                                                   "prune": {"heads": 2, "hidden": 24, "ffn": 100,
                                                             "calibration_samples": 16}}},
            "data": {"train": "sklearn:digits", "image_size": 32, "limit": 32}, "output": "runs"}
    result = runner.invoke(app, ["init-student", str(write_profile(spec)), "--json"])
    assert result.exit_code == 0, result.output
    student = timm.create_model("local-dir:student", pretrained=True)  # timm alone, no kdcli
    assert len(student.blocks) == 3 and student.embed_dim == 24 and student.blocks[0].attn.num_heads == 2
    assert student.blocks[0].mlp.fc1.out_features == 100
    assert student(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_a_timm_cnn_is_refused_with_one_message():
    import timm

    from kdcli.errors import BadInput
    with pytest.raises(BadInput, match="has no ViT blocks to prune"):
        layout_of(timm.create_model("resnet10t", pretrained=False, num_classes=3))
