"""Labelled text files (csv, tsv, jsonl, txt, and Hugging Face datasets: parquet, arrow, save_to_disk
folders) read with every failure named by file, line and column;
tokenization without padding, per-batch padding, and length-bucketed batches so padding stays small.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from kdcli.data.hf_datasets import HF_SUFFIXES, is_hf_dataset, read_columns
from kdcli.errors import DataError

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".txt")
# csv's own field limit, for every format: even at max_length 8192 tokens a model reads a small part of a
# longer text, and one runaway line (an unclosed quote, a binary file) would otherwise be tokenized whole.
MAX_TEXT_CHARS = 131_072



@dataclass(frozen=True)
class TextExample:
    text: str
    label: int | None
    source: str  # "file:line", or a jsonl row's "id" field, for traceability
    pair: str | None = None  # the second text of a pair (data.text_pair_column)


class _Row(NamedTuple):
    line: int
    text: str
    raw_label: Any  # None when the row has no label
    source: str


def read_text(path: Path | str, text_column: str = "sentence", label_column: str | None = "label",
              label2id: dict[str, int] | None = None, require_labels: bool = False,
              limit: int | None = None, unknown_hint: str | None = None,
              pair_column: str | None = None) -> list[TextExample]:
    """Read a .csv/.tsv (header row), .jsonl (one object a line) or .txt (one text a line) file; with
    `pair_column`, each example is a pair of texts (the second from that column).

    Labels are mapped through label2id (names or in-range integer ids); without label2id they must
    be non-negative integers. A file without the label column reads as unlabeled unless
    require_labels is set. `limit` keeps the first rows only (data.limit); `unknown_hint` is added to
    the hint of an unknown-label error.
    """
    rows = _rows(Path(path), text_column, label_column, require_labels)[:limit]
    labels = _labels(Path(path), rows, label_column, label2id, require_labels, unknown_hint)
    pairs = _pairs(Path(path), pair_column, limit) if pair_column else [None] * len(rows)
    return [TextExample(r.text, label, r.source, pair) for r, label, pair in zip(rows, labels, pairs)]


def _pairs(path: Path, column: str, limit: int | None) -> list[str | None]:
    """The second text of each row: the same reader, on the pair column (a missing or empty one named)."""
    if path.suffix.lower() == ".txt":
        raise DataError(f"{path}: a .txt file holds one text a line, and data.text_pair_column asks for pairs",
                        hint="use a .csv, .tsv or .jsonl file with both columns")
    return [r.text for r in _rows(path, column, None, False)[:limit]]


def read_labels(path: Path | str, text_column: str = "sentence", label_column: str = "label",
                limit: int | None = None) -> list[str]:
    """The labels of a text file as written (no mapping): what names a model trained from this file's classes."""
    rows = _rows(Path(path), text_column, label_column, False)[:limit]
    return [str(r.raw_label).strip() for r in rows if r.raw_label is not None and str(r.raw_label).strip()]


def _rows(path: Path, text_column: str, label_column: str | None, require_labels: bool) -> list[_Row]:
    suffix = path.suffix.lower()
    if is_hf_dataset(path):
        rows = _dataset_rows(path, text_column, label_column, require_labels)
        return _nonempty(path, rows)
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path}: unsupported text file type '{suffix or '(none)'}'",
                        hint=f"use one of {', '.join(TEXT_SUFFIXES + HF_SUFFIXES)}, or a save_to_disk folder")
    if require_labels and (label_column is None or suffix == ".txt"):
        raise DataError(f"{path}: labels are required but this file cannot carry any",
                        hint="use a .csv, .tsv or .jsonl file and set data.label_column")
    content = read_utf8(path)
    if suffix == ".jsonl":
        rows = _jsonl_rows(path, content, text_column, label_column)
    elif suffix == ".txt":
        rows = [_Row(n, text_of(path, n, line.strip()), None, f"{path.name}:{n}")
                for n, line in enumerate(content.split("\n"), 1) if line.strip()]
    else:
        rows = _table_rows(path, content, suffix == ".tsv", text_column, label_column, require_labels)
    return _nonempty(path, rows)


def _nonempty(path: Path, rows: list[_Row]) -> list[_Row]:
    if not rows:
        raise DataError(f"{path}: no data rows", hint="the file holds no examples; check it is the right file")
    return rows


