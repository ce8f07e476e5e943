"""pseudo-label on a causal-lm profile: sequence-level KD (Kim & Rush 2016). The teacher writes a completion
for every prompt (greedy, or sampled with a seed) into labels.jsonl; distill trains on those rows
(data.pseudo, or data.train pointing at the file), each a prompt/completion pair or a chat ending in the
teacher's reply."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdcli.data.lm import LmExample, prompt_ids, read_lm
from kdcli.data.splits import lm_columns
from kdcli.errors import DataError
from kdcli.models.hf import HFAdapter
from kdcli.profile import Profile
from kdcli.runtime.files import atomic_write_text


def generate_completions(profile: Profile, teacher: HFAdapter, source: Path, device: torch.device,
                         on_batch: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """One record per prompt: {"id", "source", "prompt" | "messages", "completion"}."""
    examples = read_lm(source, lm_columns(profile), prompts_only=True)[: profile.data.limit]
    tokenizer = teacher.tokenizer
    if tokenizer is None:
        raise DataError(f"{teacher.path}: no tokenizer beside the teacher", hint="save the tokenizer with the model")
    spec, size = profile.pseudo, profile.train.batch_size
    torch.manual_seed(profile.train.seed)  # sampling is reproducible from the profile alone
    records: list[dict[str, Any]] = []
    batches = range(0, len(examples), size)
    for done, start in enumerate(batches, 1):
        chunk = examples[start: start + size]
        texts = _generate(teacher, [prompt_ids(e, tokenizer, profile.data.max_length) for e in chunk], spec, device)
        records += [_record(start + i, e, text) for i, (e, text) in enumerate(zip(chunk, texts))]
        if on_batch:
            on_batch(done, len(batches))
    return records


@torch.inference_mode()
def _generate(teacher: HFAdapter, prompts: list[list[int]], spec: Any, device: torch.device) -> list[str]:
    tokenizer = teacher.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):  # left padding: every row's continuation starts at the same column
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    sampling = {"do_sample": True, "temperature": spec.temperature, "top_k": 0} if spec.do_sample else \
        {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    out = teacher.module.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  max_new_tokens=spec.max_new_tokens, pad_token_id=pad, **sampling)
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def _record(i: int, example: LmExample, completion: str) -> dict[str, Any]:
    record: dict[str, Any] = {"id": i, "source": example.source}
    if example.messages is not None:
        turns = example.messages[:-1] if example.messages[-1]["role"] == "assistant" else example.messages
        record["messages"] = [*turns, {"role": "assistant", "content": completion}]
    else:
        record["prompt"] = example.prompt
    record["completion"] = completion
    return record


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
