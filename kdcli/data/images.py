"""Images from sklearn's digits, .npz arrays or a folder per class, as float [N, C, H, W] in [0, 1];
normalization and deterministic splits. An image folder can also be read lazily (`ImageFiles`): every
file is checked once up front, then decoded per batch, so memory stays flat as the folder grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdcli.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SOURCES = ("sklearn:digits",)


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


def image_class_names(source: str | Path) -> tuple[list[str], bool]:
    """The class names an image source declares, without reading a pixel: (names, in class-id order).

    Class folders: their sorted names (not in id order: the job's mapping decides the ids); sklearn:digits:
    "0".."9"; .npz: its class_names (in id order), else the ids its labels use. ([], True) when unlabeled.
    """
    text = str(source)
    if text.startswith("sklearn:"):
        return ([str(i) for i in range(10)], True) if text == "sklearn:digits" else ([], True)
    path = Path(source)
    if path.is_dir():
        return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), False
    if path.suffix.lower() == ".npz" and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as archive:
                if "class_names" in archive.files:
                    return [str(c) for c in archive["class_names"].reshape(-1)], True
                if "labels" in archive.files and archive["labels"].size:
                    return [str(i) for i in range(int(archive["labels"].max()) + 1)], True
        except Exception:  # noqa: BLE001 - an unreadable file: read_images names it
            return [], True
    return [], True


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
    files, labels, names, sources = _folder_files(path, min_classes)
    images = [_open_image(p, channels, image_size) for p in files]
    return ImageData(_stack(path, images, files), labels, names, sources)


class ImageFiles:
    """An image folder decoded per batch: `files[idx]` as normalized [B, C, H, W] (what a Tensor gives)."""

    def __init__(self, files: list[Path], channels: int, image_size: int | None,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.files, self.channels, self.image_size = files, channels, image_size
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: Tensor | list[int]) -> Tensor:
        images = torch.stack([self._one(self.files[int(i)]) for i in index])
        return normalize_images(images, self.mean, self.std)

    def take(self, indices: Sequence[int]) -> ImageFiles:
        return ImageFiles([self.files[i] for i in indices], self.channels, self.image_size, self.mean, self.std)

    def _one(self, path: Path) -> Tensor:
        image = _open_image(path, self.channels, self.image_size)
        return _to_channels(image[None], self.channels)[0]


def scan_image_folder(path: Path, channels: int, image_size: int | None, min_classes: int = 1
                      ) -> tuple[list[Path], Tensor | None, list[str], list[str]]:
    """(files, labels, class names, sources) of an image folder, every file decoded once and dropped:
    a broken image or a size mismatch fails now, not hours into training, and memory stays flat."""
    if not path.is_dir():
        raise DataError(f"{path}: no such folder", hint="give an image folder")
    files, labels, names, sources = _folder_files(path, min_classes)
    first = None
    for file in files:
        shape = tuple(_open_image(file, channels, image_size).shape[1:])
        first = first or (file, shape)
        if shape != first[1]:
            raise DataError(f"{file}: size {shape} differs from {first[0].name}'s {first[1]}",
                            hint="set data.image_size to resize all images")
    return files, labels, names, sources


def _folder_files(path: Path, min_classes: int) -> tuple[list[Path], Tensor | None, list[str], list[str]]:
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
        return loose, None, [], [p.name for p in loose]
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
    return (files, torch.tensor(labels, dtype=torch.long), [c.name for c in classes],
            [str(p.relative_to(path)) for p in files])


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