def _dataset_rows(path: Path, text_column: str, label_column: str | None, require_labels: bool) -> list[_Row]:
    """A Hugging Face dataset's rows, checked as a csv's are (row n is "line n")."""
    names, columns = read_columns(path, [text_column, label_column])
    _column(path, text_column, names)
    if label_column is not None and require_labels:
        _column(path, label_column, names)
    labels = columns.get(label_column or "", [None] * len(columns[text_column]))
    rows = []
    for line, (text, label) in enumerate(zip(columns[text_column], labels), 1):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}, line {line}: empty or non-string text in column '{text_column}'",
                            hint="give every row a non-empty string text, or filter the dataset")
        rows.append(_Row(line, text_of(path, line, text.strip()), label, f"{path.name}:{line}"))
    return rows


def read_utf8(path: Path) -> str:
    """A data file's text: refused with one DataError when missing, a folder, or not UTF-8."""
    if not path.exists():
        raise DataError(f"{path}: no such file", hint="check the path (and the working directory)")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a data file", hint="point at the file itself")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a BOM would glue itself onto the first column name
        raw = raw[3:]
    utf16 = _utf16_name(raw)
    if utf16:
        raise DataError(f"{path}: {utf16.upper()} text (it starts with a byte-order mark), not UTF-8",
                        hint=f"convert the file to UTF-8: iconv -f {utf16} -t utf-8 {path.name} > "
                             f"{path.stem}.utf8{path.suffix}")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 (byte 0x{raw[err.start]:02x})",
                        hint=f"convert the file to UTF-8; from Windows-1252 (Excel's CSV): "
                             f"iconv -f cp1252 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}") from None
    if not content.strip():
        raise DataError(f"{path}: the file is empty", hint="fill it with examples or point at another file")
    return content


def _utf16_name(raw: bytes) -> str | None:
    """iconv's name for UTF-16 text that says so with its byte-order mark (Windows' "Unicode" export)."""
    return "utf-16le" if raw.startswith(b"\xff\xfe") else "utf-16be" if raw.startswith(b"\xfe\xff") else None


def _column(path: Path, name: str, available: Sequence[str], where: str = "") -> None:
    if name in available:
        return
    close = difflib.get_close_matches(name, list(available), n=1, cutoff=0.6)
    close = close or [c for c in available if c.lower() == name.lower()]
    guess = f"did you mean '{close[0]}'? " if close else ""
    raise DataError(f"{path}{where}: no column '{name}'",
                    hint=f"{guess}columns: {', '.join(repr(c) for c in available) or '(none)'}")


def _table_rows(path: Path, content: str, tsv: bool, text_column: str, label_column: str | None,
                require_labels: bool) -> list[_Row]:
    # SST-2 style tsv has no quoting: a quote character is just text there
    reader = csv.reader(io.StringIO(content, newline=""), delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    header = [h.strip() for h in next(reader)]
    _column(path, text_column, header)
    has_label = label_column is not None and label_column in header
    if label_column is not None and require_labels and not has_label:
        _column(path, label_column, header)
    ti = header.index(text_column)
    li = header.index(label_column) if has_label else None
    rows = []
    records: list[tuple[int, int, list[str]]] = []  # (first line, last line, fields): a quoted field spans lines
    start = reader.line_num + 1
    try:
        for row in reader:
            records.append((start, reader.line_num, row))
            start = reader.line_num + 1
    except csv.Error as err:  # NUL bytes, an unclosed quote, a field over csv's limit...
        if "field limit" in str(err):
            raise DataError(f"{path}, line {start}: a field longer than {MAX_TEXT_CHARS:,} characters",
                            hint="is a quote left open on that line? otherwise split the text into shorter "
                                 "examples") from None
        raise DataError(f"{path}, line {start}: {err}", hint="fix the row's quoting") from None
    for line, end, row in records:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            hint = ("tsv is read without quoting: remove tabs inside the text" if tsv
                    else f"a quote opened on line {line} closes on line {end}: is one missing?" if end > line
                    else "quote fields that contain commas")
            raise DataError(f"{path}, line {line}: {len(row)} fields, the header has {len(header)}", hint=hint)
        text = text_of(path, line, row[ti].strip())
        if not text:
            raise DataError(f"{path}, line {line}: empty text in column '{text_column}'",
                            hint="fill in the text or remove the row")
        label = (row[li].strip() or None) if li is not None else None
        rows.append(_Row(line, text, label, f"{path.name}:{line}"))
    return rows


def _jsonl_rows(path: Path, content: str, text_column: str, label_column: str | None) -> list[_Row]:
    rows = []
    for line, chunk in enumerate(content.split("\n"), 1):
        if not chunk.strip():
            continue
        try:
            obj = json.loads(chunk)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {line}: invalid JSON ({err.msg}, column {err.colno})",
                            hint="each line must be one JSON object") from None
        except (ValueError, RecursionError) as err:  # a 5000-digit number, [[[[... nested past the stack
            raise DataError(f"{path}, line {line}: unreadable JSON ({str(err).split(';')[0][:120]})",
                            hint="each line must be one flat JSON object") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}, line {line}: expected a JSON object, got {type(obj).__name__}",
                            hint='write one object a line, e.g. {"sentence": "...", "label": 1}')
        _column(path, text_column, list(obj), where=f", line {line}")
        text = obj[text_column]
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}, line {line}: empty or non-string text in field '{text_column}'",
                            hint="give every row a non-empty string text")
        source = str(obj["id"]) if obj.get("id") is not None else f"{path.name}:{line}"
        label = obj.get(label_column) if label_column is not None else None
        rows.append(_Row(line, text_of(path, line, text.strip()), label, source))
    return rows


