"""Input noise for the student only (Noisy Student): the teacher always sees clean inputs.

Model noise (dropout, timm's stochastic depth via `student.init.model_args.drop_path_rate`) comes
from the student being in train mode; this module adds input noise: token masking for text,
RandAugment for images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdcli.profile import NoiseSpec


def add_noise(batch: dict[str, Tensor], spec: NoiseSpec, *, mask_token_id: int | None, special: Tensor | None,
              mean: tuple[float, ...] | None, std: tuple[float, ...] | None, generator: torch.Generator
              ) -> dict[str, Tensor]:
    """A noised copy of the batch; the input batch is left as it is."""
    if "input_ids" in batch and spec.token_mask > 0 and mask_token_id is not None:
        ids = batch["input_ids"]
        chosen = torch.rand(ids.shape, generator=generator) < spec.token_mask
        if special is not None:
            chosen &= ~special.cpu()
        batch = {**batch, "input_ids": torch.where(chosen.to(ids.device), torch.full_like(ids, mask_token_id), ids)}
    if "pixel_values" in batch and spec.randaugment and mean is not None and std is not None:
        batch = {**batch, "pixel_values": _randaugment(batch["pixel_values"], spec.randaugment_magnitude,
                                                       mean, std, generator)}
    return batch


def _randaugment(pixels: Tensor, magnitude: int, mean: tuple[float, ...], std: tuple[float, ...],
                 generator: torch.Generator) -> Tensor:
    """RandAugment (Cubuk et al. 2020) per image, on [0, 255] uint8 as torchvision expects."""
    from torchvision.transforms import v2
    m = torch.tensor(mean, device=pixels.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=pixels.device).view(1, -1, 1, 1)
    images = ((pixels * s + m).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    augment = v2.RandAugment(num_ops=2, magnitude=magnitude)
    # torchvision draws from the global CPU RNG: seed it from our generator so runs stay reproducible,
    # and restore it after (torch.manual_seed would also reseed CUDA, where dropout draws its masks).
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        out = torch.stack([augment(img) for img in images])
    return ((out.float().to(pixels.device) / 255) - m) / s
