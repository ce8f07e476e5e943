"""Relation-based losses: match how the teacher relates the samples of a batch to each other."""

from __future__ import annotations

from torch import Tensor

from kdcli.losses import functional as KF
from kdcli.losses.base import DistillLoss
from kdcli.losses.specs import RkdSpec, SimilaritySpec
from kdcli.models.base import Outputs


class Rkd(DistillLoss, spec=RkdSpec):
    """Relational KD: distance·25 + angle·50 on pooled embeddings (Park et al. 2019).
    YAML: `- {kind: rkd, weight: 1.0, distance_weight: 25, angle_weight: 50}`"""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        s, t = student.embedding, teacher.embedding
        return (self.spec.distance_weight * KF.rkd_distance(s, t)
                + self.spec.angle_weight * KF.rkd_angle(s, t))


class Similarity(DistillLoss, spec=SimilaritySpec):
    """Similarity-preserving KD: batch Gram matrices match (Tung & Mori 2019).
    YAML: `- {kind: similarity, weight: 1.0}`"""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        return KF.similarity_preserving(student.embedding, teacher.embedding)
