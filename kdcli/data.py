"""Read training data: labelled text files (csv, tsv, jsonl, txt) and images (sklearn digits, npz, folders).

Every failure is a DataError that names the file, the line or item, and the column, with a hint.
Tokenization pads nothing; collate_text pads each batch to its own longest row, and
length_bucketed_batches groups rows of similar length so that padding stays small.
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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdcli.errors import DataError

TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".txt")
# csv's own field limit, for every format: even at max_length 8192 tokens a model reads a small part of a
# longer text, and one runaway line (an unclosed quote, a binary file) would otherwise be tokenized whole.
MAX_TEXT_CHARS = 131_072
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SOURCES = ("sklearn:digits",)


# ---------------------------------------------------------------- text

@dataclass(frozen=True)
class TextExample:
    text: str
    label: int | None
    source: str  # "file:line", or a jsonl row's "id" field, for traceability


class _Row(NamedTuple):
    line: int
    text: str
    raw_label: Any  # None when the row has no label
    source: str


def read_text(path: Path | str, text_column: str = "sentence", label_column: str | None = "label",
              label2id: dict[str, int] | None = None, require_labels: bool = False) -> list[TextExample]:
    """Read a .csv/.tsv (header row), .jsonl (one object a line) or .txt (one text a line) file.

    Labels are mapped through label2id (names or in-range integer ids); without label2id they must
    be non-negative integers. A file without the label column reads as unlabeled unless
    require_labels is set.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(f"{path}: unsupported text file type '{suffix or '(none)'}'",
                        hint=f"use one of {', '.join(TEXT_SUFFIXES)}")
    if require_labels and (label_column is None or suffix == ".txt"):
        raise DataError(f"{path}: labels are required but this file cannot carry any",
                        hint="use a .csv, .tsv or .jsonl file and set data.label_column")
    content = _read_utf8(path)
    if suffix == ".jsonl":
        rows = _jsonl_rows(path, content, text_column, label_column)
    elif suffix == ".txt":
        rows = [_Row(n, _text_of(path, n, line.strip()), None, f"{path.name}:{n}")
                for n, line in enumerate(content.split("\n"), 1) if line.strip()]
    else:
        rows = _table_rows(path, content, suffix == ".tsv", text_column, label_column, require_labels)
    if not rows:
        raise DataError(f"{path}: no data rows", hint="the file holds no examples; check it is the right file")
    labels = _labels(path, rows, label_column, label2id, require_labels)
    return [TextExample(r.text, label, r.source) for r, label in zip(rows, labels)]


def _read_utf8(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: no such file", hint="check the path (and the working directory)")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a data file", hint="point at the file itself")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a BOM would glue itself onto the first column name
        raw = raw[3:]
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 (byte 0x{raw[err.start]:02x})",
                        hint="convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8") from None
    if not content.strip():
        raise DataError(f"{path}: the file is empty", hint="fill it with examples or point at another file")
    return content


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
        text = _text_of(path, line, row[ti].strip())
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
        rows.append(_Row(line, _text_of(path, line, text.strip()), label, source))
    return rows


def _text_of(path: Path, line: int, text: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise DataError(f"{path}, line {line}: a text of {len(text):,} characters; kdcli reads at most "
                        f"{MAX_TEXT_CHARS:,}", hint="split it into shorter examples (a model sees at most "
                                                    "data.max_length tokens of it anyway)")
    return text


def _labels(path: Path, rows: list[_Row], label_column: str | None, label2id: dict[str, int] | None,
            require_labels: bool) -> list[int | None]:
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
                        hint=f"known labels: {known}")
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
    present = [label for label in labels if label is not None]
    if num_classes:
        bad = next((i for i, label in enumerate(labels) if label is not None and not 0 <= label < num_classes), None)
        if bad is not None:
            raise DataError(f"{source}: {split.sources[bad]}: class {labels[bad]}, and the model knows "
                            f"{num_classes} classes (0 to {num_classes - 1})",
                            hint="the teacher was not trained on this class: drop it from the data, or use a "
                                 "teacher that knows it")
    if needed_by and not present:
        what = "no class folders" if split.kind == "image" else f"no labels (column '{label_column}')"
        raise DataError(f"{source}: {what}, and loss '{needed_by}' trains on labels",
                        hint="add labels (or set data.label_column), or drop the loss")
    if needed_by and len(set(present)) < 2:
        raise DataError(f"{source}: every example has the same class ({present[0]}, e.g. {split.sources[0]}); "
                        f"loss '{needed_by}' learns nothing from one class",
                        hint="add examples of the other classes, or drop the loss")


