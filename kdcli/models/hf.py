"""transformers adapter: a local save_pretrained folder, loaded into the task's Auto class."""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cached_property
from pathlib import Path

import torch
import transformers
from torch import Tensor, nn
from transformers import AttentionInterface, AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from kdcli.errors import BadInput, CheckpointError
from kdcli.models.base import Adapter, Exportable, Outputs, mean_pool
from kdcli.models.st import Pipeline, read_pipeline
from kdcli.runtime.files import atomic_path, atomic_write_text
from kdcli.tasks import Task, task_named

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

# Pre-softmax scores (TinyBERT) are recorded by an attention function registered with transformers,
# so no model code is patched; the recorder is a context variable, so concurrent models don't mix.
_SCORES: ContextVar[list[Tensor] | None] = ContextVar("kdcli_attention_scores", default=None)
SCORES_ATTENTION = "kdcli_scores"


def _recording_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                         attention_mask: Tensor | None, scaling: float | None = None,
                         dropout: float = 0.0, **kwargs: object) -> tuple[Tensor, Tensor]:
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    recorder = _SCORES.get()
    if recorder is not None:
        recorder.append(scores)
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


AttentionInterface.register(SCORES_ATTENTION, _recording_attention)
AttentionMaskInterface.register(SCORES_ATTENTION, eager_mask)


@contextmanager
def record_attention_scores() -> Iterator[list[Tensor]]:
    scores: list[Tensor] = []
    token = _SCORES.set(scores)
    try:
        yield scores
    finally:
        _SCORES.reset(token)


