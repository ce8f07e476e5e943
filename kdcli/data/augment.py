"""Consistent augmentation (Beyer et al. 2022, "A good teacher is patient and consistent"): one augmented
view per batch, shown to the teacher and the student alike. Text: the same token masking for both.
Images: timm's RandAugment and Mixup/CutMix. Noisy Student's noise (data/noise.py) is the other thing:
it changes the student's input only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from kdcli.profile import AugmentSpec

Augment = Callable[[dict[str, Tensor], torch.Generator], dict[str, Tensor]]


def consistent_augment(spec: AugmentSpec, *, mask_token_id: int | None, special: Callable[[dict], Tensor] | None,
                       mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                       num_classes: int | None) -> Augment | None:
    """The function that turns a clean batch into the view both models see; None when nothing is on."""
    if not spec.active():
        return None

    def augment(batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        if "input_ids" in batch and spec.token_mask > 0 and mask_token_id is not None:
            batch = _mask_tokens(batch, spec.token_mask, mask_token_id, special, generator)
        if "pixel_values" in batch and mean is not None and std is not None:
            if spec.randaugment:
                batch = {**batch, "pixel_values": randaugment(batch["pixel_values"], spec.randaugment_magnitude,
                                                              mean, std, generator)}
            if spec.mixup or spec.cutmix:
                batch = mix(batch, spec.mixup, spec.cutmix, num_classes, generator)
        return batch
    return augment


def _mask_tokens(batch: dict[str, Tensor], share: float, mask_token_id: int,
                 special: Callable[[dict], Tensor] | None, generator: torch.Generator) -> dict[str, Tensor]:
    ids = batch["input_ids"]
    chosen = torch.rand(ids.shape, generator=generator) < share
    if special is not None:
        chosen &= ~special(batch).cpu()
    return {**batch, "input_ids": torch.where(chosen.to(ids.device), torch.full_like(ids, mask_token_id), ids)}


@contextmanager
def _seeded(generator: torch.Generator) -> Iterator[None]:
    """timm draws from Python's, NumPy's and torch's global RNGs: seed them from ours, restore them after."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def randaugment(pixels: Tensor, magnitude: int, mean: tuple[float, ...], std: tuple[float, ...],
                generator: torch.Generator) -> Tensor:
    """timm's RandAugment (2 ops at `magnitude`) per image, on the PIL images timm's transforms expect."""
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform
    m = torch.tensor(mean, device=pixels.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=pixels.device).view(1, -1, 1, 1)
    images = ((pixels * s + m).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    gray = images.shape[1] == 1
    fill = round(255 * mean[0]) if gray else tuple(round(255 * c) for c in mean)
    transform = rand_augment_transform(f"rand-m{magnitude}-n2", {"img_mean": fill})
    out = []
    with _seeded(generator):
        for image in images:
            array = image[0].numpy() if gray else image.permute(1, 2, 0).numpy()
            view = np.asarray(transform(Image.fromarray(array)))  # uint8 HxW: "L", HxWx3: "RGB"
            out.append(torch.from_numpy(view.copy()).view(image.shape[1], image.shape[2], -1).permute(2, 0, 1))
    return ((torch.stack(out).float().to(pixels.device) / 255) - m) / s


def mix(batch: dict[str, Tensor], mixup: float, cutmix: float, num_classes: int | None,
        generator: torch.Generator) -> dict[str, Tensor]:
    """timm's Mixup/CutMix (one of the two per batch when both are on); labels become mixed soft targets."""
    from timm.data import Mixup
    pixels = batch["pixel_values"]
    even = len(pixels) - len(pixels) % 2  # timm pairs row i with row B-1-i: an odd last row stays as it is
    if even < 2:
        return batch
    classes = num_classes or 1
    labels = batch.get("labels")
    target = labels[:even] if labels is not None else torch.zeros(even, dtype=torch.long, device=pixels.device)
    mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.0, num_classes=classes)
    with _seeded(generator):
        mixed, soft = mixer(pixels[:even].clone(), target)
    out = {**batch, "pixel_values": torch.cat([mixed, pixels[even:]])}
    if labels is not None:
        rest = torch.nn.functional.one_hot(labels[even:], classes).to(soft.dtype)
        out["labels"] = torch.cat([soft, rest])
    return out
