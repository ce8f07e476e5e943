"""The profile: one YAML file that describes one compression job.

The pydantic schema below is the single source of truth for what a profile may say. Loading is
strict (unknown keys are errors), every path is relative to the profile file, and `--set a.b=value`
overrides are applied to the raw YAML before validation so they are typed by the same schema.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kdcli.errors import ProfileError

LayerMap = Union[dict[int, int], Literal["uniform", "last"]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- models -----------------------------------------------------------------------------------


class TeacherSpec(Strict):
    source: Literal["transformers", "timm"] = "transformers"
    path: Path
    arch: str | None = Field(None, description="timm architecture name, for a bare weights file")
    num_classes: int | None = Field(None, ge=1)


class StudentInit(Strict):
    layers: list[Annotated[int, Field(ge=0)]] | str | None = Field(
        None, description="teacher layers to keep, or every-other | distilbert | first:k | last:k | uniform:k"
    )
    drop: list[Literal["token_type_embeddings", "pooler"]] = []
    architecture: str = Field("same", description="same | distilbert (transformers); a timm arch name")
    num_classes: int | None = Field(None, ge=1, description="timm student built without a teacher")
    model_args: dict[str, Any] = Field({}, description="extra timm create_model arguments (drop_path_rate, ...)")
    copy_weights: bool = Field(True, description="timm arch: copy teacher tensors whose name and shape match")


class StudentSpec(Strict):
    path: Path
    init: StudentInit = StudentInit()


# --- losses -----------------------------------------------------------------------------------


class LossBase(Strict):
    weight: float = Field(1.0, ge=0.0, le=1e6)


class CeLoss(LossBase):
    kind: Literal["ce"]
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class HintonLoss(LossBase):
    kind: Literal["hinton"]
    temperature: float = Field(4.0, gt=0.0, le=100.0)


class DkdLoss(LossBase):
    kind: Literal["dkd"]
    alpha: float = Field(1.0, ge=0.0)
    beta: float = Field(8.0, ge=0.0)
    temperature: float = Field(4.0, gt=0.0, le=100.0)


class HiddenCosineLoss(LossBase):
    kind: Literal["hidden_cosine"]
    layers: LayerMap = "last"


class HiddenMseLoss(LossBase):
    kind: Literal["hidden_mse"]
    layers: LayerMap = "uniform"


class EmbeddingMseLoss(LossBase):
    kind: Literal["embedding_mse"]


class AttentionMseLoss(LossBase):
    kind: Literal["attention_mse"]
    layers: LayerMap = "uniform"


class FitnetLoss(LossBase):
    kind: Literal["fitnet"]
    stages: LayerMap = "last"


class AttentionTransferLoss(LossBase):
    kind: Literal["attention_transfer"]
    stages: LayerMap = "uniform"
    p: float = Field(2.0, gt=0.0, le=8.0)


class RkdLoss(LossBase):
    kind: Literal["rkd"]
    distance_weight: float = Field(25.0, ge=0.0)
    angle_weight: float = Field(50.0, ge=0.0)


class SimilarityLoss(LossBase):
    kind: Literal["similarity"]


class MlmLoss(LossBase):
    kind: Literal["mlm"]
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)


LossSpec = Annotated[
    Union[
        CeLoss, HintonLoss, DkdLoss, HiddenCosineLoss, HiddenMseLoss, EmbeddingMseLoss, AttentionMseLoss,
        FitnetLoss, AttentionTransferLoss, RkdLoss, SimilarityLoss, MlmLoss,
    ],
    Field(discriminator="kind"),
]
LOSS_KINDS = ["ce", "hinton", "dkd", "hidden_cosine", "hidden_mse", "embedding_mse", "attention_mse",
              "fitnet", "attention_transfer", "rkd", "similarity", "mlm"]


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
    train: str | None = None
    eval: str | None = None
    unlabeled: str | None = None
    pseudo: str | None = None
    text_column: str = "sentence"
    label_column: str = "label"
    max_length: int = Field(128, ge=4, le=8192)
    image_size: int | None = Field(None, ge=8, le=4096)
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="hold out this share of train when eval is unset")
    limit: int | None = Field(None, ge=1, description="use only the first N training rows")


class NoiseSpec(Strict):
    """Input noise for the student only (Noisy Student); the teacher sees clean inputs."""

    token_mask: float = Field(0.0, ge=0.0, le=0.5, description="share of tokens replaced by [MASK]")
    randaugment: bool = False
    randaugment_magnitude: int = Field(9, ge=0, le=30)


class TrainSpec(Strict):
    epochs: float = Field(3.0, gt=0, le=10_000)
    max_steps: int | None = Field(None, ge=1)
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
    eval_every: int | None = Field(None, ge=1, description="steps between evaluations; default: every epoch")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int | None = Field(None, ge=1, description="steps between checkpoints; default: eval time")
    cache_teacher: bool = False
    noise: NoiseSpec = NoiseSpec()
    threads: int | None = Field(None, ge=1, le=1024)


class ExportSpec(Strict):
    opset: int = Field(18, ge=13, le=23)
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = [1, 8, 32]
    atol: float | None = Field(None, ge=0.0)


class PseudoSpec(Strict):
    threshold: float = Field(0.0, ge=0.0, le=1.0)
    balance: bool = False
    per_class: int | None = Field(None, ge=1)
    soft: bool = True
    topk: int = Field(5, ge=1)
    temperature: float = Field(1.0, gt=0.0, le=100.0)
    ratio: float = Field(1.0, ge=0.0, le=100.0, description="pseudo-labeled samples per labeled one in a batch")


class Profile(Strict):
    name: str = Field(min_length=1, max_length=200)
    task: Literal["sequence-classification", "image-classification", "masked-lm", "embedding"]
    teacher: TeacherSpec | None = None
    student: StudentSpec
    data: DataSpec = DataSpec()
    distill: DistillSpec = DistillSpec()
    train: TrainSpec = TrainSpec()
    output: Path
    export: ExportSpec = ExportSpec()
    pseudo: PseudoSpec = PseudoSpec()
    source_file: Path | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name_is_a_word(cls, value: str) -> str:
        if any(c in value for c in "/\\\n"):
            raise ValueError("name may not contain slashes or newlines")
        return value

    def loss_specs(self) -> list[LossSpec]:
        """Every loss the job uses, across stages."""
        return [loss for stage in self.stages() for loss in stage.losses]

    def stages(self) -> list[StageSpec]:
        """The training stages in order; a plain `losses:` list is one stage."""
        if self.distill.stages:
            return self.distill.stages
        return [StageSpec(name="distill", losses=self.distill.losses or [CeLoss(kind="ce")])]

    def needs_teacher(self) -> bool:
        return any(loss.kind not in ("ce", "mlm") for loss in self.loss_specs())


# --- loading ----------------------------------------------------------------------------------

PATH_FIELDS = [("teacher", "path"), ("student", "path"), ("output",), ("data", "train"), ("data", "eval"),
               ("data", "unlabeled"), ("data", "pseudo")]


def load_profile(path: str | Path, overrides: list[str] | None = None) -> Profile:
    """Read, override, validate and resolve a profile file. Raises ProfileError on any bad input."""
    path = Path(path)
    text = _read(path)
    try:
        raw = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ProfileError(f"{where}: YAML syntax error: {problem}",
                           hint="check indentation and quoting near that line") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: a profile is a YAML mapping (name:, task:, student:, ...)",
                           hint="see profiles/ for complete examples")
    for item in overrides or []:
        apply_override(raw, item)
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(_describe(exc, path, root)) from None
    return _resolve_paths(profile, path.resolve().parent, path)


def _read(path: Path) -> str:
    if not path.is_file():
        raise ProfileError(f"profile not found: {path}", hint="pass the path of a .yaml profile; see profiles/")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not UTF-8 text (byte {exc.start})", hint="save the profile as UTF-8") from None


def apply_override(raw: dict, item: str) -> None:
    """Apply one `a.b.0.c=value` override in place; the value is parsed as YAML."""
    key, sep, value_text = item.partition("=")
    if not sep or not key.strip():
        raise ProfileError(f"--set {item!r}: expected KEY=VALUE", hint="for example --set train.lr=3e-5")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ProfileError(f"--set {key}: {where} is not an index of a list of {len(node)}",
                                   hint=f"use an index from 0 to {len(node) - 1}")
            index = int(part)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ProfileError(f"--set {key}: {'.'.join(parts[:depth])} is a value, not a section")


def _describe(exc: ValidationError, path: Path, root: yaml.Node | None) -> str:
    """One message per error: file:line, field path, what is wrong, a hint."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        field = ".".join(loc) or "(top level)"
        line = _line_of(root, err["loc"])
        where = f"{path}:{line}" if line else str(path)
        lines.append(f"{where}: {field}: {_explain(err)}")
    return "invalid profile\n" + "\n".join(f"  {line}" for line in lines)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in LOSS_KINDS or "[" in part or part.startswith("function-"))


