"""Causal-LM data: plain documents, prompt/completion pairs and chat conversations, tokenized so that the
loss covers completion tokens only when there is a prompt.

A feature is {"input_ids", "prompt_len"}: the first prompt_len tokens are context, the rest is what the
model learns to produce. Batches are right-padded to their own longest row (not packed); `lm_labels`
shifts the ids so position t holds the token it predicts, -100 where nothing is learned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kdcli.data.text import read_utf8, text_of
from kdcli.errors import DataError

LM_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class LmExample:
    prompt: str | None            # None: a plain document, every token learned
    completion: str | None        # None with a prompt: a prompt alone (for pseudo-label)
    messages: list[dict] | None   # chat: rendered with the tokenizer's chat template
    source: str

    @property
    def text(self) -> str:
        if self.messages is not None:
            return json.dumps(self.messages, ensure_ascii=False)
        return "".join(part for part in (self.prompt, self.completion) if part)


@dataclass(frozen=True)
class Columns:
    text: str = "text"
    prompt: str = "prompt"
    completion: str = "completion"
    messages: str = "messages"


def read_lm(path: Path | str, columns: Columns = Columns(), *, prompts_only: bool = False) -> list[LmExample]:
    """A .txt file (one document a line) or .jsonl rows with `text`, `prompt` [+ `completion`] or `messages`."""
    path = Path(path)
    if path.suffix.lower() not in LM_SUFFIXES:
        raise DataError(f"{path}: causal-lm data must be .txt (one document a line) or .jsonl",
                        hint="jsonl rows hold text, prompt/completion or messages")
    content = read_utf8(path)
    examples = []
    for n, line in enumerate(content.split("\n"), 1):
        if not line.strip():
            continue
        source = f"{path.name}:{n}"
        if path.suffix.lower() == ".txt":
            text = text_of(path, n, line.strip())
            examples.append(LmExample(text, None, None, source) if prompts_only else
                            LmExample(None, text, None, source))
        else:
            examples.append(_jsonl_example(path, n, line, columns, source, prompts_only))
    if not examples:
        raise DataError(f"{path}: no data rows", hint="the file holds no examples; check it is the right file")
    return examples


def _jsonl_example(path: Path, n: int, line: str, c: Columns, source: str, prompts_only: bool) -> LmExample:
    try:
        row = json.loads(line)
    except ValueError as err:
        raise DataError(f"{path}, line {n}: not valid JSON ({err.msg})", hint="one JSON object a line") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}, line {n}: expected a JSON object", hint="one JSON object a line")
    source = str(row["id"]) if row.get("id") is not None else source
    if c.messages in row:
        return LmExample(None, None, _messages(path, n, row[c.messages], c.messages), source)
    if c.prompt in row:
        prompt = _string(path, n, row, c.prompt)
        completion = None if prompts_only else _string(path, n, row, c.completion)
        return LmExample(prompt, completion, None, source)
    if c.text in row:
        text = _string(path, n, row, c.text)
        return LmExample(text, None, None, source) if prompts_only else LmExample(None, text, None, source)
    raise DataError(f"{path}, line {n}: none of '{c.text}', '{c.prompt}' or '{c.messages}' in {sorted(row)}",
                    hint="set data.text_column / prompt_column / completion_column / messages_column")


def _string(path: Path, n: int, row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise DataError(f"{path}, line {n}: '{key}' must be a string, got {type(value).__name__}",
                        hint="a prompt row needs both prompt and completion strings")
    return text_of(path, n, value)


def _messages(path: Path, n: int, value: Any, key: str) -> list[dict]:
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise DataError(f"{path}, line {n}: '{key}' must be a list of {{role, content}} objects",
                        hint='e.g. [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]')
    return value


# --- tokenization ----------------------------------------------------------------------------------------


def tokenize_lm(examples: list[LmExample], tokenizer: Any, max_length: int) -> list[dict]:
    """input_ids (truncated to max_length) and prompt_len per example."""
    return [_encode(e, tokenizer, max_length) for e in examples]


def _encode(example: LmExample, tokenizer: Any, max_length: int) -> dict:
    if example.messages is not None:
        prompt_ids, ids = _chat_ids(example, tokenizer)
    elif example.prompt is None:
        prompt_ids, ids = [], _ids(tokenizer, example.completion or "", special=True)
    else:
        prompt_ids = _ids(tokenizer, example.prompt, special=True)
        ids = prompt_ids + _ids(tokenizer, example.completion, special=False) if example.completion else prompt_ids
        if example.completion and tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]  # the student learns where the teacher stops
    return {"input_ids": ids[:max_length], "prompt_len": min(len(prompt_ids), max_length)}


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _chat_ids(example: LmExample, tokenizer: Any) -> tuple[list[int], list[int]]:
    """The conversation through the chat template; the last assistant turn is the completion."""
    messages = example.messages or []
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError(f"{example.source}: chat messages, and the tokenizer has no chat template",
                        hint="use a tokenizer with chat_template, or prompt/completion rows")
    ids = _template(tokenizer, messages, generation=False)
    if messages[-1]["role"] != "assistant":
        return ids, ids  # a prompt alone
    prompt = _template(tokenizer, messages[:-1], generation=True)
    return (prompt, ids) if ids[: len(prompt)] == prompt else ([], ids)


def _template(tokenizer: Any, messages: list[dict], generation: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def prompt_ids(example: LmExample, tokenizer: Any, max_length: int) -> list[int]:
    """What a model continues from, for generation: the prompt, or the chat with a generation prompt."""
    if example.messages is not None:
        messages = example.messages[:-1] if example.messages[-1]["role"] == "assistant" else example.messages
        return _template(tokenizer, messages, generation=True)[-max_length:]
    return _ids(tokenizer, example.prompt or example.completion or "", special=True)[-max_length:]


def lm_labels(features: list[dict], width: int) -> Tensor:
    """[B, width]: at position t the id of token t+1 when that token is learned, else -100."""
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    for row, f in enumerate(features):
        ids, start = f["input_ids"], max(1, f["prompt_len"])
        if len(ids) > start:
            labels[row, start - 1: len(ids) - 1] = torch.tensor(ids[start:], dtype=torch.long)
    return labels
