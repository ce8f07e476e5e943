"""From a profile's data section to model-ready batches, for training, evaluation and labelling.

data.py reads files; this module turns what it read into the batches a given model consumes:
text tokenized by the teacher's tokenizer and padded per batch (bucketed by length), images
normalized with timm's data config. Batch order is a pure function of (seed, epoch), so a resumed
run sees the very batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from kdcli import data
from kdcli.data.labels import CLASSIFICATION, LabelMap, is_default_names, job_labels
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
    images: Tensor | None = None                          # image: normalized [N, C, H, W]
    labels: Tensor | None = None
    sources: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    pad_token_id: int = 0

    def order(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        if self.kind == "text":
            return data.length_bucketed_batches(self.lengths, batch_size, shuffle=shuffle, generator=generator)
        index = torch.randperm(self.size, generator=generator).tolist() if shuffle else list(range(self.size))
        return [index[i: i + batch_size] for i in range(0, self.size, batch_size)]

    def collate(self, indices: list[int]) -> dict[str, Tensor]:
        if self.kind == "text":
            features = [{**self.features[i], "index": i} for i in indices]
            return data.collate_text(features, self.pad_token_id)
        idx = torch.tensor(indices)
        batch = {"pixel_values": self.images[idx], "index": idx}
        if self.labels is not None:
            batch["labels"] = self.labels[idx]
        return batch

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                skip: int = 0) -> Iterator[dict[str, Tensor]]:
        for indices in self.order(batch_size, shuffle=shuffle, seed=seed, epoch=epoch)[skip:]:
            yield self.collate(indices)


def load_split(profile: Profile, which: str, model: Adapter, *, labels: bool = True,
               source: str | Path | None = None, classes: LabelMap | None = None) -> Split:
    """The `which` split (train, eval, unlabeled) of the profile, prepared for `model`.

    Labels are mapped through `classes`, the job's one mapping (job_labels(profile) when not given), so every
    split numbers the classes alike whatever classes it happens to hold.
    """
    source = source or getattr(profile.data, which)
    if source is None:
        raise DataError(f"data.{which} is not set in the profile", hint=f"add data.{which}: PATH")
    if labels and classes is None and profile.task in CLASSIFICATION:
        classes = job_labels(profile, getattr(model, "path", None) if profile.teacher is None else None)
    if model.family == "timm":
        return _image_split(profile, str(source), model, classes if labels else None)
    return _text_split(profile, Path(source), model, classes if labels else None)


def _text_split(profile: Profile, path: Path, model: Adapter, classes: LabelMap | None) -> Split:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise DataError(f"{getattr(model, 'path', 'the model')}: no tokenizer beside the checkpoint",
                        hint="save the tokenizer into the checkpoint folder (tokenizer.save_pretrained)")
    d = profile.data
    hint = ("the teacher does not name its classes: list them in data.classes, in the order of its outputs"
            if classes is not None and classes.source == "teacher" and is_default_names(classes.names) else None)
    examples = data.read_text(path, text_column=d.text_column,
                              label_column=d.label_column if classes is not None else None,
                              label2id=classes.label2id if classes is not None else None,
                              limit=d.limit, unknown_hint=hint)
    pipeline = getattr(model, "pipeline", None) if profile.task == "embedding" else None
    if pipeline is not None and pipeline.do_lower_case:  # sentence-transformers lowercases before tokenizing
        examples = [data.TextExample(e.text.lower(), e.label, e.source) for e in examples]
    limit = getattr(model, "max_length", None)  # a sentence-transformers pipeline's max_seq_length, if any
    features = data.tokenize(examples, tokenizer, min(d.max_length, limit) if limit else d.max_length)
    return Split(kind="text", size=len(features), lengths=[len(f["input_ids"]) for f in features],
                 features=features, sources=[e.source for e in examples], texts=[e.text for e in examples],
                 pad_token_id=tokenizer.pad_token_id or 0)


def _image_split(profile: Profile, source: str, model: Adapter, classes: LabelMap | None) -> Split:
    config = model.data_config  # type: ignore[attr-defined]
    channels, size = int(config["input_size"][0]), int(config["input_size"][-1])
    images = data.read_images(source, image_size=profile.data.image_size or size, channels=channels)
    pixels = data.normalize_images(images.images, tuple(config["mean"]), tuple(config["std"]))
    keep = slice(0, profile.data.limit)
    labels = map_image_labels(source, images, classes) if classes is not None and images.labels is not None else None
    return Split(kind="image", size=len(pixels[keep]), images=pixels[keep],
                 labels=labels[keep] if labels is not None else None, sources=images.sources[keep])


def map_image_labels(source: str, images: data.ImageData, classes: LabelMap) -> Tensor:
    """The images' labels as the job's class ids: by class name, never by the position of a folder."""
    ids = [classes.id_of(name) for name in images.class_names]
    unknown = [(name, i) for i, (name, got) in enumerate(zip(images.class_names, ids)) if got is None]
    if unknown:
        name, local = unknown[0]
        example = images.sources[int((images.labels == local).nonzero()[0])] if (images.labels == local).any() else ""
        raise DataError(f"{source}: class '{name}'{f' (e.g. {example})' if example else ''} is not one of the "
                        f"job's {len(classes)} classes", hint=f"known classes: {classes.known()}")
    return torch.tensor(ids, dtype=torch.long)[images.labels]


def train_and_eval(profile: Profile, model: Adapter, classes: LabelMap | None = None) -> tuple[Split, Split | None]:
    """The training split, and the eval split (or a held-out share of train when eval is unset)."""
    train = load_split(profile, "train", model, classes=classes)
    if profile.data.eval:
        return train, load_split(profile, "eval", model, classes=classes)
    if profile.data.eval_fraction > 0:
        keep, held = data.split_indices(train.size, profile.data.eval_fraction, profile.train.seed)
        return subset(train, keep), subset(train, held)
    return train, None


def subset(split: Split, indices: list[int]) -> Split:
    if split.kind == "text":
        return Split(kind="text", size=len(indices), lengths=[split.lengths[i] for i in indices],
                     features=[split.features[i] for i in indices], sources=[split.sources[i] for i in indices],
                     texts=[split.texts[i] for i in indices], pad_token_id=split.pad_token_id)
    idx = torch.tensor(indices, dtype=torch.long)
    return Split(kind="image", size=len(indices), images=split.images[idx],
                 labels=split.labels[idx] if split.labels is not None else None,
                 sources=[split.sources[i] for i in indices])


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

