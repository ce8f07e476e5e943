"""The one view of a model that every loss sees, whatever ecosystem the model comes from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from kdcli.models.st import Pipeline


@dataclass
class Outputs:
    logits: Tensor | None = None                    # [B, C] or [B, L, V]
    hidden_states: tuple[Tensor, ...] = ()          # 0 = embedding output, i = output of layer i
    attentions: tuple[Tensor, ...] = ()             # post-softmax [B, H, L, L] per layer
    attention_scores: tuple[Tensor, ...] = ()       # pre-softmax, mask added (TinyBERT)
    features: tuple[Tensor, ...] = ()               # vision: per-stage maps [B, C, H, W]
    embedding: Tensor | None = None                 # pooled vector [B, D]
    attention_mask: Tensor | None = None
    topk: tuple[Tensor, Tensor] | None = None       # causal-lm sparse cache: ids [N, k], log-probs [N, k + 1]


@dataclass
class Exportable:
    module: nn.Module                       # forward(*inputs in input_names order) -> output tensor
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    shape_key: str                          # "seq_len" | "image_size", for latency reports


class Adapter(ABC):
    """Wraps one nn.Module from one ecosystem (transformers, timm). Commands ask the adapter, never which
    library a model came from."""

    family: str
    module: nn.Module
    path: Path | None = None                # the folder (or file) it was loaded from
    tokenizer: Any = None                   # text models: what turns their data into input_ids
    pipeline: Pipeline | None = None        # embeddings: a sentence-transformers folder's pooling/normalize
    data_config: dict[str, Any] | None = None  # images: timm's input_size, mean, std, interpolation
    pairs: bool = False                     # the job's inputs are text pairs (data.text_pair_column)

    @property
    @abstractmethod
    def depth(self) -> int:
        """Number of layers (transformers) or feature stages (timm) a layer map may index."""

    @abstractmethod
    def width(self, index: int) -> int:
        """Feature width of layer/stage `index` (hidden size or channels)."""

    @abstractmethod
    def forward(self, batch: dict[str, Tensor], needs: frozenset[str] = frozenset({"logits"})) -> Outputs:
        """Run the model on a collated batch and fill the requested Outputs fields."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write the model alone, in its ecosystem's format, so that it loads without kdcli."""

    @abstractmethod
    def example_batch(self, batch_size: int = 2) -> dict[str, Tensor]:
        """A small valid input batch, for checks and export."""

    @abstractmethod
    def exportable(self) -> Exportable:
        """The bare model as ONNX wants it: named tensor inputs in, named tensor outputs out."""

    @abstractmethod
    def write_serving_files(self, out: Path, classes: Sequence[str] | None, image_size: int | None = None) -> None:
        """What serves model.onnx in `out` without kdcli, in the layout optimum's ORTModel classes load: config.json
        with the class names, and the tokenizer files or the image preprocessing (at `image_size`)."""

    @property
    def num_labels(self) -> int | None:
        return None

    @property
    def architecture(self) -> str:
        """The model's class name (BertForSequenceClassification, ResNet, ...)."""
        return type(self.module).__name__

    def set_classes(self, names: Sequence[str]) -> None:
        """Name the head's outputs, saved with the model (one name per output)."""
        raise NotImplementedError(f"{self.family} models have no class names")

    @property
    def cut_depth(self) -> int | None:
        """The layers student.init.layers picks from, where check can tell before init-student cuts (else None)."""
        return None

    @property
    def max_length(self) -> int | None:
        """The longest input the model takes, where it says so (a sentence-transformers max_seq_length)."""
        return None

    @property
    def label_names(self) -> list[str] | None:
        return None

    @property
    def token_types(self) -> bool:
        """Whether the model reads token types (a pair's segment ids: BERT's token_type_ids)."""
        return False

    def param_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def body_param_count(self) -> int:
        """Parameters outside the embedding tables: what a layer or width cut changes (compress's capacity).
        Tied output projections count once, with the embeddings."""
        tables = {id(p) for m in self.module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        return sum(p.numel() for p in self.module.parameters() if id(p) not in tables)

    def to(self, device: torch.device | str) -> Adapter:
        self.module.to(device)
        return self


def mean_pool(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Mask-aware mean over tokens (sentence-transformers' pooling)."""
    if mask is None:
        return hidden.mean(1)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


def dir_size(path: Path) -> int:
    """Bytes of a model file or folder; a folder's README.md (the model card, which grows as the run goes) is
    not the model and is not counted."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.relative_to(path) != Path("README.md"))
