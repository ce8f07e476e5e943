"""Tagged words (token classification, NER): CoNLL-style files, JSONL {tokens, tags}, tables and Hugging Face
datasets; BIO/IOB2 tags checked; word labels aligned to sub-word tokens.

Alignment follows transformers' token-classification recipe: the first sub-token of each word carries the
word's label, the other sub-tokens and the special tokens carry -100, so losses and metrics ignore them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcli.data.hf_datasets import is_hf_dataset, read_columns
from kdcli.data.text import _column, _rows, read_utf8
from kdcli.errors import DataError, DataWarning
from kdcli.profile import Profile

CONLL_SUFFIXES = (".conll", ".conllu", ".bio", ".iob", ".iob2")
TOKEN_SUFFIXES = CONLL_SUFFIXES + (".jsonl", ".csv", ".tsv", ".txt")
IGNORED = -100  # transformers' ignore index: sub-tokens after the first, special tokens, padding


@dataclass(frozen=True)
class TaggedExample:
    words: tuple[str, ...]
    tags: tuple[Any, ...] | None  # as written (names or integer ids); None when unlabeled
    source: str                   # "file:line" of the sentence's first word


def read_tagged(path: Path | str, tokens_column: str = "tokens", tags_column: str | None = "tags",
                limit: int | None = None) -> list[TaggedExample]:
    """Sentences of a CoNLL-style file (a word and its tag per line, the tag last; a blank line between
    sentences; `-DOCSTART-` lines skipped), a .jsonl file ({"tokens": [...], "tags": [...]}), a .csv/.tsv file
    (words and tags as space-separated strings), a Hugging Face dataset (list columns), or, unlabeled, a .txt
    file (one sentence a line)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if is_hf_dataset(path):
        sentences = _dataset(path, tokens_column, tags_column)
    elif suffix in CONLL_SUFFIXES:
        sentences = _conll(path, read_utf8(path), tags_column is not None)
    elif suffix == ".jsonl":
        sentences = _jsonl(path, read_utf8(path), tokens_column, tags_column)
    elif suffix in (".csv", ".tsv"):
        sentences = _table(path, tokens_column, tags_column)
    elif suffix == ".txt":  # unlabeled: one sentence a line, words split at whitespace
        sentences = [TaggedExample(tuple(line.split()), None, f"{path.name}:{n}")
                     for n, line in enumerate(read_utf8(path).split("\n"), 1) if line.strip()]
    else:
        raise DataError(f"{path}: unsupported file type '{suffix or '(none)'}' for tagged words",
                        hint=f"use one of {', '.join(TOKEN_SUFFIXES)}, parquet/arrow or a save_to_disk folder")
    if not sentences:
        raise DataError(f"{path}: no sentences", hint="the file holds no tagged words; check it is the right file")
    labelled = [s for s in sentences if s.tags is not None]
    if labelled and len(labelled) != len(sentences):
        line = next(s.source for s in sentences if s.tags is None)
        raise DataError(f"{path}: {line}: a sentence without tags in a tagged file",
                        hint="tag every word, or drop the tags to read the file as unlabeled")
    return sentences[:limit]


def read_tags(path: Path | str, tokens_column: str = "tokens", tags_column: str = "tags",
              limit: int | None = None) -> list[str]:
    """Every tag of a file as written: what names the classes when neither the teacher nor the profile does."""
    return [str(t) for s in read_tagged(path, tokens_column, tags_column, limit) for t in s.tags or ()]


def token_columns(profile: Profile) -> tuple[str, str]:
    """The words and tags columns of tagged data: data.text_column / label_column when set, else tokens / tags."""
    d, defaults = profile.data, type(profile.data).model_fields  # the classifiers' defaults: sentence, label
    return (d.text_column if d.text_column != defaults["text_column"].default else "tokens",
            d.label_column if d.label_column != defaults["label_column"].default else "tags")


def _conll(path: Path, content: str, tagged: bool) -> list[TaggedExample]:
    sentences: list[TaggedExample] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    for n, raw in enumerate(content.split("\n") + [""], 1):
        line = raw.strip()
        if line.startswith("-DOCSTART-"):
            continue
        if not line:
            if words:
                has_tags = tagged and len(tags) == len(words)
                sentences.append(TaggedExample(tuple(words), tuple(tags) if has_tags else None,
                                               f"{path.name}:{start}"))
            words, tags = [], []
            continue
        fields = line.split()
        if not words:
            start = n
        if tagged and len(fields) < 2 and tags:
            raise DataError(f"{path}, line {n}: a word without a tag ({fields[0]!r})",
                            hint="write the word and its tag on each line, separated by a tab or a space")
        words.append(fields[0])
        if len(fields) > 1:
            tags.append(fields[-1])
    return sentences


def _jsonl(path: Path, content: str, tokens_column: str, tags_column: str | None) -> list[TaggedExample]:
    sentences = []
    for n, chunk in enumerate(content.split("\n"), 1):
        if not chunk.strip():
            continue
        try:
            obj = json.loads(chunk)
        except (ValueError, RecursionError) as err:
            raise DataError(f"{path}, line {n}: invalid JSON ({str(err).split(';')[0][:120]})",
                            hint='each line must be one object: {"tokens": [...], "tags": [...]}') from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}, line {n}: expected a JSON object, got {type(obj).__name__}",
                            hint='write one object a line: {"tokens": [...], "tags": [...]}')
        _column(path, tokens_column, list(obj), where=f", line {n}")
        source = str(obj["id"]) if obj.get("id") is not None else f"{path.name}:{n}"
        tags = obj.get(tags_column) if tags_column is not None else None
        sentences.append(_sentence(path, n, obj[tokens_column], tags, source))
    return sentences


