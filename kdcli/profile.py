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
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from kdcli.errors import ProfileError

LayerMap = Union[dict[int, int], Literal["uniform", "last"]]
COUNT_MAX = 2**31 - 1  # counts beyond this overflow the C ints they reach (torch, tokenizers)
CLASSES_MAX = 1_000_000


class Strict(BaseModel):
    # allow_inf_nan=False: `.inf` or `nan` would pass an unbounded `ge=0` and surface as a NaN loss at step 1.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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


class StudentInit(Strict):
    layers: list[Annotated[int, Field(ge=0, le=100_000)]] | str | None = Field(
        None, description="teacher layers to keep, or every-other | distilbert | first:k | last:k | uniform:k"
    )
    drop: list[Literal["token_type_embeddings", "pooler"]] = []
    architecture: str = Field("same", description="same | distilbert (transformers); a timm arch name")
    num_classes: int | None = Field(None, ge=1, le=CLASSES_MAX, description="timm student built without a teacher")
    model_args: dict[str, Any] = Field({}, description="extra timm create_model arguments (drop_path_rate, ...)")
    copy_weights: bool = Field(True, description="timm arch: copy teacher tensors whose name and shape match")


class StudentSpec(Strict):
    path: PathText
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
    alpha: float = Field(1.0, ge=0.0, le=1e6)
    beta: float = Field(8.0, ge=0.0, le=1e6)
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
    distance_weight: float = Field(25.0, ge=0.0, le=1e6)
    angle_weight: float = Field(50.0, ge=0.0, le=1e6)


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
    train: DataPath | None = None
    eval: DataPath | None = None
    unlabeled: DataPath | None = None
    pseudo: DataPath | None = None
    text_column: str = "sentence"
    label_column: str = "label"
    max_length: int = Field(128, ge=4, le=8192)
    image_size: int | None = Field(None, ge=8, le=4096)
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="hold out this share of train when eval is unset")
    limit: int | None = Field(None, ge=1, le=COUNT_MAX, description="use only the first N training rows")


class NoiseSpec(Strict):
    """Input noise for the student only (Noisy Student); the teacher sees clean inputs."""

    token_mask: float = Field(0.0, ge=0.0, le=0.5, description="share of tokens replaced by [MASK]")
    randaugment: bool = False
    randaugment_magnitude: int = Field(9, ge=0, le=30)


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
    eval_every: int | None = Field(None, ge=1, le=COUNT_MAX, description="steps between evaluations; default: every epoch")
    log_every: int = Field(10, ge=1, le=COUNT_MAX)
    checkpoint_every: int | None = Field(None, ge=1, le=COUNT_MAX,
                                         description="steps between checkpoints; default: eval time")
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
    per_class: int | None = Field(None, ge=1, le=COUNT_MAX)
    soft: bool = True
    topk: int = Field(5, ge=1, le=CLASSES_MAX)
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
    output: PathText
    export: ExportSpec = ExportSpec()
    pseudo: PseudoSpec = PseudoSpec()
    source_file: Path | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name_is_a_word(cls, value: str) -> str:
        if any(c in value for c in "/\\\n"):
            raise ValueError("name may not contain slashes or newlines")
        if not value.isprintable():  # it lands in file names, logs and terminals
            raise ValueError("name may not contain control characters")
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


MAX_BYTES = 1 << 20    # a profile is a page of YAML; a bigger file is the wrong file
MAX_DEPTH = 32         # real profiles nest a handful of levels (distill.stages.0.losses.1.layers)
MAX_NODES = 100_000    # values after expanding aliases: stops "billion laughs" alias bombs


def load_profile(path: str | Path, overrides: list[str] | None = None) -> Profile:
    """Read, override, validate and resolve a profile file. Raises ProfileError on any bad input."""
    path = Path(path)
    text = _read(path)
    try:
        raw, root = parse_yaml(text, str(path))
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
        raise ProfileError(_describe(exc, path, root, raw)) from None
    return _resolve_paths(profile, path.resolve().parent, path)