def _explain(err: dict) -> str:
    kind, msg, loc = err["type"], err["msg"], err["loc"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"allowed keys: {', '.join(allowed)}"
        return f"unknown key '{loc[-1]}' ({hint})"
    if kind == "union_tag_invalid":
        tag = str(err.get("input", {}).get("kind", "")) if isinstance(err.get("input"), dict) else ""
        guess = difflib.get_close_matches(tag, LOSS_KINDS, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"known kinds: {', '.join(LOSS_KINDS)}"
        return f"unknown loss kind '{tag}' ({hint})"
    if kind == "union_tag_not_found":
        return f"each loss needs a kind (one of: {', '.join(LOSS_KINDS)})"
    if kind == "missing":
        return "required field is missing"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{msg} (got {shown[:80]})"


def _allowed_keys(loc: tuple) -> list[str]:
    """The field names of the model found at `loc` in the schema."""
    model: Any = Profile
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if isinstance(part, str) and part in LOSS_KINDS:
            model = _loss_model(part)
            continue
        field = getattr(model, "model_fields", {}).get(part)
        model = _model_in(field.annotation) if field else None
    return sorted(getattr(model, "model_fields", {}) if model else [])


def _loss_model(kind: str) -> type[BaseModel] | None:
    for model in LossSpec.__origin__.__args__:  # type: ignore[attr-defined]
        if model.model_fields["kind"].annotation.__args__[0] == kind:
            return model
    return None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found:
            return found
    return None


def _line_of(root: yaml.Node | None, loc: tuple) -> int | None:
    """The 1-based line of the deepest YAML node along `loc` that exists."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                if not _is_union_tag(part):
                    break
                continue
            node, line = match[1], match[0].start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        elif not _is_union_tag(part):
            break
    return line


def _resolve_paths(profile: Profile, base: Path, source: Path) -> Profile:
    """Make every path absolute against the profile's folder (schemes like sklearn: stay as they are)."""
    data = profile.model_dump()
    for keys in PATH_FIELDS:
        parent = data
        for key in keys[:-1]:
            parent = parent.get(key) or {}
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if value is not None and not _is_scheme(str(value)):
            parent[keys[-1]] = str((base / Path(value).expanduser()).resolve())
    resolved = Profile.model_validate(data)
    resolved.source_file = source.resolve()
    return resolved


def _is_scheme(value: str) -> bool:
    return ":" in value and not Path(value).anchor and value.split(":", 1)[0].isalpha() and len(value.split(":", 1)[0]) > 1


def profile_json(profile: Profile) -> dict:
    """The resolved profile as plain JSON types (paths as strings)."""
    return profile.model_dump(mode="json", exclude={"source_file"})
