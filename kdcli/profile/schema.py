"""The profile schema: the single source of truth for what a profile may say (pydantic, strict)."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, field_validator, model_validator

from kdcli.errors import ProfileDeprecation
from kdcli.losses.specs import LOSS_SPECS, CeSpec, LossSpecBase, Strict
from kdcli.tasks import Task

COUNT_MAX = 2**31 - 1  # counts beyond this overflow the C ints they reach (torch, tokenizers)
CLASSES_MAX = 1_000_000


def _path_text(value: Any) -> Any:
    """A path as written in the profile: refused here if no file system could ever open it."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("empty path")  # Path("") is ".", the profile's own folder: never meant
        if "\x00" in value:
            raise ValueError("a path cannot contain a NUL byte")
        raw = value.encode("utf-8", "surrogatepass")
        if len(raw) > 4000 or any(len(part) > 255 for part in raw.split(b"/")):
            raise ValueError("path longer than the file system allows (255 bytes a name, 4000 in all)")
    return value


PathText = Annotated[Path, BeforeValidator(_path_text)]
DataPath = Annotated[str, BeforeValidator(_path_text)]


# --- models -----------------------------------------------------------------------------------


class TeacherSpec(Strict):
    source: Literal["transformers", "timm"] = "transformers"
    path: PathText
    arch: str | None = Field(None, description="timm architecture name, for a bare weights file")
    num_classes: int | None = Field(None, ge=1, le=CLASSES_MAX)


class PruneSpec(Strict):
    """Width pruning (Minitron): sizes every layer keeps, ranked by activation importance on calibration data."""
    heads: int | None = Field(None, ge=1, le=100_000, description="attention (query) heads per layer")
    ffn: int | None = Field(None, ge=1, le=10_000_000, description="MLP intermediate neurons per layer")
    hidden: int | None = Field(None, ge=1, le=1_000_000, description="hidden (embedding) channels")
    calibration_samples: int = Field(512, ge=1, le=1_000_000,
                                     description="rows of data.transfer (else data.train) to rank by")


class StudentInit(Strict):
    layers: list[Annotated[int, Field(ge=0, le=100_000)]] | str | None = Field(
        None, description="teacher layers to keep (0-based), or every-other | distilbert | first:k | last:k | "
                    "uniform:k (k layers from first to last: uniform:3 of 6 keeps 0, 2, 5) | importance:k "
                    "(the k blocks that change their input most, measured on calibration data)"
    )
    prune: PruneSpec | None = Field(None, description="width pruning by activation importance (heads, ffn, hidden)")
    drop: list[Literal["token_type_embeddings", "pooler"]] = []
    architecture: str = Field("same", description="same | distilbert (transformers); a timm arch name")
    num_classes: int | None = Field(None, ge=1, le=CLASSES_MAX, description="timm student built without a teacher")
    model_args: dict[str, Any] = Field({}, description="extra timm create_model arguments (drop_path_rate, ...)")
    copy_weights: bool = Field(True, description="timm arch: copy teacher tensors whose name and shape match")


    @model_validator(mode="after")
    def _pooler_only_with_distilbert(self) -> StudentInit:
        # transformers re-creates a missing pooler at random when a same-architecture model loads
        if "pooler" in self.drop and self.architecture != "distilbert":
            raise ValueError("drop: [pooler] needs architecture: distilbert (a same-architecture student keeps its "
                             "pooler: transformers would re-create a dropped one at random when it loads)")
        if self.prune is not None and self.architecture != "same":
            raise ValueError(f"prune needs architecture: same (it slices the teacher's own architecture), "
                             f"not {self.architecture}")
        return self


class StudentSpec(Strict):
    path: PathText
    init: StudentInit = StudentInit()


# --- losses: each kind declares itself in kdcli/losses/specs.py -------------------------------


if TYPE_CHECKING:
    LossSpec = LossSpecBase
else:
    LossSpec = Annotated[Union[tuple(LOSS_SPECS.values())], Field(discriminator="kind")]
LOSS_KINDS = list(LOSS_SPECS)


class StageSpec(Strict):
    name: str
    losses: list[LossSpec] = Field(min_length=1)
    epochs: float | None = Field(None, gt=0, le=10_000)
    lr: float | None = Field(None, gt=0.0, le=10.0)


