"""Shrinking a teacher into a student: kept layers renumbered and copied bit for bit (init-student)."""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING

import torch
import transformers
from torch import nn
from transformers import DistilBertConfig, PreTrainedModel

from kdcli.errors import BadInput
from kdcli.models.blocks import cut_model, renumber_layers, require_stack
from kdcli.models.hf import HFAdapter
from kdcli.models.layers import select_layers
from kdcli.models.timm import TimmAdapter, create
from kdcli.tasks import Task

if TYPE_CHECKING:
    from kdcli.profile import StudentInit  # models/ imports no profile/ at run time

BLOCKS_KEY = re.compile(r"^(blocks)\.(\d+)\.")  # timm's ViT/DeiT blocks


# --- transformers -------------------------------------------------------------------------------


def shrink_transformer(teacher: HFAdapter, init: StudentInit, task: Task) -> tuple[HFAdapter, list[int], int]:
    """An encoder student: the teacher's class with the chosen layers, or a BERT teacher as DistilBERT."""
    model = teacher.module
    layers = select_layers(init.layers, teacher.depth)
    if init.architecture == "distilbert":
        student = _to_distilbert(model, layers, task)
    elif init.architecture == "same":
        student = _same_arch(model, layers, init.drop)
    else:
        raise BadInput(f"student.init.architecture: '{init.architecture}' is not a transformers target",
                       hint="use same or distilbert")
    adapter = HFAdapter(student.eval(), teacher.tokenizer, task)
    adapter.save_dtype = teacher.save_dtype
    return adapter, layers, len(student.state_dict())


def _fold_token_types(state: dict[str, torch.Tensor], prefix: str) -> bool:
    """Add the type-0 row to the position table: equal outputs on single-segment input, one table less.
    False when the model has no token-type table (DistilBERT, ModernBERT, DeBERTa-v2): nothing to fold."""
    types_key = f"{prefix}embeddings.token_type_embeddings.weight"
    positions_key = f"{prefix}embeddings.position_embeddings.weight"
    if types_key not in state or positions_key not in state:
        return False
    types = state[types_key]
    state[positions_key] = state[positions_key] + types[0]  # new tensors: the teacher's stay as they are
    state[types_key] = torch.zeros_like(types[:1])
    return True


def _same_arch(model: PreTrainedModel, layers: list[int], drop: list[str]) -> PreTrainedModel:
    config, state = model.config, dict(model.state_dict())
    prefix = _base_prefix(model)
    if "token_type_embeddings" in drop and _fold_token_types(state, prefix):
        config = copy.deepcopy(config)
        config.type_vocab_size = 1
    if "pooler" in drop and any(k.startswith(f"{prefix}pooler.") for k in state):
        # The config cannot record a missing pooler: from_pretrained would re-create it at random.
        raise BadInput("student.init.drop: a same-architecture student keeps its pooler "
                       "(transformers re-creates a dropped one when the model loads)",
                       hint="drop only token_type_embeddings, or use architecture: distilbert (no pooler)")
    return cut_model(model, layers, state, config)


def _to_distilbert(model: PreTrainedModel, layers: list[int], task: Task) -> PreTrainedModel:
    """A BERT teacher as a DistilBERT student, renaming tensors as HF's extract_distilbert.py does."""
    c = model.config
    if c.model_type != "bert":
        raise BadInput(f"architecture: distilbert converts BERT teachers; this one is '{c.model_type}'",
                       hint="use architecture: same")
    depth = len(layers)
    state = renumber_layers(model.state_dict(), layers, require_stack(model).key_pattern())
    config = DistilBertConfig(
        vocab_size=c.vocab_size, max_position_embeddings=c.max_position_embeddings, n_layers=depth,
        n_heads=c.num_attention_heads, dim=c.hidden_size, hidden_dim=c.intermediate_size,
        dropout=c.hidden_dropout_prob, attention_dropout=c.attention_probs_dropout_prob,
        activation=c.hidden_act, initializer_range=c.initializer_range, pad_token_id=c.pad_token_id,
        id2label=c.id2label, label2id=c.label2id)
    prefix = _base_prefix(model)
    _fold_token_types(state, prefix)  # DistilBERT has no token-type table: type 0 lives in the positions
    if task.distilbert_class is None:
        raise BadInput(f"architecture: distilbert has no {task} model", hint="use architecture: same")
    target = "distilbert." if task.output != "embedding" else ""  # the bare DistilBertModel has no prefix
    new = {target + _distil_name(k[len(prefix):]): v for k, v in state.items()
           if k.startswith(prefix) and _distil_name(k[len(prefix):])}
    new.update(_distil_head(state, task))
    student = getattr(transformers, task.distilbert_class)(config)
    missing, unexpected = student.load_state_dict(new, strict=False)
    if unexpected:
        raise BadInput(f"init-student: cannot place teacher tensors in DistilBERT: {unexpected[:3]}")
    return student