def tokenize(examples: Sequence[TextExample], tokenizer: Any, max_length: int) -> list[dict]:
    """Token ids (truncated to max_length, unpadded) and label for each example."""
    features: list[dict] = []
    step = 1024  # batched calls let a fast tokenizer use its threads
    for start in range(0, len(examples), step):
        chunk = examples[start: start + step]
        encoded = tokenizer([e.text for e in chunk], truncation=True, max_length=max_length)
        features += [{"input_ids": list(ids), "label": e.label} for ids, e in zip(encoded["input_ids"], chunk)]
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
    if all(f.get("label") is not None for f in features):
        batch["labels"] = torch.tensor([f["label"] for f in features], dtype=torch.long)
    if all("index" in f for f in features):
        batch["index"] = torch.tensor([f["index"] for f in features], dtype=torch.long)
    return batch


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


# ---------------------------------------------------------------- images

@dataclass
class ImageData:
    images: Tensor              # float32 [N, C, H, W] in [0, 1]
    labels: Tensor | None       # long [N], None when unlabeled
    class_names: list[str]
    sources: list[str]


def read_images(source: str | Path, *, image_size: int | None = None, channels: int = 3,
                min_classes: int = 1) -> ImageData:
    """Images from `sklearn:digits`, an .npz file, a folder of class subfolders, or a flat folder."""
    if channels not in (1, 3):
        raise DataError(f"{source}: {channels} channels requested", hint="use 1 (grayscale) or 3 (RGB)")
    text = str(source)
    if text.startswith("sklearn:"):
        if text != "sklearn:digits":
            raise DataError(f"{text}: unknown dataset", hint=f"built in: {', '.join(SOURCES)}")
        data = _digits()
    else:
        path = Path(source)
        hint = f"give an .npz file, an image folder, or one of {', '.join(SOURCES)}"
        if not path.exists():
            raise DataError(f"{path}: no such file or folder", hint=hint)
        if not path.is_dir() and path.suffix.lower() != ".npz":
            raise DataError(f"{path}: unsupported image source '{path.suffix}'", hint=hint)
        data = _folder(path, channels, image_size, min_classes) if path.is_dir() else _npz(path)
    if channels == 1:  # convert on the side with fewer channels: cheaper, same result
        data.images = _resize(_to_channels(data.images, channels), image_size)
    else:
        data.images = _to_channels(_resize(data.images, image_size), channels)
    return data


def _digits() -> ImageData:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("sklearn:digits needs scikit-learn", hint="pip install scikit-learn") from None
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # values are 0..16
    return ImageData(images, torch.from_numpy(digits.target.astype(np.int64)),
                     [str(i) for i in range(10)], [f"digits:{i}" for i in range(len(images))])


def _npz(path: Path) -> ImageData:
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {k: archive[k] for k in archive.files}
    except Exception as err:  # noqa: BLE001 - zip, pickle, value errors all mean "unreadable npz"
        raise DataError(f"{path}: cannot read the npz file ({err})", hint="save it with numpy.savez") from None
    if "images" not in arrays:
        raise DataError(f"{path}: no array 'images'", hint=f"arrays in the file: {', '.join(arrays) or '(none)'}")
    images = _npz_pixels(path, arrays["images"])  # never empty
    n, labels = len(images), None
    if "labels" in arrays:
        raw = arrays["labels"]
        if raw.shape != (n,) or not np.issubdtype(raw.dtype, np.integer) or raw.min() < 0:
            raise DataError(f"{path}: 'labels' must be {n} non-negative integers, got {raw.dtype} {raw.shape}",
                            hint="store one integer class id per image")
        labels = torch.from_numpy(raw.astype(np.int64))
    top = int(labels.max()) if labels is not None else -1
    names = [str(c) for c in arrays["class_names"].reshape(-1)] if "class_names" in arrays else None
    if names is not None and top >= len(names):
        raise DataError(f"{path}: label {top} but only {len(names)} class_names", hint="give one name per class id")
    return ImageData(images, labels, names or [str(i) for i in range(top + 1)], [f"{path.name}:{i}" for i in range(n)])