def _table(path: Path, tokens_column: str, tags_column: str | None) -> list[TaggedExample]:
    # one csv/tsv reader for every task: quoting, line numbers and columns named alike
    rows = _rows(path, tokens_column, tags_column, False)
    return [_sentence(path, r.line, r.text.split(), str(r.raw_label).split() if r.raw_label is not None else None,
                      r.source) for r in rows]


def _dataset(path: Path, tokens_column: str, tags_column: str | None) -> list[TaggedExample]:
    names, columns = read_columns(path, [tokens_column, tags_column])
    _column(path, tokens_column, names)
    tags = columns.get(tags_column or "") or [None] * len(columns[tokens_column])
    return [_sentence(path, n, words, row_tags, f"{path.name}:{n}")
            for n, (words, row_tags) in enumerate(zip(columns[tokens_column], tags), 1)]


def _sentence(path: Path, line: int, words: Any, tags: Any, source: str) -> TaggedExample:
    """One sentence, checked: a non-empty list of non-empty words, and as many tags as words (or none)."""
    if not isinstance(words, (list, tuple)) or not words or not all(isinstance(w, str) and w for w in words):
        raise DataError(f"{path}, line {line}: the words must be a non-empty list of non-empty strings",
                        hint='e.g. {"tokens": ["Paris", "is", "nice"], "tags": ["B-LOC", "O", "O"]}')
    if tags is None:
        return TaggedExample(tuple(words), None, source)
    if not isinstance(tags, (list, tuple)) or len(tags) != len(words):
        count = len(tags) if isinstance(tags, (list, tuple)) else "no list of"
        raise DataError(f"{path}, line {line}: {len(words)} words and {count} tags",
                        hint="give one tag per word")
    return TaggedExample(tuple(words), tuple(tags), source)


def check_scheme(names: Sequence[str], where: str) -> None:
    """BIO/IOB2 tag names: O, or B-TYPE / I-TYPE (IOBES' E-/S- and other schemes are refused, not misread)."""
    bad = [n for n in names if n != "O" and not (n[:2] in ("B-", "I-") and len(n) > 2)]
    if bad:
        raise DataError(f"{where}: tag {bad[0]!r} is not a BIO/IOB2 tag",
                        hint="token classification reads BIO/IOB2 tags: O, B-TYPE, I-TYPE; tags written as ids "
                             "are named by the teacher's id2label, or by data.classes in id order")


def tag_ids(sentences: Sequence[TaggedExample], path: Path, id_of: Any, known: str) -> list[list[int] | None]:
    """Each sentence's tags as the job's class ids; an unknown tag is one DataError naming it and its line."""
    out: list[list[int] | None] = []
    for s in sentences:
        if s.tags is None:
            out.append(None)
            continue
        ids = [id_of(t) for t in s.tags]
        if None in ids:
            tag = s.tags[ids.index(None)]
            raise DataError(f"{path}: {s.source}: unknown tag {str(tag)!r} (word {s.words[ids.index(None)]!r})",
                            hint=f"known tags: {known}; the teacher was not trained on this tag: map it to one "
                                 "it knows, or list data.classes for a student trained from labels")
        out.append(ids)
    return out


def align(sentences: Sequence[TaggedExample], labels: Sequence[list[int] | None], tokenizer: Any,
          max_length: int, path: Path | str) -> list[dict]:
    """Tokenize words (is_split_into_words) and put each word's label on its first sub-token (-100 elsewhere).

    A feature holds input_ids, `words` (the position of each kept word's first sub-token) and `label` (one per
    token, or None). Sentences cut at max_length keep their first words; a warning counts them."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{path}: token classification needs a fast tokenizer (it maps sub-tokens to words)",
                        hint="save the teacher's tokenizer as tokenizer.json (a *TokenizerFast)")
    features, cut = [], 0
    for start in range(0, len(sentences), 1024):
        chunk = sentences[start: start + 1024]
        try:
            encoded = tokenizer([list(s.words) for s in chunk], is_split_into_words=True, truncation=True,
                                max_length=max_length)
        except ValueError as exc:  # byte-level BPE (RoBERTa, GPT-2) saved without add_prefix_space refuses words
            raise DataError(f"{path}: the tokenizer cannot read words split in advance "
                            f"({str(exc).splitlines()[0][:160]})",
                            hint="re-save the teacher's tokenizer with add_prefix_space=True, as transformers' "
                                 "token-classification recipe loads RoBERTa: AutoTokenizer.from_pretrained(folder, "
                                 "add_prefix_space=True).save_pretrained(folder)") from None
        for row, (s, word_labels) in enumerate(zip(chunk, labels[start: start + 1024])):
            word_ids = encoded.word_ids(row)
            firsts = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
            last = max((w for w in word_ids if w is not None), default=-1)
            cut += last < len(s.words) - 1
            label = None
            if word_labels is not None:
                label = [IGNORED] * len(word_ids)
                for position in firsts:
                    label[position] = word_labels[word_ids[position]]
            features.append({"input_ids": list(encoded["input_ids"][row]), "words": firsts, "label": label,
                             "tokens": list(s.words)})
    if cut:
        warnings.warn(f"{path}: {cut} of {len(sentences)} sentences are longer than data.max_length {max_length} "
                      "tokens and were cut (their last words are not scored)", DataWarning, stacklevel=2)
    return features
