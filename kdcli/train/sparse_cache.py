"""The causal-LM teacher cache: per learned token, the teacher's top-k log-probabilities and one tail bucket.

Full logits cost vocabulary × 4 bytes a token (196 KB for SmolLM2); k ids and k + 1 log-probs cost 8k + 4.
The tail bucket holds the mass outside the top k, so each token's cached distribution sums to one and the
losses compare the student, bucketed the same way, with a true distribution (kdcli/losses/functional.py).
Stored once as flat tables with per-sample offsets, memory-mapped on every later use.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcli.data.splits import Split, to_device
from kdcli.errors import BadInput
from kdcli.losses.functional import bucket_log_probs
from kdcli.models import Adapter, Outputs
from kdcli.runtime.files import atomic_path

SERVES = frozenset({"hinton", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"})


def refuse_unserved(losses: nn.ModuleList) -> None:
    """Only next-token divergences at temperature 1 read the sparse cache."""
    unserved = sorted({loss.kind for loss in losses if loss.teacher_needs and loss.kind not in SERVES})
    if unserved:
        raise BadInput(f"train.cache_teacher on causal-lm keeps the teacher's top-k log-probs; it cannot serve "
                       f"{', '.join(unserved)}", hint="set train.cache_teacher: false for this profile")
    warm = sorted({loss.kind for loss in losses if loss.kind in SERVES and loss.spec.temperature != 1.0})
    if warm:
        raise BadInput(f"train.cache_teacher on causal-lm stores log-probs at temperature 1; {', '.join(warm)} "
                       "sets another temperature", hint="set the temperature to 1, or train.cache_teacher: false")


class SparseLogitCache:
    """Top-k teacher log-probs for the learned tokens of a split, indexed by sample."""

    def __init__(self, tables: dict[str, Tensor]) -> None:
        self.ids, self.log_probs, self.offsets = tables["ids"], tables["log_probs"], tables["offsets"]

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def bytes_per_token(self) -> int:
        return self.ids.element_size() * self.k + self.log_probs.element_size() * (self.k + 1)

    @classmethod
    def load_or_build(cls, teacher: Adapter, split: Split, losses: nn.ModuleList, batch_size: int,
                      device: torch.device, path: Path, k: int) -> SparseLogitCache:
        if path.is_file():  # a resumed run: the teacher and data are those of the lock file
            return cls(torch.load(path, mmap=True, weights_only=True))
        refuse_unserved(losses)
        tables = build_tables(teacher, split, batch_size, device, k)
        with atomic_path(path) as tmp:
            torch.save(tables, tmp)
        return cls(torch.load(path, mmap=True, weights_only=True))

    def outputs(self, indices: Tensor, batch: dict[str, Tensor], device: torch.device) -> Outputs:
        """The batch's learned-token rows, in the row-major order a loss mask selects them."""
        rows = [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices.tolist()]
        ids = torch.cat([self.ids[a:b] for a, b in rows])
        log_probs = torch.cat([self.log_probs[a:b] for a, b in rows])
        learned = int((batch["labels"] != -100).sum())
        if learned != len(ids):
            raise BadInput(f"the teacher cache holds {len(ids)} tokens for this batch, the data {learned}",
                           hint="the data or max_length changed since the cache was built: delete the run's "
                                "teacher cache, or start a new output folder")
        return Outputs(topk=(ids.to(device), log_probs.to(device)), attention_mask=batch.get("attention_mask"))


@torch.inference_mode()
def build_tables(teacher: Adapter, split: Split, batch_size: int, device: torch.device, k: int) -> dict[str, Tensor]:
    per_sample: dict[int, tuple[Tensor, Tensor]] = {}
    for indices in split.order(batch_size, shuffle=False):
        batch = to_device(split.collate(indices), device)
        logits = teacher.forward(batch, frozenset({"logits"})).logits
        keep = batch["labels"] != -100
        for row, i in enumerate(indices):
            log_p = F.log_softmax(logits[row][keep[row]].float(), dim=-1)
            top = log_p.topk(min(k, log_p.shape[-1]), dim=-1).indices
            per_sample[i] = (top.to(torch.int32).cpu(), bucket_log_probs(log_p, top).cpu())
    counts = torch.tensor([len(per_sample[i][0]) for i in range(split.size)])
    return {"ids": torch.cat([per_sample[i][0] for i in range(split.size)]),
            "log_probs": torch.cat([per_sample[i][1] for i in range(split.size)]),
            "offsets": torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])}
