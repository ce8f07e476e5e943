"""What a task declares, and the registry its declarations fill (no torch: the profile schema reads it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic_core import core_schema

Data = Literal["text", "image", "lm", "tokens"]  # which reader turns a data file into samples (tokens: tagged words)
Output = Literal["logits", "embedding"]         # what a model is judged on
Pseudo = Literal["classes", "completions", "tags"]  # what pseudo-label writes: class labels, the teacher's texts,
                                                    # or one tag per word
Cache = Literal["dense", "sparse"]              # the teacher cache that serves it (sparse: top-k log-probs)
Retention = Literal["accuracy", "f1", "cosine_to_teacher", "perplexity"]

TASKS: dict[str, Task] = {}


class Task:
    """A subclass with a `name` declares that task (and registers one instance of itself in TASKS).

    `primary` is (section of the report, key): the task metric where there are labels, agreement with the
    teacher otherwise; it decides student-best and what --min-metric gates (higher is better)."""

    name: ClassVar[str]
    data: ClassVar[Data] = "text"
    has_classes: ClassVar[bool] = False          # a head with one output per class of the job's LabelMap
    per_token: ClassVar[bool] = False            # logits [B, L, V] rather than [B, C]
    text_pairs: ClassVar[bool] = False           # reads pairs of texts (data.text_pair_column)
    causal: ClassVar[bool] = False               # a decoder: next-token labels, a shared vocabulary, no KV cache
    output: ClassVar[Output] = "logits"
    streamed: ClassVar[bool] = False             # scored batch by batch (perplexity), outputs never all kept
    primary: ClassVar[tuple[str, str]] = ("agreement", "top1")
    retention: ClassVar[Retention | None] = None
    pipeline_tag: ClassVar[str | None] = None    # the model card's Hub task
    onnx_inputs: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask")
    onnx_outputs: ClassVar[tuple[str, ...]] = ("logits",)
    pseudo: ClassVar[Pseudo | None] = None       # None: pseudo-label refuses the task
    cache: ClassVar[Cache] = "dense"
    hf_class: ClassVar[str | None] = None        # the transformers Auto class that loads it
    distilbert_class: ClassVar[str | None] = None  # init-student's architecture: distilbert target

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.name in TASKS:
                raise ValueError(f"task '{cls.name}' is declared twice")
            TASKS[cls.name] = cls()

    @property
    def head(self) -> str | None:
        """The head a trained checkpoint of this task names in config.json (ForTokenClassification, ...)."""
        return self.hf_class.removeprefix("AutoModel") or None if self.hf_class else None

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        # A profile's `task:` is validated against the registry when the profile loads (a task declared later,
        # in a test or a plugin, counts too), held as the Task, and written back as its name.
        return core_schema.no_info_plain_validator_function(
            task_named, serialization=core_schema.plain_serializer_function_ser_schema(lambda task: task.name))

    def primary_metric(self, metrics: Mapping[str, float], agreement: Mapping[str, float]
                       ) -> tuple[str, float | None]:
        """(name, value) of the primary metric; value None where this evaluation lacks it."""
        section, name = self.primary
        value = (metrics if section == "metrics" else agreement).get(name)
        return name, None if value is None else float(value)

    def retention_of(self, metrics: Mapping[str, float], teacher: Mapping[str, float],
                     agreement: Mapping[str, float]) -> float | None:
        """How much of the teacher the student keeps (1 = all of it); None where the task has no such ratio."""
        if self.retention == "cosine_to_teacher":  # the teacher's own cosine is 1
            return agreement.get("cosine_to_teacher")
        if self.retention in ("accuracy", "f1"):  # higher is better: student / teacher
            s, t = metrics.get(self.retention), teacher.get(self.retention)
            return s / t if s is not None and t else None
        if self.retention == "perplexity":  # lower is better: teacher / student
            s, t = metrics.get("perplexity"), teacher.get("perplexity")
            return t / s if s and t else None
        return None


def task_named(name: object) -> Task:
    """The declared task of that name (a Task passes through)."""
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name if isinstance(name, str) else repr(name)]
    except KeyError:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None
