"""Response-based losses: match the teacher's outputs (logits, the sentence embedding), or the labels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdcli.errors import BadInput
from kdcli.losses import functional as KF
from kdcli.losses.base import DistillLoss
from kdcli.losses.specs import CeSpec, DkdSpec, EmbeddingCosineSpec, HintonSpec, MlmSpec
from kdcli.losses.token import teacher_side, token_mask
from kdcli.models.base import Outputs


def _labels(batch: dict[str, Tensor], kind: str) -> Tensor:
    if "labels" not in batch:
        raise BadInput(f"loss '{kind}' needs labels, and this data has none",
                       hint="set data.label_column, or drop the loss")
    return batch["labels"]


class CrossEntropy(DistillLoss, spec=CeSpec):
    """Hard-label cross entropy (ignore_index -100). YAML: `- {kind: ce, weight: 0.1}`"""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        logits, labels = student.logits, _labels(batch, self.kind)
        if labels.is_floating_point():  # mixup/cutmix (train.augment): mixed soft targets [B, C]
            return F.cross_entropy(logits, labels, label_smoothing=self.spec.label_smoothing)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=-100, label_smoothing=self.spec.label_smoothing)


class Hinton(DistillLoss, spec=HintonSpec):
    """KL(softmax(t/T) || softmax(s/T)) · T² (Hinton et al. 2015).
    YAML: `- {kind: hinton, weight: 0.9, temperature: 4.0}`"""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        s, logits = self.spec, student.logits
        teacher_logits = teacher_side(teacher)
        return KF.token_loss(logits, teacher_logits, "forward_kl", token_mask(batch, logits), temperature=s.temperature,
                             chunk_tokens=s.chunk_tokens) * s.temperature**2


class Dkd(DistillLoss, spec=DkdSpec):
    """Decoupled KD: α·TCKD + β·NCKD (Zhao et al. 2022).
    YAML: `- {kind: dkd, alpha: 1.0, beta: 8.0, temperature: 4.0}`"""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        s = self.spec
        return KF.dkd(student.logits, teacher.logits, _labels(batch, self.kind), s.alpha, s.beta, s.temperature)


class EmbeddingCosine(DistillLoss, spec=EmbeddingCosineSpec):
    """Mean over the batch of 1 − cos(student embedding, teacher embedding): the pooled (and, with a
    sentence-transformers pipeline, normalised) vector the model serves, as sentence-transformers' own
    distillation recipe matches it. YAML: `- {kind: embedding_cosine, weight: 1.0}`"""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        return KF.cosine_embedding(student.embedding, teacher.embedding)


class MaskedLM(DistillLoss, spec=MlmSpec):
    """Masked-LM cross entropy on the masked positions (DistilBERT's L_mlm); the loop masks the
    input (15%, 80/10/10) for teacher and student alike. YAML: `- {kind: mlm, weight: 2.0}`"""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        logits, labels = student.logits, batch["mlm_labels"]
        if not (labels != -100).any():  # a batch with no masked token (short rows): nothing to learn here
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