def _npz_pixels(path: Path, array: np.ndarray) -> Tensor:
    if array.ndim == 3:
        array = array[:, None]  # [N, H, W]
    elif array.ndim == 4 and array.shape[1] not in (1, 3, 4) and array.shape[-1] in (1, 3, 4):
        array = array.transpose(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    elif array.ndim != 4 or array.shape[1] not in (1, 3, 4):
        raise DataError(f"{path}: 'images' has shape {array.shape}",
                        hint="use [N, H, W], [N, H, W, C] or [N, C, H, W] with C in 1, 3, 4")
    if len(array) == 0:
        raise DataError(f"{path}: 'images' holds no images", hint="store at least one image")
    if array.shape[1] == 4:
        array = array[:, :3]  # drop alpha
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise DataError(f"{path}: integer 'images' outside 0..255", hint="store uint8 pixels")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 255.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{path}: 'images' has dtype {array.dtype}", hint="store uint8 or float pixels")
    low, high = float(array.min()), float(array.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
        raise DataError(f"{path}: float 'images' range {low:g}..{high:g} is not within [0, 1]",
                        hint="scale float pixels to [0, 1], or store uint8 0..255")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _folder(path: Path, channels: int, image_size: int | None, min_classes: int) -> ImageData:
    visible = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    classes = [p for p in visible if p.is_dir()]
    loose = [p for p in visible if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if classes and loose:
        raise DataError(f"{path}: holds both class folders and loose images (e.g. {loose[0].name})",
                        hint="put every image in a class folder, or use a flat folder for unlabeled images")
    if not classes:
        if not loose:
            raise DataError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) and no class folders",
                            hint="one subfolder per class of image files, or a flat folder of images")
        images = [_open_image(p, channels, image_size) for p in loose]
        return ImageData(_stack(path, images, loose), None, [], [p.name for p in loose])
    if len(classes) < min_classes:
        raise DataError(f"{path}: {len(classes)} class folder(s), at least {min_classes} needed",
                        hint="add one subfolder per class")
    files, labels = [], []
    for label, folder in enumerate(classes):
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{folder}: class folder without images",
                            hint=f"add images ({', '.join(IMAGE_SUFFIXES)}) or remove the folder")
        files += found
        labels += [label] * len(found)
    images = [_open_image(p, channels, image_size) for p in files]
    return ImageData(_stack(path, images, files), torch.tensor(labels, dtype=torch.long),
                     [c.name for c in classes], [str(p.relative_to(path)) for p in files])


def _open_image(path: Path, channels: int, image_size: int | None) -> Tensor:
    from PIL import Image
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")  # convert forces a full decode
            if image_size:
                img = img.resize((image_size, image_size), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
        raise DataError(f"{path}: cannot read the image ({err})",
                        hint="the file is corrupted or not an image; replace or remove it") from None
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0


def _stack(folder: Path, images: list[Tensor], files: list[Path]) -> Tensor:
    first = images[0].shape
    for image, file in zip(images, files):
        if image.shape != first:
            raise DataError(f"{file}: size {tuple(image.shape[1:])} differs from {files[0].name}'s "
                            f"{tuple(first[1:])}", hint="set data.image_size to resize all images")
    return torch.stack(images)


def _to_channels(images: Tensor, channels: int) -> Tensor:
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # PIL's "L" luminance
    return (images * weights).sum(1, keepdim=True)


def _resize(images: Tensor, image_size: int | None) -> Tensor:
    if not image_size or tuple(images.shape[-2:]) == (image_size, image_size):
        return images
    shrink = image_size < min(images.shape[-2:])  # antialias only matters when shrinking
    out = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False,
                        antialias=shrink)
    return out.clamp_(0.0, 1.0)


def normalize_images(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel (x - mean) / std, with mean/std from timm's resolve_data_config."""
    if len(mean) != images.shape[1] or len(std) != images.shape[1]:
        raise DataError(f"normalization has {len(mean)} means/{len(std)} stds for {images.shape[1]}-channel images",
                        hint="read the images with the model's channel count (timm data_config input_size)")
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - m) / s


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held-out) sorted index lists; held-out is round(n * fraction), at least 1 and at most n - 1."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction {fraction} is not between 0 and 1", hint="use e.g. 0.1")
    if n < 2:
        raise DataError(f"cannot split {n} example(s) in two", hint="give at least two examples")
    held_count = min(n - 1, max(1, round(n * fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[held_count:]), sorted(order[:held_count])
