"""Feature-based losses: match intermediate representations, layer to layer."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from kdcli.errors import BadInput
from kdcli.losses import functional as KF
from kdcli.losses.base import DistillLoss, projection
from kdcli.losses.layermap import resolve_map
from kdcli.losses.specs import (
    AttentionMseSpec,
    AttentionTransferSpec,
    EmbeddingMseSpec,
    FitnetSpec,
    HiddenCosineSpec,
    HiddenMseSpec,
)
from kdcli.models.base import Adapter, Outputs


class _Mapped(DistillLoss):
    """A loss over pairs (student index -> teacher index) with an optional learned projection each."""

    map_field = "layers"
    zero_based = False       # timm stages count from 0; transformer hidden states 0 = embeddings
    allow_zero = True
    learns_projection = False

    def __init__(self, spec: Any, mapping: dict[int, int], projections: nn.ModuleDict) -> None:
        super().__init__(spec)
        self.mapping = mapping
        self.projections = projections

    @classmethod
    def build(cls, spec: Any, student: Adapter, teacher: Adapter | None) -> DistillLoss:
        if teacher is None:
            raise BadInput(f"loss '{cls.kind}' needs a teacher", hint="add a teacher: section to the profile")
        mapping = resolve_map(getattr(spec, cls.map_field), student.depth, teacher.depth,
                              field=f"distill.losses[{cls.kind}].{cls.map_field}",
                              zero_based=cls.zero_based, allow_zero=cls.allow_zero)
        projections = nn.ModuleDict()
        if cls.learns_projection:
            for s, t in mapping.items():
                projections[str(s)] = cls.make_projection(student.width(s), teacher.width(t))
        return cls(spec, mapping, projections)

    @staticmethod
    def make_projection(student_width: int, teacher_width: int) -> nn.Module:
        return projection(student_width, teacher_width)

    def project(self, index: int, x: Tensor) -> Tensor:
        return self.projections[str(index)](x) if str(index) in self.projections else x

    def pairs(self, student: tuple[Tensor, ...], teacher: tuple[Tensor, ...], offset: int = 0
              ) -> list[tuple[int, Tensor, Tensor]]:
        return [(s, student[s - offset], teacher[t - offset]) for s, t in self.mapping.items()]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "map": {str(k): v for k, v in self.mapping.items()},
                "learned_params": sum(p.numel() for p in self.parameters())}


class HiddenCosine(_Mapped, spec=HiddenCosineSpec):
    """1 − cos(student, teacher) per token, mean over real tokens (DistilBERT).
    YAML: `- {kind: hidden_cosine, weight: 1.0, layers: {3: 6}}` (or uniform / last)"""

    learns_projection = True

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        terms = [KF.cosine_embedding(self.project(i, s), t, student.attention_mask)
                 for i, s, t in self.pairs(student.hidden_states, teacher.hidden_states)]
        return sum(terms) / len(terms)


class HiddenMse(_Mapped, spec=HiddenMseSpec):
    """MSE between hidden states, student projected by a learned Linear when widths differ (TinyBERT).
    YAML: `- {kind: hidden_mse, weight: 1.0, layers: uniform}`; `mask: true` averages over real tokens only."""

    learns_projection = True

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        mask = student.attention_mask if getattr(self.spec, "mask", False) else None
        terms = [KF.hidden_mse(self.project(i, s), t, mask)
                 for i, s, t in self.pairs(student.hidden_states, teacher.hidden_states)]
        return sum(terms)


class EmbeddingMse(HiddenMse, spec=EmbeddingMseSpec):
    """MSE between embedding-layer outputs, hidden_states[0] (TinyBERT).
    YAML: `- {kind: embedding_mse, weight: 1.0}`"""

    @classmethod
    def build(cls, spec: Any, student: Adapter, teacher: Adapter | None) -> DistillLoss:
        if teacher is None:
            raise BadInput("loss 'embedding_mse' needs a teacher", hint="add a teacher: section to the profile")
        return cls(spec, {0: 0}, nn.ModuleDict({"0": projection(student.width(0), teacher.width(0))}))


class AttentionMse(_Mapped, spec=AttentionMseSpec):
    """MSE between pre-softmax attention scores, masked entries zeroed (TinyBERT).
    YAML: `- {kind: attention_mse, weight: 1.0, layers: uniform}` (layers count from 1)"""

    allow_zero = False

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        terms = []
        for _, s, t in self.pairs(student.attention_scores, teacher.attention_scores, offset=1):
            if s.shape[1] != t.shape[1]:  # different head counts: compare head-averaged maps
                s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
            terms.append(KF.attention_mse(s, t))
        return sum(terms)


class Fitnet(_Mapped, spec=FitnetSpec):
    """FitNet hint: a learned 1x1-conv regressor maps student features to the teacher's (Romero 2015).
    YAML: `- {kind: fitnet, weight: 1.0, stages: {3: 4}}` (timm stages count from 0)"""

    map_field = "stages"
    zero_based = True
    learns_projection = True

    @staticmethod
    def make_projection(student_width: int, teacher_width: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(student_width, teacher_width, 1, bias=False), nn.BatchNorm2d(teacher_width))

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        terms = []
        for i, s, t in self.pairs(student.features, teacher.features):
            s = self.project(i, s)
            if s.shape[-2:] != t.shape[-2:]:
                s = F.adaptive_avg_pool2d(s, t.shape[-2:])
            terms.append(KF.fitnet_hint(s, t))
        return sum(terms)


class AttentionTransfer(_Mapped, spec=AttentionTransferSpec):
    """Attention transfer on spatial attention maps (Zagoruyko & Komodakis 2017).
    YAML: `- {kind: attention_transfer, weight: 1000, stages: uniform, p: 2}`"""

    map_field = "stages"
    zero_based = True

    def forward(self, student: Outputs, teacher: Outputs | None, batch: dict[str, Tensor]) -> Tensor:
        terms = [KF.attention_transfer(s, t, p=self.spec.p)
                 for _, s, t in self.pairs(student.features, teacher.features)]
        return sum(terms)