class HFAdapter(Adapter):
    family = "transformers"

    def __init__(self, model: PreTrainedModel, tokenizer: object | None, task: Task | str, path: Path | None = None,
                 pipeline: Pipeline | None = None) -> None:
        self.module = model
        self.tokenizer = tokenizer
        self.task = task_named(task)
        self.path = path
        self.pipeline = pipeline  # a sentence-transformers folder's pooling/normalize: the embedding it returns
        # the kernel it was loaded with (sdpa where the class has it, else eager): the one used when no loss
        # asks for attention maps
        self._base_attention = getattr(model.config, "_attn_implementation", None) or "eager"
        self._attention = self._base_attention
        self.save_dtype: torch.dtype | None = None  # fp16/bf16: the teacher's dtype, restored when saved
        self.vocab_limit: int | None = None  # causal-lm: logits cut to the vocabulary shared with the other model

    @property
    def config(self):  # noqa: ANN201 - a transformers PretrainedConfig
        return self.module.config

    @property
    def depth(self) -> int:
        return int(getattr(self.config, "num_hidden_layers", None) or self.config.n_layers)

    @property
    def cut_depth(self) -> int:
        return self.depth

    def width(self, index: int) -> int:
        return int(getattr(self.config, "hidden_size", None) or self.config.dim)

    @property
    def num_labels(self) -> int | None:
        return self.config.num_labels if self.task.has_classes else None

    @property
    def label_names(self) -> list[str] | None:
        if self.num_labels is None:
            return None
        return [str(self.config.id2label.get(i, i)) for i in range(self.num_labels)]

    @cached_property
    def token_types(self) -> bool:
        # a folded student (type_vocab_size 1) still takes the argument, and would index past its one row
        takes = "token_type_ids" in inspect.signature(self.module.forward).parameters
        return takes and int(getattr(self.config, "type_vocab_size", 0) or 0) > 1

    def set_classes(self, names: Sequence[str]) -> None:
        self.config.id2label = dict(enumerate(names))
        self.config.label2id = {name: i for i, name in enumerate(names)}

    def label2id(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in (self.config.label2id or {}).items()}

    def use_attention(self, needs: frozenset[str]) -> None:
        """Switch to the attention kernel that can give what the losses need (the loaded one when nothing)."""
        wanted = (SCORES_ATTENTION if "attention_scores" in needs else "eager" if "attentions" in needs
                  else self._base_attention)
        if wanted == SCORES_ATTENTION and not getattr(self.module, "_supports_attention_backend", False):
            raise BadInput(f"attention_mse needs pre-softmax attention scores, and {type(self.module).__name__} "
                           "computes its attention in its own code (no transformers attention interface to "
                           "record them from)",
                           hint="use hidden_mse / hidden_cosine on this model, or attentions (post-softmax)")
        if wanted != self._attention:
            self.module.set_attn_implementation(wanted)
            self._attention = wanted

    def forward(self, batch: dict[str, Tensor], needs: frozenset[str] = frozenset({"logits"})) -> Outputs:
        self.use_attention(needs | ({"attentions"} if self._attention == "eager" else set()))
        mask = batch.get("attention_mask")
        pooled = self.task.output == "embedding"  # the base model: its last_hidden_state is the pooling's input
        want_hidden = bool({"hidden_states", "embedding"} & needs) and not pooled
        extra = {"use_cache": False} if self.task.causal else {}
        if "token_type_ids" in batch and self.token_types:  # a text pair's segments
            extra["token_type_ids"] = batch["token_type_ids"]
        with record_attention_scores() as scores:
            out = self.module(input_ids=batch["input_ids"], attention_mask=mask,
                              output_hidden_states=want_hidden or "hidden_states" in needs,
                              output_attentions="attentions" in needs, **extra)
        hidden = tuple(out.hidden_states or ())
        last = out.last_hidden_state if pooled else (hidden[-1] if hidden else None)
        logits = getattr(out, "logits", None)
        if logits is not None and self.vocab_limit is not None:
            logits = logits[..., : self.vocab_limit]
        return Outputs(
            logits=logits,
            hidden_states=hidden,
            attentions=tuple(out.attentions or ()) if "attentions" in needs else (),
            attention_scores=tuple(scores),
            embedding=self.embed(last, mask) if "embedding" in needs and last is not None else None,
            attention_mask=mask,
        )

    def embed(self, last_hidden: Tensor, mask: Tensor | None) -> Tensor:
        """The sentence embedding: the pipeline's pooling (and normalization), mean pooling without one."""
        if self.pipeline is not None and self.task.output == "embedding":
            return self.pipeline.embed(last_hidden, mask)
        return mean_pool(last_hidden, mask)

    @property
    def max_length(self) -> int | None:
        """The longest input the model's pipeline takes (sentence-transformers' max_seq_length), if it says."""
        return self.pipeline.max_seq_length if self.pipeline is not None and self.task.output == "embedding" else None

    def exportable(self) -> Exportable:
        inputs, outputs = list(self.task.onnx_inputs), list(self.task.onnx_outputs)
        if self.pairs and self.token_types:  # both segments of a pair, as the tokenizer marks them
            inputs.append("token_type_ids")
        tokens = {0: "batch_size", 1: "sequence_length"}
        # Per-token outputs (and the token states beside a sentence embedding) vary in length; pooled ones don't.
        axes = {name: dict(tokens) for name in inputs} | {
            name: dict(tokens) if self.task.per_token or name == "last_hidden_state" else {0: "batch_size"}
            for name in outputs}
        bare = _Bare(self, outputs, causal=self.task.causal)
        return Exportable(bare, inputs, outputs, axes, "seq_len")

    def save(self, directory: Path) -> None:
        with atomic_path(Path(directory)) as tmp:
            state = None if self.save_dtype is None else {  # a cast copy: the live model stays fp32
                k: v.to(self.save_dtype) if v.is_floating_point() else v for k, v in self.module.state_dict().items()}
            self.module.save_pretrained(tmp, safe_serialization=True, state_dict=state)
            if self.save_dtype is not None:
                _record_dtype(tmp / "config.json", self.save_dtype)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            if self.pipeline is not None and self.task.output == "embedding":
                self.pipeline.for_width(self.width(0)).write(tmp)

    def write_serving_files(self, out: Path, classes: Sequence[str] | None, image_size: int | None = None) -> None:
        """config.json (its id2label already the job's classes) and the tokenizer's files."""
        atomic_write_text(out / "config.json", self.config.to_json_string())
        if self.tokenizer is None:
            raise BadInput(f"{self.path}: no tokenizer beside the student (nor the teacher): the export folder "
                           "could not turn text into model inputs", hint="save the tokenizer into the student folder")
        with tempfile.TemporaryDirectory(dir=out, prefix=".tokenizer-") as tmp:  # each file replaced atomically
            self.tokenizer.save_pretrained(tmp)  # type: ignore[attr-defined]
            if self.max_length is not None:  # truncate where the pipeline does, so a server agrees with the student
                _set_max_length(Path(tmp) / "tokenizer_config.json", self.max_length)
            for file in Path(tmp).iterdir():
                if file.is_file():
                    os.replace(file, out / file.name)

    def example_batch(self, batch_size: int = 2, seq_len: int = 8) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(5, min(self.config.vocab_size, 1000), (batch_size, seq_len), generator=generator)
        mask = torch.ones_like(ids)
        mask[1:, seq_len // 2:] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
        if self.pairs and self.token_types:  # a pair: the second half is segment 1
            batch["token_type_ids"] = (torch.arange(seq_len) >= seq_len // 2).long().expand(batch_size, -1).clone()
        return batch


def _set_max_length(config_file: Path, max_length: int) -> None:
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    config["model_max_length"] = max_length
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


class _Bare(nn.Module):
    """input_ids, attention_mask -> the named outputs optimum exports for these tasks (logits; for embeddings
    last_hidden_state, and sentence_embedding as optimum's sentence-transformers export has it)."""

    def __init__(self, adapter: HFAdapter, outputs: list[str], causal: bool = False) -> None:
        super().__init__()
        self.model = adapter.module
        self.embed = adapter.embed
        self.outputs = outputs
        self.extra = {"use_cache": False} if causal else {}  # prefill only: no KV cache in the graph

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
                ) -> Tensor | tuple[Tensor, Tensor]:
        types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **self.extra, **types)
        if self.outputs == ["logits"]:
            return out.logits
        return out.last_hidden_state, self.embed(out.last_hidden_state, attention_mask)