def _read(path: Path) -> str:
    if not path.exists():
        raise ProfileError(f"profile not found: {path}", hint="pass the path of a .yaml profile; see profiles/")
    if not path.is_file():
        raise ProfileError(f"{path}: not a file", hint="pass the path of a .yaml profile; see profiles/")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ProfileError(f"{path}: {path.stat().st_size:,} bytes; a profile is at most {MAX_BYTES:,}",
                               hint="is this the right file? a profile is a short YAML mapping")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not UTF-8 text (byte {exc.start})", hint="save the profile as UTF-8") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read the profile ({exc.strerror})",
                           hint="check the file's permissions") from None


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader: a value Python cannot hold (a 5000-digit int, the date 2020-13-45)
    becomes a YAML error with its line, not a ValueError from deep inside PyYAML."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            shown = node.value if isinstance(node.value, str) else node.tag
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {shown[:40]!r}: {str(exc).split(';')[0]}",
                node.start_mark) from None


def parse_yaml(text: str, where: str) -> tuple[Any, yaml.Node | None]:
    """safe_load `text` (tags that build Python objects are refused), after checking its node graph.

    Returns the data and the root node (for line numbers). Raises yaml.YAMLError for syntax errors,
    ProfileError for a well-formed document kdcli will not build (see _check_nodes).
    """
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
            if root is None:
                return None, None
            _check_nodes(root, where)
            return loader.construct_document(root), root
        except RecursionError:  # PyYAML composes and builds recursively
            raise ProfileError(f"{where}: values nested too deeply (more than {MAX_DEPTH} levels)",
                               hint="a profile is a few levels of mappings and lists") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, where: str) -> None:
    """Refuse, before anything is built: alias bombs, anchors that contain themselves, absurd nesting,
    duplicate keys (YAML would keep the last one silently), and keys YAML reads as booleans or null."""
    size: dict[int, int] = {}  # id(node) -> nodes after alias expansion; also "finished"
    depth: dict[int, int] = {}
    started: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative depth-first walk: the structure under test may be deep
        node, finished = stack.pop()
        key = id(node)
        children = _children(node)
        if finished:
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            line = node.start_mark.line + 1
            if size[key] > MAX_NODES:
                raise ProfileError(f"{where}:{line}: more than {MAX_NODES:,} values once aliases are expanded",
                                   hint="anchors (&) and aliases (*) that multiply are refused")
            if depth[key] > MAX_DEPTH:
                raise ProfileError(f"{where}:{line}: values nested more than {MAX_DEPTH} levels deep",
                                   hint="a profile is a few levels of mappings and lists")
            continue
        if key in size:
            continue
        if key in started:  # started, not finished: an ancestor of itself
            raise ProfileError(f"{where}:{node.start_mark.line + 1}: an alias (*) refers to the anchor (&) that "
                               "contains it, a structure without end", hint="remove the self-reference")
        started.add(key)
        if isinstance(node, yaml.MappingNode):
            _check_keys(node, where)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


_MERGE = "tag:yaml.org,2002:merge"
_SURPRISES = {"tag:yaml.org,2002:bool": "a boolean", "tag:yaml.org,2002:null": "null"}


def _check_keys(node: yaml.MappingNode, where: str) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE:
            continue
        line = key.start_mark.line + 1
        if key.tag in _SURPRISES:  # `on:`, `no:`, `~:` - YAML 1.1 reads these as true, false, None
            raise ProfileError(f"{where}:{line}: key {key.value!r} is read by YAML as {_SURPRISES[key.tag]}",
                               hint=f"quote it ('{key.value}':) if it is a name")
        first = seen.get((key.tag, key.value))
        if first is None:
            seen[(key.tag, key.value)] = line
        else:
            raise ProfileError(f"{where}:{line}: duplicate key {_printable(key.value)} (first at line {first})",
                               hint="YAML would keep only the last one: remove one of them")


def apply_override(raw: dict, item: str) -> None:
    """Apply one `a.b.0.c=value` override in place; the value is parsed as YAML."""
    key, sep, value_text = item.partition("=")
    if not sep or not key.strip():
        raise ProfileError(f"--set {item!r}: expected KEY=VALUE", hint="for example --set train.lr=3e-5")
    try:
        value = parse_yaml(value_text, f"--set {key.strip()}")[0] if value_text.strip() else ""
    except yaml.YAMLError:
        value = value_text  # not YAML (an unbalanced bracket, a tab): the text itself, typed by the schema
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            # isascii: "²".isdigit() is true and int("²") fails; len: int() refuses 4300+ digits
            if not (part.isascii() and part.isdigit() and len(part) < 10) or int(part) >= len(node):
                raise ProfileError(f"--set {key}: {where} is not an index of a list of {len(node)}",
                                   hint=f"use an index from 0 to {len(node) - 1}" if node else "the list is empty")
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


