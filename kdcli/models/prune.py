"""Structured width pruning (Minitron): attention heads, MLP neurons and hidden channels ranked by activation
importance, the rest sliced away, saved as a standard checkpoint of the teacher's class with a smaller config.

A `Layout` names the roles in one block of a family (query/key/value/output projections, MLP up/down, norms)
and the config fields that size them; everything outside the block stack is sliced by what its shapes say
(an embedding's columns, a Linear's input or output over the hidden size, a norm's vector).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from kdcli.errors import BadInput
from kdcli.models.blocks import Stack, require_stack


@dataclass(frozen=True)
class Layout:
    """Where one family keeps its attention, MLP and norms inside a block, and which config fields size them."""
    name: str
    q: str
    k: str
    v: str
    o: str
    up: tuple[str, ...]                 # Linears whose output rows are MLP neurons (gate and up)
    down: str                           # the Linear whose input columns are MLP neurons
    norms: tuple[str, ...]              # norms over the hidden size
    heads_field: str
    ffn_field: str
    hidden_field: str
    kv_field: str | None = None         # grouped-query attention: key/value heads
    head_dim_field: str | None = None   # the config states the head size (else it is hidden / heads)
    extra_heads: tuple[str, ...] = ()   # more per-head projections of the hidden state, where present
    fused_qkv: bool = False             # q, k and v are one Linear (timm): rows [3, heads, head_dim]


LAYOUTS = (
    Layout("bert", "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           ("intermediate.dense",), "output.dense", ("attention.output.LayerNorm", "output.LayerNorm"),
           "num_attention_heads", "intermediate_size", "hidden_size"),
    Layout("distilbert", "attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
           ("ffn.lin1",), "ffn.lin2", ("sa_layer_norm", "output_layer_norm"), "n_heads", "hidden_dim", "dim"),
    Layout("deberta-v2", "attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
           "attention.output.dense", ("intermediate.dense",), "output.dense",
           ("attention.output.LayerNorm", "output.LayerNorm"), "num_attention_heads", "intermediate_size",
           "hidden_size", extra_heads=("attention.self.pos_key_proj", "attention.self.pos_query_proj")),
    Layout("llama", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", ("input_layernorm", "post_attention_layernorm"),
           "num_attention_heads", "intermediate_size", "hidden_size", "num_key_value_heads", "head_dim"),
    Layout("timm-vit", "attn.qkv", "attn.qkv", "attn.qkv", "attn.proj", ("mlp.fc1",), "mlp.fc2", ("norm1", "norm2"),
           "num_heads", "mlp_ratio", "embed_dim", fused_qkv=True),
)


@dataclass(frozen=True)
class Shape:
    """A model's attention and MLP sizes, read from its modules (not from what a config might spell)."""
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    hidden: int

    def describe(self) -> dict[str, int]:
        return {"heads": self.heads, "kv_heads": self.kv_heads, "head_dim": self.head_dim, "ffn": self.ffn,
                "hidden": self.hidden}


@dataclass(frozen=True)
class Target:
    """The sizes to keep per layer (None: keep all)."""
    heads: int | None = None
    ffn: int | None = None
    hidden: int | None = None


def _module(block: nn.Module, dotted: str) -> nn.Module | None:
    try:
        return block.get_submodule(dotted)
    except AttributeError:
        return None


def layout_of(model: nn.Module) -> tuple[Layout, Stack]:
    """The family layout whose roles are all in the model's blocks, with the model's stack of blocks."""
    if isinstance(model, PreTrainedModel):
        stack = require_stack(model)
    elif isinstance(getattr(model, "blocks", None), nn.Sequential):  # timm ViT/DeiT
        stack = Stack("blocks", model.blocks)
    else:
        raise BadInput(f"student.init.prune: timm {type(model).__name__} has no ViT blocks to prune",
                       hint="prune ViT/DeiT teachers; for CNNs set student.init.architecture to a smaller arch")
    block = stack.blocks[0]
    for layout in LAYOUTS:
        linears = (layout.q, layout.k, layout.v, layout.o, layout.down, *layout.up)
        if (all(isinstance(_module(block, n), nn.Linear) for n in linears)
                and all(_module(block, n) is not None for n in layout.norms)):
            return layout, stack
    raise BadInput(f"student.init.prune: {type(model).__name__} has no attention and MLP laid out as pruning "
                   "knows them (BERT-style encoders: BERT, RoBERTa, XLM-R, MiniLM, ELECTRA; DistilBERT; DeBERTa-v2/v3; "
                   "Llama-style decoders: Llama, Mistral, Qwen2/3; timm ViT/DeiT)",
                   hint="remove student.init.prune and shrink by layers, or use a supported family")


