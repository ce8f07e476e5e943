"""Each loss kind's declaration, without torch: its YAML fields and what it asks of a run.

The profile schema's loss union is made of these classes, and each torch module binds to its kind's class
(`class Hinton(DistillLoss, spec=HintonSpec)`), so a kind is declared once, here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field

LayerMap = Union[dict[int, int], Literal["uniform", "last"]]
Cacheable = Literal["always", "images-only", "never"]


class Strict(BaseModel):
    """A profile section: unknown keys are refused, and so are non-finite numbers."""

    # allow_inf_nan=False: `.inf` or `nan` would pass an unbounded `ge=0` and surface as a NaN loss at step 1.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


LOSS_SPECS: dict[str, type[LossSpecBase]] = {}


class LossSpecBase(Strict):
    """An item of `distill.losses`. A subclass with a `kind` declares that kind: its fields, what it reads from
    each model (a kind that reads nothing of the teacher runs without one), whether it reads the labels, and
    where the teacher cache can serve it (`images-only`: text padding or masking changes the teacher's side)."""

    student_needs: ClassVar[frozenset[str]] = frozenset()
    teacher_needs: ClassVar[frozenset[str]] = frozenset()
    uses_labels: ClassVar[bool] = False
    cacheable: ClassVar[Cacheable] = "always"

    weight: float = Field(1.0, ge=0.0, le=1e6)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "kind" in cls.model_fields:
            kind = kind_of(cls)
            if kind in LOSS_SPECS:
                raise ValueError(f"loss kind '{kind}' is declared twice")
            LOSS_SPECS[kind] = cls

    @classmethod
    def cacheable_on(cls, data: str) -> bool:
        """Whether the teacher cache can serve this kind on `text` or `image` data."""
        return cls.cacheable == "always" or (cls.cacheable == "images-only" and data != "text")

    def cache_serves(self, data: str) -> bool:
        """Whether the cache can serve this configured loss: a field (hidden_mse's `mask`) may allow more."""
        return self.cacheable_on(data)


def kind_of(spec: type[LossSpecBase]) -> str:
    """The `kind:` value that selects this spec."""
    (kind,) = get_args(spec.model_fields["kind"].annotation)
    return kind


class CeSpec(LossSpecBase):
    """Hard-label cross entropy."""

    kind: Literal["ce"]
    student_needs = frozenset({"logits"})
    uses_labels = True

    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class HintonSpec(LossSpecBase):
    """Soft targets."""

    kind: Literal["hinton"]
    student_needs = teacher_needs = frozenset({"logits"})

    temperature: float = Field(4.0, gt=0.0, le=100.0)
    chunk_tokens: int = Field(2048, ge=1, le=2**24, description="[B, L, V] logits: tokens per chunk")


class DkdSpec(LossSpecBase):
    """Decoupled KD."""

    kind: Literal["dkd"]
    student_needs = teacher_needs = frozenset({"logits"})
    uses_labels = True

    alpha: float = Field(1.0, ge=0.0, le=1e6)
    beta: float = Field(8.0, ge=0.0, le=1e6)
    temperature: float = Field(4.0, gt=0.0, le=100.0)


class HiddenCosineSpec(LossSpecBase):
    """Hidden-state direction, per real token."""

    kind: Literal["hidden_cosine"]
    student_needs = teacher_needs = frozenset({"hidden_states"})

    layers: LayerMap = "last"


class HiddenMseSpec(LossSpecBase):
    """Hidden states, padding included (TinyBERT); `mask: true` counts real tokens only."""

    kind: Literal["hidden_mse"]
    student_needs = teacher_needs = frozenset({"hidden_states"})
    cacheable = "images-only"

    layers: LayerMap = "uniform"
    mask: bool = False

    def cache_serves(self, data: str) -> bool:
        # Without padding in the mean, a token's term no longer depends on how its batch was padded.
        return self.mask or super().cache_serves(data)


class EmbeddingMseSpec(LossSpecBase):
    """The embedding layer's output, padding included."""

    kind: Literal["embedding_mse"]
    student_needs = teacher_needs = frozenset({"hidden_states"})
    cacheable = "images-only"


class AttentionMseSpec(LossSpecBase):
    """Pre-softmax attention scores."""

    kind: Literal["attention_mse"]
    student_needs = teacher_needs = frozenset({"attention_scores"})
    cacheable = "images-only"

    layers: LayerMap = "uniform"


class FitnetSpec(LossSpecBase):
    """Feature hints through a learned regressor."""

    kind: Literal["fitnet"]
    student_needs = teacher_needs = frozenset({"features"})

    stages: LayerMap = "last"


class AttentionTransferSpec(LossSpecBase):
    """Spatial attention maps."""

    kind: Literal["attention_transfer"]
    student_needs = teacher_needs = frozenset({"features"})

    stages: LayerMap = "uniform"
    p: float = Field(2.0, gt=0.0, le=8.0)


class RkdSpec(LossSpecBase):
    """Distances and angles between the batch's embeddings."""

    kind: Literal["rkd"]
    student_needs = teacher_needs = frozenset({"embedding"})

    distance_weight: float = Field(25.0, ge=0.0, le=1e6)
    angle_weight: float = Field(50.0, ge=0.0, le=1e6)


class SimilaritySpec(LossSpecBase):
    """The batch's similarity matrix."""

    kind: Literal["similarity"]
    student_needs = teacher_needs = frozenset({"embedding"})


class EmbeddingCosineSpec(LossSpecBase):
    """The pooled (sentence) embedding's direction: what an embedding model is scored on."""

    kind: Literal["embedding_cosine"]
    student_needs = teacher_needs = frozenset({"embedding"})


class MlmSpec(LossSpecBase):
    """Masked-LM cross entropy on randomly masked inputs."""

    kind: Literal["mlm"]
    student_needs = frozenset({"logits"})
    cacheable = "never"

    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)


# --- token-level divergences for causal LMs (kdcli/losses/token.py) ---------------------------------------


class TokenSpecBase(LossSpecBase):
    """A divergence per real (completion) token between student and teacher next-token distributions."""

    student_needs = teacher_needs = frozenset({"logits"})

    temperature: float = Field(1.0, gt=0.0, le=100.0)
    chunk_tokens: int = Field(2048, ge=1, le=2**24, description="tokens per chunk: memory is chunk × vocabulary")


class ReverseKlSpec(TokenSpecBase):
    """KL(student || teacher), mode-seeking (MiniLLM)."""

    kind: Literal["reverse_kl"]


class JsdSpec(TokenSpecBase):
    """Generalized Jensen-Shannon divergence with β (TRL GKD)."""

    kind: Literal["jsd"]

    beta: float = Field(0.5, ge=0.0, le=1.0)


class SkewKlSpec(TokenSpecBase):
    """KL(teacher || α·teacher + (1 − α)·student) (DistiLLM)."""

    kind: Literal["skew_kl"]

    alpha: float = Field(0.1, ge=0.0, le=1.0)


class SkewReverseKlSpec(TokenSpecBase):
    """KL(student || α·student + (1 − α)·teacher) (DistiLLM)."""

    kind: Literal["skew_reverse_kl"]

    alpha: float = Field(0.1, ge=0.0, le=1.0)


class TvdSpec(TokenSpecBase):
    """Total variation distance."""

    kind: Literal["tvd"]