def text_of(path: Path, line: int, text: str) -> str:
    """One example's text, refused (naming file and line) when longer than kdcli reads."""
    if len(text) > MAX_TEXT_CHARS:
        raise DataError(f"{path}, line {line}: a text of {len(text):,} characters; kdcli reads at most "
                        f"{MAX_TEXT_CHARS:,}", hint="split it into shorter examples (a model sees at most "
                                                    "data.max_length tokens of it anyway)")
    return text


def _labels(path: Path, rows: list[_Row], label_column: str | None, label2id: dict[str, int] | None,
            require_labels: bool, unknown_hint: str | None = None) -> list[int | None]:
    missing = [r for r in rows if r.raw_label is None]
    if len(missing) == len(rows):
        if require_labels:
            raise DataError(f"{path}: no labels in column '{label_column}'",
                            hint="this file needs labels; add them or set data.label_column")
        return [None] * len(rows)
    if missing:  # a half-labelled file is almost always a broken one
        raise DataError(f"{path}, line {missing[0].line}: no label in column '{label_column}' "
                        f"({len(missing)} of {len(rows)} rows lack one)",
                        hint="label every row, or drop the label column to read the file as unlabeled")
    unknown: dict[str, int] = {}
    out: list[int | None] = []
    for r in rows:
        label = _label_id(r.raw_label, label2id)
        if label is None:
            unknown.setdefault(str(r.raw_label), r.line)
        out.append(label)
    if unknown:
        shown = ", ".join(f"'{v}' (line {n})" for v, n in list(unknown.items())[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        known = (", ".join(f"{k!r}={v}" for k, v in sorted(label2id.items(), key=lambda kv: kv[1]))
                 if label2id else "non-negative integer class ids")
        raise DataError(f"{path}: unknown label {shown}{more} in column '{label_column}'",
                        hint=f"known labels: {known}" + (f"; {unknown_hint}" if unknown_hint else ""))
    return out


def _label_id(raw: Any, label2id: dict[str, int] | None) -> int | None:
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # jsonl 1.0 means class 1
    key = str(raw).strip()
    if label2id and key in label2id:
        return int(label2id[key])
    try:
        value = int(key)
    except ValueError:
        return None
    if label2id:  # "0"/"1" against {"negative": 0, "positive": 1}: accept the id itself
        return value if value in set(label2id.values()) else None
    return value if value >= 0 else None


def check_train_labels(split: Any, source: str, *, num_classes: int | None, needed_by: str | None,
                       label_column: str = "label") -> None:
    """Training labels, checked before step 1 so the message names the file and the item, not a step.

    `split` is a kdcli.batches.Split; `needed_by` the first loss that trains on labels (ce, dkd), if any.
    Every label must be a class of the model's head (a class folder the teacher never saw would crash
    cross entropy mid-run); a label loss needs labels, and at least two classes to learn anything.
    """
    if split.kind == "image":
        labels = split.labels.tolist() if split.labels is not None else []
    else:
        labels = [f.get("label") for f in split.features]
    sources = list(split.sources)
    if any(isinstance(label, list) for label in labels):  # tagged words: one label per scored word
        sources = [src for label, src in zip(labels, split.sources) for t in label or [None] if t != -100]
        labels = [t for label in labels for t in label or [None] if t != -100]
    present = [label for label in labels if label is not None]
    if num_classes:
        bad = next((i for i, label in enumerate(labels) if label is not None and not 0 <= label < num_classes), None)
        if bad is not None:
            raise DataError(f"{source}: {sources[bad]}: class {labels[bad]}, and the model knows "
                            f"{num_classes} classes (0 to {num_classes - 1})",
                            hint="the teacher was not trained on this class: drop it from the data, or use a "
                                 "teacher that knows it")
    if needed_by and not present:
        what = "no class folders" if split.kind == "image" else f"no labels (column '{label_column}')"
        raise DataError(f"{source}: {what}, and loss '{needed_by}' trains on labels",
                        hint="add labels (or set data.label_column), or drop the loss")
    if needed_by and len(set(present)) < 2:
        raise DataError(f"{source}: every example has the same class ({present[0]}, e.g. {sources[0]}); "
                        f"loss '{needed_by}' learns nothing from one class",
                        hint="add examples of the other classes, or drop the loss")


def tokenize(examples: Sequence[TextExample], tokenizer: Any, max_length: int) -> list[dict]:
    """Token ids (truncated to max_length, unpadded) and label for each example. Pairs are encoded as the
    tokenizer pairs texts ([CLS] a [SEP] b [SEP], token types where it gives them), truncated longest first."""
    features: list[dict] = []
    step = 1024  # batched calls let a fast tokenizer use its threads
    pairs = bool(examples) and examples[0].pair is not None
    for start in range(0, len(examples), step):
        chunk = examples[start: start + step]
        second = [e.pair or "" for e in chunk] if pairs else None
        encoded = tokenizer([e.text for e in chunk], second, truncation=True, max_length=max_length)
        for row, e in enumerate(chunk):
            feature = {"input_ids": list(encoded["input_ids"][row]), "label": e.label}
            if pairs:  # the second text, for what writes examples back (pseudo-label's labels.jsonl)
                feature["text_pair"] = e.pair
            if pairs and "token_type_ids" in encoded:
                feature["token_type_ids"] = list(encoded["token_type_ids"][row])
            features.append(feature)
    return features


def collate_text(features: list[dict], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad to the longest row of this batch; labels only when every row has one."""
    if not features:
        raise ValueError("collate_text needs at least one feature")
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if all("token_type_ids" in f for f in features):  # a text pair's segments, where the model uses them
        batch["token_type_ids"] = _padded([f["token_type_ids"] for f in features], width, 0)
    if all("words" in f for f in features):  # tagged words: each word's first sub-token, the positions scored
        batch["word_mask"] = _padded([[0] * len(f["input_ids"]) for f in features], width, 0).bool()
        for i, f in enumerate(features):
            batch["word_mask"][i, f["words"]] = True
    if all(f.get("label") is not None for f in features):
        labels = [f["label"] for f in features]
        batch["labels"] = _padded(labels, width, -100) if isinstance(labels[0], list) \
            else torch.tensor(labels, dtype=torch.long)
    if all("index" in f for f in features):
        batch["index"] = torch.tensor([f["index"] for f in features], dtype=torch.long)
    return batch


def _padded(rows: list[list[int]], width: int, value: int) -> Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def length_bucketed_batches(lengths: list[int], batch_size: int, *, shuffle: bool,
                            generator: torch.Generator | None, bucket_factor: int = 50) -> list[list[int]]:
    """Batches of indices whose rows have similar lengths; each index exactly once.

    Shuffle, sort by length within chunks of batch_size * bucket_factor (so buckets stay random
    across the epoch), cut into batches, then shuffle the batch order. Without shuffle: sequential.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(lengths)
    if not shuffle:
        return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    order = torch.randperm(n, generator=generator).tolist()
    chunk = batch_size * max(1, bucket_factor)  # a multiple of batch_size: only the last batch is short
    batches: list[list[int]] = []
    for start in range(0, n, chunk):
        bucket = sorted(order[start: start + chunk], key=lambda i: lengths[i])  # stable: ties stay random
        batches += [bucket[i: i + batch_size] for i in range(0, len(bucket), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