class DistillSpec(Strict):
    losses: list[LossSpec] = []
    stages: list[StageSpec] = []


# --- data, training, outputs ------------------------------------------------------------------


class DataSpec(Strict):
    train: DataPath | None = None
    eval: DataPath | None = None
    unlabeled: DataPath | None = None
    pseudo: DataPath | None = None
    transfer: DataPath | None = Field(None, description="unlabeled inputs the student learns the teacher's outputs on")
    transfer_ratio: float = Field(1.0, gt=0.0, le=100.0, description="transfer samples per labelled one in a batch")
    text_column: str = "sentence"
    text_pair_column: str | None = Field(None, description="the second text of a pair (NLI, paraphrase, "
                                                           "cross-encoders), tokenized as the teacher pairs texts")
    label_column: str = "label"
    max_length: int = Field(128, ge=4, le=8192)
    image_size: int | None = Field(None, ge=8, le=4096)
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="hold out this share of train when eval is unset")
    limit: int | None = Field(None, ge=1, le=COUNT_MAX, description="use only the first N rows of each data file")
    # causal-lm: a .jsonl row holds `text`, a prompt/completion pair, or chat `messages` (see docs/profile.md)
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"
    classes: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=1, max_length=CLASSES_MAX,
        description="class names in output order, for a model trained from labels (default: the teacher's, "
                    "else the sorted distinct training labels)")

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[str] | None) -> list[str] | None:
        twice = [name for name, n in Counter(value or []).items() if n > 1]
        if twice:
            raise ValueError(f"class {twice[0]!r} is listed twice")
        return value


class NoiseSpec(Strict):
    """Input noise for the student only (Noisy Student); the teacher sees clean inputs."""

    token_mask: float = Field(0.0, ge=0.0, le=0.5, description="share of tokens replaced by [MASK]")
    randaugment: bool = False
    randaugment_magnitude: int = Field(9, ge=0, le=30)


class AugmentSpec(Strict):
    """Consistent augmentation: teacher and student see the same augmented view (Beyer et al. 2022)."""

    token_mask: float = Field(0.0, ge=0.0, le=0.5, description="share of tokens replaced by [MASK]")
    randaugment: bool = False
    randaugment_magnitude: int = Field(9, ge=0, le=30)
    mixup: float = Field(0.0, ge=0.0, le=10.0, description="mixup alpha (timm Mixup); 0 = off")
    cutmix: float = Field(0.0, ge=0.0, le=10.0, description="cutmix alpha (timm Mixup); 0 = off")

    def active(self) -> bool:
        return bool(self.token_mask or self.randaugment or self.mixup or self.cutmix)


class TrainSpec(Strict):
    epochs: float = Field(3.0, gt=0, le=10_000)
    max_steps: int | None = Field(None, ge=1, le=COUNT_MAX)
    batch_size: int = Field(32, ge=1, le=65_536)
    grad_accum: int = Field(1, ge=1, le=4096)
    lr: float = Field(5e-5, gt=0.0, le=10.0)
    weight_decay: float = Field(0.01, ge=0.0, le=10.0)
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    seed: int = Field(0, ge=0, le=2**32 - 1)
    eval_every: int | None = Field(None, ge=1, le=COUNT_MAX,
                                   description="steps between evaluations; default: every epoch")
    log_every: int = Field(10, ge=1, le=COUNT_MAX)
    checkpoint_every: int | None = Field(None, ge=1, le=COUNT_MAX,
                                         description="steps between checkpoints; default: eval time")
    cache_teacher: bool = False
    cache_topk: int = Field(64, ge=1, le=65_536,
                            description="causal-lm cache: the teacher's top-k log-probs per token, plus a tail bucket")
    noise: NoiseSpec = NoiseSpec()
    augment: AugmentSpec = AugmentSpec()
    threads: int | None = Field(None, ge=1, le=1024)
    report_to: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="experiment trackers fed every metrics.jsonl record")


class OnnxSpec(Strict):
    """What only the ONNX target reads (kdcli/onnx/target.py)."""

    opset: int = Field(18, ge=13, le=23)


