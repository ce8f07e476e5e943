"""sentence-transformers pipelines: read from a folder, reproduced in kdcli, written beside a student.

A sentence-transformers folder is a transformers checkpoint plus modules.json, which lists the modules
that turn token embeddings into a sentence embedding: Transformer (the checkpoint itself, path ""), Pooling
(1_Pooling/config.json) and Normalize (2_Normalize). kdcli reads that list, computes the embedding the
same way (so losses, evaluate and the ONNX `sentence_embedding` output see what SentenceTransformer(folder)
returns), and writes the same files beside a student, so that SentenceTransformer(student) builds the
teacher's pipeline over the student's weights. Both the sentence-transformers 2.x file format
(`pooling_mode_mean_tokens: true`) and the 5.x/6.x one (`pooling_mode: mean`) are read, and written back
as they were found. sentence-transformers itself is not imported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcli.errors import CheckpointError

MODULES_FILE = "modules.json"
ROOT_FILES = ("config_sentence_transformers.json", "sentence_bert_config.json")
# Legacy boolean keys, in the order sentence-transformers concatenates their outputs.
LEGACY_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
MODES = tuple(LEGACY_MODES.values())
DIMENSION_KEYS = ("word_embedding_dimension", "embedding_dimension")
KINDS = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class Pipeline:
    """The modules after the transformer: pooling mode(s), normalization, max length, and the files as read."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = None
    do_lower_case: bool = False
    files: dict[str, Any] = field(default_factory=dict)  # relative path -> JSON content, written back as is
    folders: tuple[str, ...] = ()                         # module folders (created even when they hold no file)

    def embed(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        """The sentence embedding of [B, L, D] token embeddings with a right-padded [B, L] mask."""
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        pooled = torch.cat([_pool(mode, hidden, mask) for mode in self.modes], dim=-1)
        return F.normalize(pooled, p=2.0, dim=-1) if self.normalize else pooled

    def for_width(self, width: int) -> Pipeline:
        """The same pipeline over a transformer of another hidden size (pooling configs say it)."""
        files = {name: ({**content, **{k: width for k in DIMENSION_KEYS if k in content}}
                        if isinstance(content, dict) and name.endswith("config.json") and name != "config.json"
                        else content) for name, content in self.files.items()}
        return replace(self, files=files)

    def write(self, folder: Path) -> None:
        """The pipeline's files into a saved transformers folder (which holds the Transformer module)."""
        folder = Path(folder)
        for name in self.folders:
            (folder / name).mkdir(parents=True, exist_ok=True)
        for name, content in self.files.items():
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")

    def describe(self) -> dict[str, Any]:
        return {"pooling": list(self.modes), "normalize": self.normalize, "max_seq_length": self.max_seq_length}


def read_pipeline(path: Path) -> Pipeline | None:
    """The pipeline a sentence-transformers folder declares (None for a plain transformers folder).

    CheckpointError for a module kdcli cannot reproduce (Dense, a custom module, a Transformer in a
    subfolder): a student that silently dropped it would return other vectors than the teacher's pipeline.
    """
    path = Path(path)
    modules_file = path / MODULES_FILE
    if not modules_file.is_file():
        return None
    modules = _json(modules_file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{modules_file}: not a sentence-transformers module list",
                              hint="the folder should come from SentenceTransformer.save()")
    files: dict[str, Any] = {MODULES_FILE: modules}
    modes: tuple[str, ...] = ()
    normalize, folders = False, []
    for index, module in enumerate(sorted(modules, key=lambda m: int(m.get("idx", 0)))):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        where = str(module.get("path", "") or "")
        if kind not in KINDS or (kind == "Transformer") != (index == 0) or (kind == "Transformer" and where):
            raise CheckpointError(f"{modules_file}: module {index} is {module.get('type')!r} at {where or '.'!r}; "
                                  "kdcli reproduces a Transformer (in the folder itself), then Pooling and "
                                  "Normalize modules",
                                  hint="distil the transformer and pooling only: remove the other modules from "
                                       "modules.json in a copy of the folder")
        if kind == "Pooling":
            config = _json(path / where / "config.json")
            files[f"{where}/config.json"] = config
            modes += _modes(config, path / where / "config.json")
        elif kind == "Normalize":
            normalize = True
            folders.append(where)
            if (path / where / "config.json").is_file():
                files[f"{where}/config.json"] = _json(path / where / "config.json")
    for name in ROOT_FILES:
        if (path / name).is_file():
            files[name] = _json(path / name)
    bert = files.get("sentence_bert_config.json") or {}
    max_length = bert.get("max_seq_length") if isinstance(bert, dict) else None
    return Pipeline(modes=modes or ("mean",), normalize=normalize,
                    max_seq_length=int(max_length) if isinstance(max_length, int) else None,
                    do_lower_case=bool(isinstance(bert, dict) and bert.get("do_lower_case")),
                    files=files, folders=tuple(folders))


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (modules.json names its module)",
                              hint="the folder should come from SentenceTransformer.save()") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None


def _modes(config: Any, where: Path) -> tuple[str, ...]:
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: not a pooling config")
    mode = config.get("pooling_mode")
    if mode is None:
        found = tuple(name for key, name in LEGACY_MODES.items() if config.get(key))
        modes: Sequence[str] = found or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise CheckpointError(f"{where}: pooling mode {unknown[0]!r} is not one of {', '.join(MODES)}")
    if config.get("include_prompt") is False:
        raise CheckpointError(f"{where}: include_prompt false (prompts left out of pooling) is not reproduced by "
                              "kdcli", hint="distil a pipeline that pools every token")
    return tuple(modes)


def _pool(mode: str, hidden: Tensor, mask: Tensor) -> Tensor:
    """sentence-transformers' Pooling._forward_padded, for right-padded batches without prompts."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        first = mask.to(torch.int32).argmax(dim=1)
        return torch.gather(hidden, 1, first.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
    if mode == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    if mode in ("mean", "mean_sqrt_len_tokens"):
        count = weights.sum(dim=1).clamp(min=1e-9)
        return (hidden * weights).sum(dim=1) / (count if mode == "mean" else count.sqrt())
    if mode == "weightedmean":
        positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype).view(1, -1, 1)
        positions = positions - mask.to(torch.int32).argmax(dim=1).to(hidden.dtype).view(-1, 1, 1)
        weighted = weights * positions
        return (hidden * weighted).sum(dim=1) / weighted.sum(dim=1).clamp(min=1e-9)
    # lasttoken: the last position the mask keeps
    values, flipped = mask.flip(1).max(1)
    flipped = torch.where(values == 0, hidden.shape[1] - 1, flipped)
    last = (hidden.shape[1] - flipped - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return torch.gather(hidden * weights, 1, last).squeeze(1)
