"""Token-level losses for causal LMs: a divergence per learned token, mean over tokens, in chunks.

The teacher side is full logits, or the sparse cache's top-k log-probs plus a tail bucket (train.cache_teacher).
"""

from __future__ import annotations

from torch import Tensor

from kdcli.losses import functional as KF
from kdcli.losses.base import DistillLoss
from kdcli.losses.specs import JsdSpec, ReverseKlSpec, SkewKlSpec, SkewReverseKlSpec, TvdSpec
from kdcli.models.base import Outputs


def token_mask(batch: dict[str, Tensor], logits: Tensor) -> Tensor | None:
    """The rows a per-token loss averages over: tagged words' first sub-tokens (token classification, labelled
    or not), learned tokens (causal-lm labels), else real tokens."""
    if logits.dim() != 3:
        return None
    if "word_mask" in batch:
        return batch["word_mask"]
    labels = batch.get("labels")
    if labels is not None and labels.shape == logits.shape[:2]:
        return labels != -100
    return batch.get("attention_mask")


def teacher_side(teacher: Outputs) -> Tensor | KF.SparseTeacher:
    return teacher.topk if teacher.topk is not None else teacher.logits


class TokenLoss(DistillLoss):
    """Shared forward: the kind's divergence between next-token distributions, masked and chunked."""

    divergence = ""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        s = self.spec
        return KF.token_loss(student.logits, teacher_side(teacher), self.divergence, token_mask(batch, student.logits),
                             temperature=s.temperature, chunk_tokens=s.chunk_tokens,
                             beta=getattr(s, "beta", 0.5), alpha=getattr(s, "alpha", 0.1))


class ReverseKl(TokenLoss, spec=ReverseKlSpec):
    """KL(s || t). YAML: `- {kind: reverse_kl}`"""

    divergence = "reverse_kl"


class Jsd(TokenLoss, spec=JsdSpec):
    """β·KL(t || m) + (1 − β)·KL(s || m), m = β·t + (1 − β)·s. YAML: `- {kind: jsd, beta: 0.5}`"""

    divergence = "jsd"


class SkewKl(TokenLoss, spec=SkewKlSpec):
    """KL(t || α·t + (1 − α)·s). YAML: `- {kind: skew_kl, alpha: 0.1}`"""

    divergence = "skew_kl"


class SkewReverseKl(TokenLoss, spec=SkewReverseKlSpec):
    """KL(s || α·s + (1 − α)·t). YAML: `- {kind: skew_reverse_kl, alpha: 0.1}`"""

    divergence = "skew_reverse_kl"


class Tvd(TokenLoss, spec=TvdSpec):
    """½·Σ|t − s|. YAML: `- {kind: tvd}`"""

    divergence = "tvd"