def shape_of(model: nn.Module, layout: Layout, stack: Stack) -> Shape:
    block = stack.blocks[0]
    q, k, down = (block.get_submodule(n) for n in (layout.q, layout.k, layout.down))
    if layout.fused_qkv:
        heads = int(block.get_submodule(layout.o.rpartition(".")[0]).num_heads)
        head_dim = q.out_features // 3 // heads
        return Shape(heads=heads, kv_heads=heads, head_dim=head_dim, ffn=down.in_features, hidden=q.in_features)
    heads = int(getattr(model.config, layout.heads_field))
    head_dim = q.out_features // heads
    return Shape(heads=heads, kv_heads=k.out_features // head_dim, head_dim=head_dim, ffn=down.in_features,
                 hidden=q.in_features)


def check_target(shape: Shape, layout: Layout, target: Target, embedding_output: bool) -> None:
    """Exit 2 for sizes the architecture cannot take, before any calibration runs."""
    for name, size, have in (("heads", target.heads, shape.heads), ("ffn", target.ffn, shape.ffn),
                             ("hidden", target.hidden, shape.hidden)):
        if size is not None and size > have:
            raise BadInput(f"student.init.prune.{name}: {size} is more than the teacher's {have}",
                           hint=f"keep at most {have} (pruning only removes)")
    if target.heads is not None and shape.kv_heads < shape.heads and target.heads % shape.kv_heads:
        raise BadInput(f"student.init.prune.heads: {target.heads} query heads do not divide into the teacher's "
                       f"{shape.kv_heads} key/value groups ({shape.heads // shape.kv_heads} heads each)",
                       hint=f"use a multiple of {shape.kv_heads}")
    if layout.head_dim_field is None and (target.heads is not None or target.hidden is not None):
        heads, hidden = target.heads or shape.heads, target.hidden or shape.hidden
        if heads * shape.head_dim != hidden:
            raise BadInput(f"student.init.prune: {type_name(layout)} configs size a head as hidden / heads, so "
                           f"{heads} heads of {shape.head_dim} need hidden {heads * shape.head_dim}, not {hidden}",
                           hint=f"prune heads and hidden together: heads: {heads}, hidden: {heads * shape.head_dim}")
    if target.hidden is not None and target.hidden != shape.hidden and embedding_output:
        raise BadInput("student.init.prune.hidden: an embedding model's hidden size is its embedding's size; "
                       "pruning it would change what the model outputs",
                       hint="prune heads and ffn only")


def type_name(layout: Layout) -> str:
    names = {"bert": "BERT-style", "distilbert": "DistilBERT", "deberta-v2": "DeBERTa-v2", "timm-vit": "timm ViT"}
    return names.get(layout.name, layout.name)


def keep_top(scores: Tensor, count: int) -> Tensor:
    """Indices of the `count` highest scores, in their original order (ties: the earlier index)."""
    order = torch.argsort(scores, descending=True, stable=True)[:count]
    return torch.sort(order).values


def keep_heads(scores: Tensor, count: int, groups: int) -> Tensor:
    """Query heads to keep: the best `count / groups` within each key/value group (grouped-query attention),
    or the best `count` overall when every head has its own key and value."""
    heads = scores.numel()
    if groups == heads:
        return keep_top(scores, count)
    size, per_group = heads // groups, count // groups
    kept = [g * size + keep_top(scores[g * size:(g + 1) * size], per_group) for g in range(groups)]
    return torch.cat(kept)