_DISTIL_RENAMES = [
    ("attention.self.query.", "attention.q_lin."), ("attention.self.key.", "attention.k_lin."),
    ("attention.self.value.", "attention.v_lin."), ("attention.output.dense.", "attention.out_lin."),
    ("attention.output.LayerNorm.", "sa_layer_norm."), ("intermediate.dense.", "ffn.lin1."),
    ("output.dense.", "ffn.lin2."), ("output.LayerNorm.", "output_layer_norm."),
]


def _distil_name(name: str) -> str | None:
    if name.startswith("embeddings.") and "token_type" not in name and "position_ids" not in name:
        return name
    if name.startswith("encoder.layer."):
        name = name.replace("encoder.layer.", "transformer.layer.", 1)
        for old, new in _DISTIL_RENAMES:
            if old in name:
                return name.replace(old, new, 1)
    return None


def _distil_head(state: dict, task: Task) -> dict[str, torch.Tensor]:
    pairs = {
        "DistilBertForSequenceClassification": [("bert.pooler.dense.", "pre_classifier."),
                                                ("classifier.", "classifier.")],
        "DistilBertForTokenClassification": [("classifier.", "classifier.")],
        "DistilBertForMaskedLM": [("cls.predictions.transform.dense.", "vocab_transform."),
                      ("cls.predictions.transform.LayerNorm.", "vocab_layer_norm."),
                      ("cls.predictions.decoder.weight", "vocab_projector.weight"),
                      ("cls.predictions.bias", "vocab_projector.bias")],
    }.get(task.distilbert_class or "", [])
    return {key.replace(old, new, 1): value for old, new in pairs for key, value in state.items()
            if key.startswith(old)}


def _base_prefix(model: PreTrainedModel) -> str:
    return "" if model.base_model is model else f"{model.base_model_prefix}."


# --- timm -----------------------------------------------------------------------------------------


def shrink_timm(teacher: TimmAdapter, init: StudentInit) -> tuple[TimmAdapter, list[int], int]:
    model = teacher.module
    if init.architecture == "same":
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.Sequential):
            raise BadInput(f"init-student: timm '{teacher.arch}' has no `blocks` list to cut",
                           hint="set student.init.architecture to a smaller timm arch (e.g. resnet10t)")
        layers = select_layers(init.layers, len(blocks))
        args = {**teacher.model_args, **init.model_args, "depth": len(layers)}
        student = create(teacher.arch, **args)
        state = renumber_layers(model.state_dict(), layers, BLOCKS_KEY)
        student.load_state_dict(state, strict=True)
        return TimmAdapter(student.eval(), teacher.arch, args, class_names=teacher.class_names), layers, len(state)
    args = {k: v for k, v in teacher.model_args.items() if k in ("num_classes", "img_size", "in_chans")}
    args.update(init.model_args)
    student = create(init.architecture, **args)
    copied = _copy_matching(model.state_dict(), student) if init.copy_weights else 0
    return TimmAdapter(student.eval(), init.architecture, args, class_names=teacher.class_names), [], copied


def _copy_matching(source: dict[str, torch.Tensor], target: nn.Module) -> int:
    """Copy every tensor whose name and shape match (stem, head); the rest keeps timm's init."""
    state = target.state_dict()
    matched = {k: v.clone() for k, v in source.items() if k in state and state[k].shape == v.shape}
    state.update(matched)
    target.load_state_dict(state)
    return len(matched)