class TargetSpec(Strict):
    """kdcli compress's goal (each field also a command-line option, which wins)."""

    speedup: float | None = Field(None, gt=0.0, le=10_000, description="teacher p50 / student p50, onnxruntime")
    latency_ms: float | None = Field(None, gt=0.0, description="student p50 in onnxruntime")
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field([1], min_length=1)
    max_drop: float = Field(0.01, ge=0.0, le=1.0, description="primary metric: teacher minus student (1 - cosine)")
    max_size_mb: float | None = Field(None, gt=0.0)
    max_trials: int = Field(2, ge=1, le=100, description="shapes distilled before compress gives up (an int8 "
                            "twin shares its shape's training)")


class ExportSpec(Strict):
    """What every export target reads (parity tolerance, latency batch sizes), and each target's own section."""

    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = [1, 8, 32]
    atol: float | None = Field(None, ge=0.0)
    onnx: OnnxSpec = OnnxSpec()

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: Any) -> Any:
        # export.opset moved under export.onnx: an older profile still loads, and says so once.
        if isinstance(data, dict) and "opset" in data:
            data = dict(data)
            onnx = data.get("onnx") if isinstance(data.get("onnx"), dict) else {}
            data["onnx"] = {"opset": data.pop("opset"), **onnx}
            warnings.warn("export.opset has moved to export.onnx.opset (read from the old place for now)",
                          ProfileDeprecation, stacklevel=2)
        return data


class PseudoSpec(Strict):
    threshold: float = Field(0.0, ge=0.0, le=1.0)
    balance: bool = False
    per_class: int | None = Field(None, ge=1, le=COUNT_MAX)
    soft: bool = True
    topk: int = Field(5, ge=1, le=CLASSES_MAX)
    temperature: float = Field(1.0, gt=0.0, le=100.0)
    ratio: float = Field(1.0, ge=0.0, le=100.0, description="pseudo-labeled samples per labeled one in a batch")
    # causal-lm: sequence-level KD, the teacher's completions for the prompts
    max_new_tokens: int = Field(64, ge=1, le=8192)
    do_sample: bool = Field(False, description="sample (seeded by train.seed, at `temperature`) instead of greedy")


class Profile(Strict):
    name: str = Field(min_length=1, max_length=200)
    task: Task = Field(description="a declared task (kdcli/tasks): sequence-classification | image-classification | "
                                   "masked-lm | embedding | causal-lm")
    teacher: TeacherSpec | None = None
    student: StudentSpec
    data: DataSpec = DataSpec()
    distill: DistillSpec = DistillSpec()
    train: TrainSpec = TrainSpec()
    output: PathText
    export: ExportSpec = ExportSpec()
    pseudo: PseudoSpec = PseudoSpec()
    target: TargetSpec = TargetSpec()
    source_file: Path | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name_is_a_word(cls, value: str) -> str:
        if any(c in value for c in "/\\\n"):
            raise ValueError("name may not contain slashes or newlines")
        if not value.isprintable():  # it lands in file names, logs and terminals
            raise ValueError("name may not contain control characters")
        return value

    @model_validator(mode="after")
    def _pairs_for_the_task(self) -> Profile:
        if self.data.text_pair_column is not None and not self.task.text_pairs:
            raise ValueError(f"data.text_pair_column: task {self.task} reads one text per example (text pairs: "
                             "sequence-classification)")
        return self

    def loss_specs(self) -> list[LossSpec]:
        """Every loss the job uses, across stages."""
        return [loss for stage in self.stages() for loss in stage.losses]

    def stages(self) -> list[StageSpec]:
        """The training stages in order; a plain `losses:` list is one stage."""
        if self.distill.stages:
            return self.distill.stages
        return [StageSpec(name="distill", losses=self.distill.losses or [CeSpec(kind="ce")])]

    def inputs(self) -> dict[str, Path]:
        """Every file or folder the profile reads, by field (the profile itself as `profile`)."""
        found = {"teacher.path": self.teacher.path if self.teacher else None, "student.path": self.student.path,
                 "profile": self.source_file}
        for field in ("train", "eval", "unlabeled", "pseudo", "transfer"):
            found[f"data.{field}"] = getattr(self.data, field)
        return {field: Path(value) for field, value in found.items() if value is not None}

    def needs_teacher(self) -> bool:
        """Whether some loss reads the teacher's outputs."""
        return any(loss.teacher_needs for loss in self.loss_specs())


