"""Activation importance over calibration batches (Minitron), from forward hooks on the teacher.

Per activation x [batch, tokens, channels]: the mean over real tokens (padding masked) of |x|, the L2 norm
over the batch, summed over batches. MLP neurons are read at the input of the down projection, heads at the
input of the attention output projection (a head's score: the L2 norm over its channels, per token, before
the same reduction), hidden channels at every norm over the hidden size, summed over sites. A block's
importance is the mean over real tokens of 1 - cos(its input, its output): how much it changes the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from kdcli.models.blocks import Stack
from kdcli.models.prune import Layout, Shape


@dataclass
class Importance:
    heads: list[Tensor]                 # per layer [heads]
    neurons: list[Tensor]               # per layer [ffn]
    hidden: Tensor                      # [hidden]
    layers: Tensor                      # [depth] mean 1 - cos(block input, block output)
    samples: int = 0


@dataclass
class _Sums:
    mask: Tensor | None = None
    heads: dict[int, Tensor] = field(default_factory=dict)
    neurons: dict[int, Tensor] = field(default_factory=dict)
    hidden: Tensor | None = None
    change: dict[int, float] = field(default_factory=dict)
    tokens: dict[int, float] = field(default_factory=dict)


def token_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """[B, T, C] -> [B, C]: the mean over real tokens (all tokens without a mask; images have none)."""
    if x.ndim == 2:
        return x
    if mask is None:
        return x.mean(1)
    weights = mask[..., None].to(x.dtype)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def score(x: Tensor, mask: Tensor | None) -> Tensor:
    """One batch's importance per channel: mean |x| over real tokens, then the L2 norm over the batch."""
    return token_mean(x.abs().float(), mask).norm(dim=0)


def _add(sums: dict[int, Tensor], key: int, value: Tensor) -> None:
    sums[key] = sums[key] + value if key in sums else value


def _first(value: object) -> Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value  # type: ignore[return-value]


@contextmanager
def _hooks(model: nn.Module, layout: Layout, stack: Stack, shape: Shape, sums: _Sums) -> Iterator[None]:
    handles = []

    def on_heads(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            per_head = x.float().unflatten(-1, (-1, shape.head_dim)).norm(dim=-1)  # [B, T, heads]
            _add(sums.heads, i, score(per_head, sums.mask))
        return hook

    def on_neurons(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            _add(sums.neurons, i, score(args[0], sums.mask))
        return hook

    def on_norm(module: nn.Module, args: tuple, output: object) -> None:
        value = score(_first(output), sums.mask)
        sums.hidden = value if sums.hidden is None else sums.hidden + value

    def on_block(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            before = args[0] if args else kwargs["hidden_states"]
            cos = nn.functional.cosine_similarity(before.double(), _first(output).double(), dim=-1)  # 1 - cos: small
            weights = sums.mask.to(cos.dtype) if sums.mask is not None else torch.ones_like(cos)
            sums.change[i] = sums.change.get(i, 0.0) + float(((1 - cos) * weights).sum())
            sums.tokens[i] = sums.tokens.get(i, 0.0) + float(weights.sum())
        return hook

    for i, block in enumerate(stack.blocks):
        handles.append(block.get_submodule(layout.o).register_forward_pre_hook(on_heads(i)))
        handles.append(block.get_submodule(layout.down).register_forward_pre_hook(on_neurons(i)))
        handles.append(block.register_forward_hook(on_block(i), with_kwargs=True))
        handles += [block.get_submodule(n).register_forward_hook(on_norm) for n in layout.norms]
    handles += [m.register_forward_hook(on_norm) for m in outer_norms(model, stack, shape.hidden)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def outer_norms(model: nn.Module, stack: Stack, size: int) -> list[nn.Module]:
    """Norms over the hidden size outside the blocks (the embeddings' LayerNorm, a decoder's final norm)."""
    inside = {id(m) for m in stack.blocks.modules()}
    return [m for m in model.modules() if id(m) not in inside and "norm" in type(m).__name__.lower()
            and getattr(m, "weight", None) is not None and m.weight.ndim == 1 and m.weight.shape[0] == size]


@torch.no_grad()
def measure(model: PreTrainedModel, layout: Layout, stack: Stack, shape: Shape,
            batches: Iterable[dict[str, Tensor]], run: Callable[[dict[str, Tensor]], object],
            on_batch: Callable[[int], None] | None = None) -> Importance:
    """Run `run(batch)` (the teacher's forward) over the calibration batches with the hooks in place."""
    sums, samples = _Sums(), 0
    with _hooks(model, layout, stack, shape, sums):
        for batch in batches:
            sums.mask = batch.get("attention_mask")
            run(batch)
            samples += len(next(iter(batch.values())))
            if on_batch is not None:
                on_batch(samples)
    if not samples:
        raise ValueError("no calibration batch")
    depth = len(stack.blocks)
    return Importance(heads=[sums.heads[i] for i in range(depth)], neurons=[sums.neurons[i] for i in range(depth)],
                      hidden=sums.hidden if sums.hidden is not None else torch.zeros(shape.hidden),
                      layers=torch.tensor([sums.change[i] / max(sums.tokens[i], 1.0) for i in range(depth)]),
                      samples=samples)