def _describe(exc: ValidationError, path: Path, root: yaml.Node | None, raw: Any = None) -> str:
    """One message per error: file:line, field path, what is wrong, a hint."""
    lines = []
    for err in exc.errors():
        loc = _field_loc(raw, err["loc"], err["type"])
        field = ".".join(_printable(p) for p in loc) or "(top level)"
        line = _line_of(root, loc)
        where = f"{path}:{line}" if line else str(path)
        lines.append(f"{where}: {field}: {_explain(err)}")
    return "invalid profile\n" + "\n".join(f"  {line}" for line in lines)


def _field_loc(raw: Any, loc: tuple, kind: str) -> list[Any]:
    """pydantic's error location as the user wrote it: parts that are keys or indexes of the input are
    kept, the ones pydantic adds for unions ('hinton', 'dict[int,int]', '[key]') are dropped. Judged by
    the input, not by the part's spelling, so a user key named 'ce' or 'a[1]' is still shown."""
    node, kept = raw, []
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif kind == "missing" and i == len(loc) - 1:
            pass  # the missing field itself: not in the input, and named
        elif raw is not None or _is_union_tag(part):
            continue
        kept.append(part)
    return kept


def _printable(part: Any) -> str:
    """A key as shown in a message: control characters (a terminal escape in a key) are shown escaped."""
    text = str(part)
    return text if text.isprintable() else repr(text)


def _quoted(part: Any) -> str:
    text = str(part)
    return f"'{text}'" if text.isprintable() else repr(text)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in LOSS_KINDS or "[" in part or part.startswith("function-"))


def _explain(err: dict) -> str:
    kind, msg, loc = err["type"], err["msg"], err["loc"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"allowed keys: {', '.join(allowed)}"
        return f"unknown key {_quoted(loc[-1])} ({hint})"
    if kind == "union_tag_invalid":
        tag = str(err.get("input", {}).get("kind", "")) if isinstance(err.get("input"), dict) else ""
        guess = difflib.get_close_matches(tag, LOSS_KINDS, n=1)
        hint = f"did you mean '{guess[0]}'?" if guess else f"known kinds: {', '.join(LOSS_KINDS)}"
        return f"unknown loss kind {_quoted(tag)} ({hint})"
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
    return sorted(k for k in (getattr(model, "model_fields", {}) if model else []) if k != "source_file")


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
    """Make every path absolute against the profile's folder (data schemes like sklearn: stay as they are)."""
    data = profile.model_dump()
    for keys in PATH_FIELDS:
        parent = data
        for key in keys[:-1]:
            parent = parent.get(key) or {}
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if value is None or (keys[0] == "data" and _is_scheme(str(value))):
            continue
        field = ".".join(keys)
        try:
            # expanduser raises RuntimeError for ~nosuchuser; resolve, OSError/RuntimeError on odd links
            resolved = str((base / Path(value).expanduser()).resolve())
        except (OSError, RuntimeError, ValueError) as exc:
            raise ProfileError(f"{source}: {field}: cannot resolve the path {str(value)[:80]!r} ({exc})",
                               hint="write a plain path, relative to the profile's folder") from None
        if len(resolved.encode("utf-8", "surrogatepass")) > 4000:
            raise ProfileError(f"{source}: {field}: the path is longer than the file system allows",
                               hint="shorten it")
        parent[keys[-1]] = resolved
    try:
        resolved_profile = Profile.model_validate(data)
    except ValidationError as exc:  # a resolved path that no longer validates: name it, like any other error
        raise ProfileError(_describe(exc, source, None, data)) from None
    resolved_profile.source_file = source.resolve()
    return resolved_profile


def _is_scheme(value: str) -> bool:
    return ":" in value and not Path(value).anchor and value.split(":", 1)[0].isalpha() and len(value.split(":", 1)[0]) > 1


def profile_json(profile: Profile) -> dict:
    """The resolved profile as plain JSON types (paths as strings)."""
    return profile.model_dump(mode="json", exclude={"source_file"})
