"""From a profile's data section to model-ready batches, for training, evaluation and labelling.

data.py reads files; this module turns what it read into the batches a given model consumes:
text tokenized by the teacher's tokenizer and padded per batch (bucketed by length), images
normalized with timm's data config. Batch order is a pure function of (seed, epoch), so a resumed
run sees the very batches an uninterrupted run would.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from kdcli import data
from kdcli.data.images import ImageFiles, scan_image_folder
from kdcli.data.labels import LabelMap, is_default_names, job_labels
from kdcli.data.lm import Columns, lm_labels, read_lm, tokenize_lm
from kdcli.data.tokens import align, check_scheme, read_tagged, tag_ids, token_columns
from kdcli.errors import DataError
from kdcli.models import Adapter
from kdcli.profile import Profile


@dataclass
class Split:
    """One data split, ready to be cut into batches."""

    kind: str                                  # "text" | "image"
    size: int
    lengths: list[int] = field(default_factory=list)
    features: list[dict] = field(default_factory=list)    # text: input_ids, label
    images: Tensor | ImageFiles | None = None             # image: normalized [N, C, H, W], or decoded per batch
    labels: Tensor | None = None
    sources: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    pad_token_id: int = 0
    classes: tuple[str, ...] = ()                          # tagged words: the tag names, for entity metrics

    def order(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        if self.kind == "text":
            return data.length_bucketed_batches(self.lengths, batch_size, shuffle=shuffle, generator=generator)
        index = torch.randperm(self.size, generator=generator).tolist() if shuffle else list(range(self.size))
        return [index[i: i + batch_size] for i in range(0, self.size, batch_size)]

    def collate(self, indices: list[int]) -> dict[str, Tensor]:
        if self.kind == "text":
            features = [{**self.features[i], "index": i} for i in indices]
            batch = data.collate_text(features, self.pad_token_id)
            if "prompt_len" in features[0]:  # causal-lm: next-token targets, -100 on prompts and padding
                batch["labels"] = lm_labels(features, batch["input_ids"].shape[1])
            return batch
        idx = torch.tensor(indices)
        batch = {"pixel_values": self.images[idx], "index": idx}
        if self.labels is not None:
            batch["labels"] = self.labels[idx]
        return batch


def load_split(profile: Profile, which: str, model: Adapter, *, labels: bool = True,
               source: str | Path | None = None, classes: LabelMap | None = None) -> Split:
    """The `which` split (train, eval, unlabeled, transfer) of the profile, prepared for `model`.

    Labels are mapped through `classes`, the job's one mapping (job_labels(profile) when not given), so every
    split numbers the classes alike whatever classes it happens to hold.
    """
    source = source or getattr(profile.data, which)
    if source is None:
        raise DataError(f"data.{which} is not set in the profile", hint=f"add data.{which}: PATH")
    if labels and classes is None and profile.task.has_classes:
        classes = job_labels(profile, model.path if profile.teacher is None else None)
    if profile.task.data == "image":
        return _image_split(profile, str(source), model, classes if labels else None)
    return _text_split(profile, Path(source), model, classes if labels else None)


def _text_split(profile: Profile, path: Path, model: Adapter, classes: LabelMap | None) -> Split:
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise DataError(f"{model.path or 'the model'}: no tokenizer beside the checkpoint",
                        hint="save the tokenizer into the checkpoint folder (tokenizer.save_pretrained)")
    d = profile.data
    if profile.task.data == "lm":
        return _lm_split(profile, path, tokenizer)
    if profile.task.data == "tokens":
        return _tokens_split(profile, path, tokenizer, classes)
    hint = ("the teacher does not name its classes: list them in data.classes, in the order of its outputs"
            if classes is not None and classes.source == "teacher" and is_default_names(classes.names) else None)
    examples = data.read_text(path, text_column=d.text_column,
                              label_column=d.label_column if classes is not None else None,
                              label2id=classes.label2id if classes is not None else None,
                              limit=d.limit, unknown_hint=hint, pair_column=d.text_pair_column)
    pipeline = model.pipeline if profile.task.output == "embedding" else None
    if pipeline is not None and pipeline.do_lower_case:  # sentence-transformers lowercases before tokenizing
        examples = [data.TextExample(e.text.lower(), e.label, e.source, e.pair and e.pair.lower()) for e in examples]
    limit = model.max_length  # a sentence-transformers pipeline's max_seq_length, if any
    features = data.tokenize(examples, tokenizer, min(d.max_length, limit) if limit else d.max_length)
    return Split(kind="text", size=len(features), lengths=[len(f["input_ids"]) for f in features],
                 features=features, sources=[e.source for e in examples], texts=[e.text for e in examples],
                 pad_token_id=tokenizer.pad_token_id or 0)


def _tokens_split(profile: Profile, path: Path, tokenizer: object, classes: LabelMap | None,
                  columns: tuple[str, str] | None = None) -> Split:
    words, tags = columns or token_columns(profile)
    sentences = read_tagged(path, words, tags if classes is not None else None, profile.data.limit)
    labels: list[list[int] | None] = [None] * len(sentences)
    if classes is not None:
        check_scheme(classes.names, f"the job's classes ({classes.source})")
        labels = tag_ids(sentences, path, classes.id_of, classes.known())
    features = align(sentences, labels, tokenizer, profile.data.max_length, path)
    return Split(kind="text", size=len(features), lengths=[len(f["input_ids"]) for f in features],
                 features=features, sources=[s.source for s in sentences], texts=[" ".join(s.words) for s in sentences],
                 pad_token_id=tokenizer.pad_token_id or 0,  # type: ignore[attr-defined]
                 classes=classes.names if classes is not None else ())


def pseudo_tags_split(profile: Profile, model: Adapter, classes: LabelMap) -> Split:
    """pseudo-label's tagged sentences (labels.jsonl: {tokens, tags} rows) as a labelled split."""
    return _tokens_split(profile, Path(str(profile.data.pseudo)), model.tokenizer, classes, ("tokens", "tags"))