def load_hf(path: Path, task: Task | str, num_labels: int | None = None, allow_new_head: bool = False,
            classes: Sequence[str] | None = None) -> HFAdapter:
    """Load a local save_pretrained folder for `task`; never runs remote code, never touches a hub.

    `classes` names the outputs of a classification head; a new head (allow_new_head) gets one per class.
    """
    path, task = Path(path), task_named(task)
    auto = auto_class(path, task)
    _check_folder(path)
    _refuse_remote_code(path, auto)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad config
        raise CheckpointError(f"{path}/config.json: cannot read the model config: {_first_line(exc)}",
                              hint="the folder should come from save_pretrained()") from None
    saved_dtype = half_dtype(config)  # trained in fp32 (on CPU, fp16 has no kernels), saved back as it came
    kwargs = {"num_labels": num_labels} if num_labels and task.has_classes else {}
    trained_head = bool(task.head) and any(str(a).endswith(str(task.head))
                                           for a in getattr(config, "architectures", None) or [])
    if classes and task.has_classes:
        if trained_head and config.num_labels != len(classes):
            raise CheckpointError(f"{path}: its classification head has {config.num_labels} outputs, and the job "
                                  f"has {len(classes)} classes ({_names(classes)})",
                                  hint="start from a checkpoint without a head (an encoder), or one trained on these "
                                       "classes; data.classes lists them")
        config.id2label = dict(enumerate(classes))
        config.label2id = {name: i for i, name in enumerate(classes)}
        kwargs = {}
    try:
        model, info = auto.from_pretrained(
            path, config=config, local_files_only=True, trust_remote_code=False, dtype=torch.float32,
            attn_implementation=default_attention(config, auto),
            output_loading_info=True, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise CheckpointError(f"{path}: model type '{config.model_type}' has no {task} head in transformers",
                                  hint="pick a task that fits the checkpoint (profile field `task`)") from None
        raise CheckpointError(f"{path}: cannot load the weights: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - safetensors/torch raise many types for torn files
        if refused_pickle(exc):
            raise CheckpointError(f"{path}: cannot load the weights: refused, a pickle that holds more than "
                                  "tensors (loading it could run code)", hint=PICKLE_HINT) from None
        raise CheckpointError(f"{path}: cannot load the weights: {_first_line(exc)}",
                              hint="the weights file may be truncated or belong to another config") from None
    # transformers fills weights the config names but the file lacks with random values, and drops weights
    # the config does not name: either way a silently different model. Only a new head may be missing.
    missing = _body_keys(model, info.get("missing_keys") or [])
    unexpected = _body_keys(model, info.get("unexpected_keys") or [])
    if missing or unexpected:
        what = (f"{len(missing)} weights its config.json describes are missing (e.g. {missing[0]})" if missing
                else f"{len(unexpected)} weights are not in its config.json (e.g. {unexpected[0]})")
        raise CheckpointError(f"{path}: config.json and the weights disagree: {what}",
                              hint="config.json was edited or belongs to another model: restore the folder "
                                   "(save_pretrained), or re-run init-student")
    if info.get("missing_keys") and not allow_new_head:
        missing = sorted(info["missing_keys"])
        raise CheckpointError(f"{path}: the checkpoint lacks weights the {task} model needs: {', '.join(missing[:4])}",
                              hint="a teacher must be trained for its task; check the profile's `task`")
    model.eval()
    pipeline = read_pipeline(path) if task.output == "embedding" else None
    adapter = HFAdapter(model, load_tokenizer(path), task, path, pipeline)
    adapter.save_dtype = saved_dtype
    return adapter


def auto_class(path: Path, task: Task) -> type:
    """The transformers Auto class the task declares."""
    if task.hf_class is None:  # image-classification: kdcli's image pipeline goes through timm models
        raise CheckpointError(f"{path}: {task} reads transformers checkpoints not yet (kdcli's images go through "
                              "timm models)", hint="use a timm model (teacher.source: timm), e.g. a timm ViT")
    return getattr(transformers, task.hf_class)


def half_dtype(config: object) -> torch.dtype | None:
    """fp16 or bf16 when the checkpoint's config says its weights are saved so, else None (fp32)."""
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


def _record_dtype(config_file: Path, dtype: torch.dtype) -> None:
    """save_pretrained writes the live (fp32) parameters' dtype; the file holds `dtype` weights: say so."""
    config = json.loads(config_file.read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _refuse_remote_code(path: Path, auto: type) -> None:
    """A config with auto_map needs the folder's own Python code, which kdcli never runs: name the class."""
    try:
        auto_map = json.loads((path / "config.json").read_text()).get("auto_map")
    except (OSError, ValueError, AttributeError):
        return  # AutoConfig names what is wrong with the file
    if not isinstance(auto_map, dict) or not auto_map:
        return
    name = str(auto_map.get(auto.__name__) or next(iter(auto_map.values())))
    raise CheckpointError(f"{path}/config.json: cannot read the model config: {name} is code shipped in the "
                          "checkpoint folder (trust_remote_code), which kdcli never runs",
                          hint="use a model whose architecture transformers ships (or a port of it to one)")


def default_attention(config: object, auto: type) -> str:
    """sdpa where the model class implements it, else eager (DeBERTa-v2): chosen without the user."""
    try:
        model_class = auto._model_mapping[type(config)]  # type: ignore[attr-defined]
    except KeyError:
        return "sdpa"  # no such head: from_pretrained says so
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def _names(classes: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(c) for c in list(classes)[:limit])
    return shown + (", ..." if len(classes) > limit else "")


def _body_keys(model: PreTrainedModel, keys: list[str]) -> list[str]:
    """The keys that belong to the base model (embeddings, layers), not to a task head or the pooler."""
    base = model.base_model
    children = {name for name, _ in base.named_children()} - {"pooler"}
    prefix = f"{model.base_model_prefix}."
    body = []
    for key in keys:
        inner = key[len(prefix):] if key.startswith(prefix) else key if base is model else None
        if inner is not None and inner.split(".")[0] in children:
            body.append(key)
    return sorted(body)


PICKLE_HINT = "kdcli loads weights only; re-save the checkpoint as safetensors where you trust its origin"


def refused_pickle(exc: BaseException) -> bool:
    """torch.load(weights_only=True) refused a pickle that would build Python objects (and so run code)."""
    import pickle
    return isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc)


def _check_folder(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}",
                              hint="teacher.path/student.path point at a save_pretrained folder")
    if path.is_file():
        raise CheckpointError(f"{path}: a folder is expected, not a file",
                              hint=f"point at the folder save_pretrained wrote (the one holding config.json): "
                                   f"{path.parent}")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: not a transformers checkpoint folder (no config.json)",
                              hint="save the model with model.save_pretrained(folder)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{path}: no weights file ({', '.join(WEIGHT_FILES[::2])})",
                              hint="save the model with model.save_pretrained(folder)")


def load_tokenizer(path: Path) -> object | None:
    """The tokenizer saved in a folder (None without its files)."""
    files = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "vocab.json")
    if not any((path / name).is_file() for name in files):
        return None
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot load the tokenizer: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