def channels(heads: Tensor, head_dim: int) -> Tensor:
    """The projection rows (or columns) of the given heads."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


Slices = dict[str, list[tuple[int, Tensor]]]   # state-dict key -> (dim, indices kept), applied in turn


def _slice(slices: Slices, key: str, dim: int, index: Tensor) -> None:
    slices.setdefault(key, []).append((dim, index))


def _linear(slices: Slices, prefix: str, *, rows: Tensor | None = None, cols: Tensor | None = None,
            bias: bool = False) -> None:
    if rows is not None:
        _slice(slices, f"{prefix}.weight", 0, rows)
        if bias:
            _slice(slices, f"{prefix}.bias", 0, rows)
    if cols is not None:
        _slice(slices, f"{prefix}.weight", 1, cols)


def _block_slices(slices: Slices, layout: Layout, prefix: str, shape: Shape, heads: Tensor | None,
                  neurons: Tensor | None, hidden: Tensor | None, extra: tuple[str, ...], block: nn.Module) -> None:
    at = lambda role: f"{prefix}.{role}"  # noqa: E731
    roles = tuple(f"{r}." for r in (layout.q, layout.k, layout.v, layout.o, layout.down, *layout.up, *extra))
    if heads is not None:
        rows = channels(heads, shape.head_dim)
        if layout.fused_qkv:
            width = shape.heads * shape.head_dim
            _linear(slices, at(layout.q), rows=torch.cat([part * width + rows for part in range(3)]), bias=True)
        else:
            for role in (layout.q, *((layout.k, layout.v) if shape.kv_heads == shape.heads else ()), *extra):
                _linear(slices, at(role), rows=rows, bias=True)
        _linear(slices, at(layout.o), cols=rows)
    if neurons is not None:
        for role in layout.up:
            _linear(slices, at(role), rows=neurons, bias=True)
        _linear(slices, at(layout.down), cols=neurons)
    if hidden is not None:
        for role in dict.fromkeys((layout.q, layout.k, layout.v, *layout.up, *extra)):  # fused: once
            _linear(slices, at(role), cols=hidden)
        for role in (layout.o, layout.down):
            _linear(slices, at(role), rows=hidden, bias=True)
        for name, value in block.named_parameters():  # norms, LayerScale: vectors over the hidden size
            if value.ndim == 1 and value.shape[0] == shape.hidden and not name.startswith(roles):
                _slice(slices, at(name), 0, hidden)


def _outer_slices(slices: Slices, model: nn.Module, stack: Stack, size: int, hidden: Tensor) -> None:
    """Outside the blocks, whatever reads or writes the hidden size: embeddings, norms, pooler, heads."""
    for name, module in model.named_modules():
        if name == stack.name or name.startswith(f"{stack.name}."):
            continue
        at = f"{name}." if name else ""
        if isinstance(module, nn.Embedding) and module.embedding_dim == size:
            _slice(slices, f"{at}weight", 1, hidden)
        elif isinstance(module, nn.Linear):
            _linear(slices, at.rstrip("."), rows=hidden if module.out_features == size else None, bias=True,
                    cols=hidden if module.in_features == size else None)
        elif isinstance(module, nn.Conv2d) and module.out_channels == size:  # a ViT's patch embedding
            _linear(slices, at.rstrip("."), rows=hidden, bias=True)
        else:  # norms; a ViT's class token and position embedding ([1, tokens, hidden])
            for param, value in module.named_parameters(recurse=False):
                if value.ndim >= 1 and value.shape[-1] == size:
                    _slice(slices, f"{at}{param}", value.ndim - 1, hidden)


def _apply(state: dict[str, Tensor], slices: Slices) -> dict[str, Tensor]:
    new = {}
    for key, value in state.items():
        for dim, index in slices.get(key, ()):
            value = value.index_select(dim, index)
        new[key] = value.clone()
    return new


@dataclass(frozen=True)
class Kept:
    """What pruning keeps: per layer the query heads and MLP neurons, and the hidden channels (None: all)."""
    heads: list[Tensor] | None
    neurons: list[Tensor] | None
    hidden: Tensor | None


def prune_width(model: PreTrainedModel, kept: Kept) -> PreTrainedModel:
    """A model of the teacher's class keeping `kept`, every layer the same width, loadable by from_pretrained."""
    layout, stack = layout_of(model)
    shape = shape_of(model, layout, stack)
    student = type(model)(_pruned_config(model, layout, shape, kept))
    student.load_state_dict(pruned_state(model, kept), strict=True)
    student.tie_weights()
    return student


def pruned_args(model: nn.Module, kept: Kept) -> dict[str, float | int]:
    """timm create_model arguments for the pruned sizes (a ViT sizes a head as embed_dim / num_heads)."""
    layout, stack = layout_of(model)
    shape = shape_of(model, layout, stack)
    hidden = len(kept.hidden) if kept.hidden is not None else shape.hidden
    ffn = len(kept.neurons[0]) if kept.neurons else shape.ffn
    ratio = ffn / hidden if int(hidden * (ffn / hidden)) == ffn else (ffn + 0.5) / hidden  # timm: int(dim * ratio)
    return {"embed_dim": hidden, "num_heads": len(kept.heads[0]) if kept.heads else shape.heads, "mlp_ratio": ratio}


def pruned_state(model: nn.Module, kept: Kept) -> dict[str, Tensor]:
    """The model's state dict sliced to `kept`: every layer keeps its own heads and neurons, all the same count."""
    layout, stack = layout_of(model)
    shape = shape_of(model, layout, stack)
    slices: Slices = {}
    extra = tuple(n for n in layout.extra_heads if _module(stack.blocks[0], n) is not None)
    for i in range(len(stack.blocks)):
        _block_slices(slices, layout, f"{stack.name}.{i}", shape, kept.heads[i] if kept.heads else None,
                      kept.neurons[i] if kept.neurons else None, kept.hidden, extra, stack.blocks[i])
    if kept.hidden is not None:
        _outer_slices(slices, model, stack, shape.hidden, kept.hidden)
    return _apply(model.state_dict(), slices)


def _pruned_config(model: PreTrainedModel, layout: Layout, shape: Shape, kept: Kept):  # noqa: ANN202
    config = copy.deepcopy(model.config)
    if kept.heads is not None:
        heads = len(kept.heads[0])
        setattr(config, layout.heads_field, heads)
        if layout.kv_field and shape.kv_heads == shape.heads:
            setattr(config, layout.kv_field, heads)
    if kept.neurons is not None:
        setattr(config, layout.ffn_field, len(kept.neurons[0]))
    if kept.hidden is not None:
        setattr(config, layout.hidden_field, len(kept.hidden))
    if layout.head_dim_field:
        setattr(config, layout.head_dim_field, shape.head_dim)  # no longer hidden / heads: say it
    return config
