"""Teacher-output cache (`train.cache_teacher: true`): the frozen teacher's outputs are computed
once, stored on disk and memory-mapped, so later epochs cost what training the student alone costs.

Only what the losses read is stored: logits, pooled embeddings, the hidden-state layers the maps
name (per token, without padding) and vision feature stages. Outputs that depend on how a sample
was padded inside its batch (pre-softmax attention, MSE over padded positions) or on random input
changes (MLM masking) cannot be cached; such profiles are refused with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdcli.data.splits import Split, to_device
from kdcli.errors import BadInput
from kdcli.models import Adapter, Outputs
from kdcli.runtime.files import atomic_path


def refuse_uncacheable(losses: nn.ModuleList, split: Split) -> None:
    """Refuse the losses whose kind declares that the cache cannot serve it on this split's data."""
    bound = sorted({loss.kind for loss in losses if not _served(loss, split.kind)})
    if bound:
        raise BadInput(f"train.cache_teacher cannot serve {', '.join(bound)}: the teacher's side of these losses "
                       "changes with each batch's padding or random masking",
                       hint="set train.cache_teacher: false for this profile")


def _served(loss: Any, data: str) -> bool:
    spec = getattr(loss, "spec", None)  # a built loss carries its configured spec; a bare kind only its class
    return spec.cache_serves(data) if spec is not None else loss.Spec.cacheable_on(data)


class TeacherCache:
    """Cached teacher Outputs for a split, indexed by sample."""

    def __init__(self, tensors: dict[str, Any]) -> None:
        self.t = tensors

    @classmethod
    def load_or_build(cls, teacher: Adapter, split: Split, needs: frozenset[str], losses: nn.ModuleList,
                      batch_size: int, device: torch.device, path: Path) -> TeacherCache:
        if path.is_file():  # a resumed run: the teacher and data are those of the lock file
            return cls(torch.load(path, mmap=True, weights_only=True))
        refuse_uncacheable(losses, split)
        layers = sorted({t for loss in losses for t in getattr(loss, "mapping", {}).values()})
        store: dict[str, list] = {}
        order = sorted(range(split.size), key=lambda i: split.lengths[i]) if split.kind == "text" \
            else list(range(split.size))
        with torch.inference_mode():
            for start in range(0, split.size, batch_size):
                indices = order[start: start + batch_size]
                batch = to_device(split.collate(indices), device)
                out = teacher.forward(batch, needs)
                cls._collect(store, indices, out, batch, needs, layers)
        tensors = cls._pack(store, split.size)
        with atomic_path(path) as tmp:
            torch.save(tensors, tmp)
        return cls(torch.load(path, mmap=True, weights_only=True))

    @staticmethod
    def _collect(store: dict[str, list], indices: list[int], out: Outputs, batch: dict[str, Tensor],
                 needs: frozenset[str], layers: list[int]) -> None:
        mask = batch.get("attention_mask")
        for row, i in enumerate(indices):
            length = int(mask[row].sum()) if mask is not None else None
            item: dict[str, Tensor] = {}
            if "logits" in needs and out.logits is not None and out.logits.dim() == 3:  # per token, no padding
                item["token_logits"] = out.logits[row, :length]
            elif "logits" in needs and out.logits is not None:
                item["logits"] = out.logits[row]
            if "embedding" in needs and out.embedding is not None:
                item["embedding"] = out.embedding[row]
            for layer in layers if "hidden_states" in needs else []:
                item[f"hidden.{layer}"] = out.hidden_states[layer][row, :length]
            for layer in layers if "features" in needs else []:
                item[f"features.{layer}"] = out.features[layer][row]
            for key, value in item.items():
                store.setdefault(key, []).append((i, value.float().cpu()))

    @staticmethod
    def _pack(store: dict[str, list], size: int) -> dict[str, Any]:
        packed: dict[str, Any] = {}
        for key, items in store.items():
            items.sort(key=lambda pair: pair[0])
            values = [v for _, v in items]
            if key.startswith("hidden.") or key == "token_logits":  # variable length: one flat table plus offsets
                lengths = torch.tensor([v.shape[0] for v in values])
                packed[key] = {"flat": torch.cat(values), "offsets": torch.cat([torch.zeros(1, dtype=torch.long),
                                                                                 lengths.cumsum(0)])}
            else:
                packed[key] = torch.stack(values)
        return packed

    def outputs(self, indices: Tensor, batch: dict[str, Tensor], device: torch.device) -> Outputs:
        """The teacher Outputs for a batch of these samples, padded as the batch is."""
        idx = indices.cpu()
        hidden: dict[int, Tensor] = {}
        features: dict[int, Tensor] = {}
        for key, value in self.t.items():
            if key.startswith("hidden."):
                hidden[int(key.split(".")[1])] = self._padded(value, idx, batch["input_ids"].shape[1])
            elif key.startswith("features."):
                features[int(key.split(".")[1])] = value[idx]
        logits = self.t["logits"][idx] if "logits" in self.t else None
        if "token_logits" in self.t:
            logits = self._padded(self.t["token_logits"], idx, batch["input_ids"].shape[1])
        return Outputs(
            logits=logits.to(device) if logits is not None else None,
            embedding=self.t["embedding"][idx].to(device) if "embedding" in self.t else None,
            hidden_states=_sparse_tuple(hidden, device), features=_sparse_tuple(features, device),
            attention_mask=batch.get("attention_mask"))

    @staticmethod
    def _padded(table: dict[str, Tensor], idx: Tensor, length: int) -> Tensor:
        flat, offsets = table["flat"], table["offsets"]
        out = torch.zeros(len(idx), length, flat.shape[1])
        for row, i in enumerate(idx.tolist()):
            start, end = int(offsets[i]), int(offsets[i + 1])
            out[row, : end - start] = flat[start:end]
        return out


def _sparse_tuple(by_index: dict[int, Tensor], device: torch.device) -> tuple:
    """A tuple indexed like Outputs' (layer i at position i); layers no loss reads are None."""
    if not by_index:
        return ()
    return tuple(by_index[i].to(device) if i in by_index else None for i in range(max(by_index) + 1))