def lm_columns(profile: Profile) -> Columns:
    d = profile.data
    text = d.text_column if "text_column" in d.model_fields_set else "text"  # `sentence` is the classifiers' default
    return Columns(text, d.prompt_column, d.completion_column, d.messages_column)


def _lm_split(profile: Profile, path: Path, tokenizer: object) -> Split:
    examples = read_lm(path, lm_columns(profile))[: profile.data.limit]
    features = tokenize_lm(examples, tokenizer, profile.data.max_length)
    if not any(len(f["input_ids"]) > max(1, f["prompt_len"]) for f in features):
        raise DataError(f"{path}: no example has a token to learn after its prompt within data.max_length "
                        f"{profile.data.max_length}", hint="raise data.max_length, or shorten the prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id  # type: ignore[attr-defined]
    return Split(kind="text", size=len(features), lengths=[len(f["input_ids"]) for f in features],
                 features=features, sources=[e.source for e in examples], texts=[e.text for e in examples],
                 pad_token_id=pad or 0)


def _image_split(profile: Profile, source: str, model: Adapter, classes: LabelMap | None) -> Split:
    config = model.data_config
    assert config is not None, "image data needs an image model (timm)"
    channels, size = int(config["input_size"][0]), int(config["input_size"][-1])
    if Path(source).is_dir():  # a folder can hold any number of images: decoded per batch
        files, targets, names, sources = scan_image_folder(Path(source), channels, profile.data.image_size or size)
        keep = slice(0, profile.data.limit)
        lazy = ImageFiles(files[keep], channels, profile.data.image_size or size, config["mean"], config["std"])
        ids = _class_ids(source, targets, names, sources, classes) if classes is not None and targets is not None \
            else None
        return Split(kind="image", size=len(lazy), images=lazy, sources=sources[keep],
                     labels=ids[keep] if ids is not None else None)
    images = data.read_images(source, image_size=profile.data.image_size or size, channels=channels)
    pixels = data.normalize_images(images.images, tuple(config["mean"]), tuple(config["std"]))
    keep = slice(0, profile.data.limit)
    labels = map_image_labels(source, images, classes) if classes is not None and images.labels is not None else None
    return Split(kind="image", size=len(pixels[keep]), images=pixels[keep],
                 labels=labels[keep] if labels is not None else None, sources=images.sources[keep])


def map_image_labels(source: str, images: data.ImageData, classes: LabelMap) -> Tensor:
    """The images' labels as the job's class ids: by class name, never by the position of a folder."""
    assert images.labels is not None, "map_image_labels needs labelled images"
    return _class_ids(source, images.labels, images.class_names, images.sources, classes)


def _class_ids(source: str, local: Tensor, names: list[str], sources: list[str], classes: LabelMap) -> Tensor:
    """`local` labels (indices into `names`, a source's own class list) as the job's class ids."""
    ids = [classes.id_of(name) for name in names]
    unknown = [(name, i) for i, (name, got) in enumerate(zip(names, ids)) if got is None]
    if unknown:
        name, index = unknown[0]
        example = sources[int((local == index).nonzero()[0])] if (local == index).any() else ""
        raise DataError(f"{source}: class '{name}'{f' (e.g. {example})' if example else ''} is not one of the "
                        f"job's {len(classes)} classes", hint=f"known classes: {classes.known()}")
    return torch.tensor(ids, dtype=torch.long)[local]


def train_and_eval(profile: Profile, model: Adapter, classes: LabelMap | None = None) -> tuple[Split, Split | None]:
    """The training split, and the eval split (or a held-out share of train when eval is unset).
    Without data.train, the transfer set alone trains (labels dropped): a run that needs no labels."""
    d = profile.data
    train = load_split(profile, "transfer", model, labels=False) if d.transfer and not d.train \
        else load_split(profile, "train", model, classes=classes)
    if profile.data.eval:
        return train, load_split(profile, "eval", model, classes=classes)
    if profile.data.eval_fraction > 0:
        keep, held = data.split_indices(train.size, profile.data.eval_fraction, profile.train.seed)
        return subset(train, keep), subset(train, held)
    return train, None


def transfer_split(profile: Profile, model: Adapter) -> Split | None:
    """data.transfer beside labelled data, labels dropped; None when it is unset or is the training split."""
    d = profile.data
    return load_split(profile, "transfer", model, labels=False) if d.transfer and d.train else None


def subset(split: Split, indices: list[int]) -> Split:
    if split.kind == "text":
        return Split(kind="text", size=len(indices), lengths=[split.lengths[i] for i in indices],
                     features=[split.features[i] for i in indices], sources=[split.sources[i] for i in indices],
                     texts=[split.texts[i] for i in indices], pad_token_id=split.pad_token_id,
                     classes=split.classes)
    idx = torch.tensor(indices, dtype=torch.long)
    images = split.images.take(indices) if isinstance(split.images, ImageFiles) else split.images[idx]
    return Split(kind="image", size=len(indices), images=images,
                 labels=split.labels[idx] if split.labels is not None else None,
                 sources=[split.sources[i] for i in indices])


def concat(first: Split, second: Split) -> Split:
    """Two text splits as one (causal-lm: the training data and the teacher's completions)."""
    return Split(kind="text", size=first.size + second.size, lengths=first.lengths + second.lengths,
                 features=first.features + second.features, sources=first.sources + second.sources,
                 texts=first.texts + second.texts, pad_token_id=first.pad_token_id, classes=first.classes)


def loader(split: Split, order: list[list[int]], device: torch.device) -> Iterable[dict[str, Tensor]]:
    """Batches in `order`; a lazily decoded split is decoded by worker processes ahead of use, into pinned
    memory on CUDA (non-blocking copies)."""
    lazy = isinstance(split.images, ImageFiles)
    workers = min(4, os.cpu_count() or 1) if lazy and len(order) > 1 else 0
    return DataLoader(order, batch_size=None, collate_fn=split.collate, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

