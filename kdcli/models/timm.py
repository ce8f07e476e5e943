"""timm adapter: `create_model(arch)` plus local weights, or a folder written by timm's save_for_hf."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from timm.models import save_for_hf
from torch import Tensor, nn

from kdcli.errors import CheckpointError
from kdcli.models.base import Adapter, Exportable, Outputs
from kdcli.runtime.files import atomic_path, atomic_write_json


class TimmAdapter(Adapter):
    family = "timm"

    def __init__(self, model: nn.Module, arch: str, model_args: dict[str, Any], path: Path | None = None,
                 class_names: list[str] | None = None) -> None:
        self.module = model
        self.arch = arch
        self.model_args = model_args
        self.path = path
        self.class_names = class_names
        self.data_config = timm.data.resolve_data_config({}, model=model)
        size = model_args.get("img_size")
        size = size[-1] if isinstance(size, (list, tuple)) else size  # timm takes 32 or (32, 32)
        if size:  # a model built for small images: its pretrained_cfg still says 224
            self.data_config["input_size"] = (self.data_config["input_size"][0], size, size)

    @property
    def depth(self) -> int:
        return len(self.module.feature_info)

    def width(self, index: int) -> int:
        return int(self.module.feature_info[index]["num_chs"])

    @property
    def num_labels(self) -> int | None:
        return int(self.module.num_classes) or None

    @property
    def label_names(self) -> list[str] | None:
        return self.class_names or ([str(i) for i in range(self.num_labels)] if self.num_labels else None)

    def set_classes(self, names: Sequence[str]) -> None:
        """Name the head's outputs: saved as label_names in config.json (timm's own field)."""
        if len(names) != self.num_labels:
            where = f"{self.path}: " if self.path else ""
            raise CheckpointError(f"{where}timm '{self.arch}' has {self.num_labels} outputs, and the job has "
                                  f"{len(names)} classes",
                                  hint="build the student with one output per class (student.init.num_classes, "
                                       "then init-student)")
        self.class_names = list(names)

    @property
    def image_size(self) -> int:
        return int(self.data_config["input_size"][-1])

    def forward(self, batch: dict[str, Tensor], needs: frozenset[str] = frozenset({"logits"})) -> Outputs:
        x = batch["pixel_values"]
        model = self.module
        features: tuple[Tensor, ...] = ()
        if "features" in needs:
            final, intermediates = model.forward_intermediates(x, indices=list(range(self.depth)))
            features = tuple(intermediates)
        else:
            final = model.forward_features(x)
        embedding = model.forward_head(final, pre_logits=True) if "embedding" in needs else None
        logits = model.forward_head(final)
        return Outputs(logits=logits, features=features, embedding=embedding)

    def exportable(self) -> Exportable:
        fixed = bool(getattr(self.module, "pretrained_cfg", {}).get("fixed_input_size"))  # ViT: size is baked in
        axes = {"pixel_values": {0: "batch_size"} if fixed else {0: "batch_size", 2: "height", 3: "width"},
                "logits": {0: "batch_size"}}  # optimum's names
        return Exportable(self.module, ["pixel_values"], ["logits"], axes, "image_size")

    def save(self, directory: Path) -> None:
        with atomic_path(Path(directory)) as tmp:
            config = {"architecture": self.arch, "num_classes": self.num_labels}
            if self.class_names:
                config["label_names"] = self.class_names
            save_for_hf(self.module, str(tmp), model_config=config, model_args=self.model_args,
                        safe_serialization=True)

    def write_serving_files(self, out: Path, classes: Sequence[str] | None, image_size: int | None = None) -> None:
        """config.json (timm's, with the job's class names) and preprocessor_config.json: the input size, mean,
        std and interpolation kdcli trained and measured with."""
        source = Path(self.path) / "config.json" if self.path else None
        config = json.loads(source.read_text(encoding="utf-8")) if source and source.is_file() else {
            "architecture": self.arch, "num_classes": self.num_labels, "model_args": self.model_args}
        channels, size = int(self.data_config["input_size"][0]), int(image_size or self.image_size)
        # kdcli resizes the whole image to size x size (bilinear, aspect ratio not kept: timm's "squash"), scales it
        # to [0, 1] and normalizes. transformers' TimmWrapper (AutoConfig, AutoImageProcessor) and timm's own
        # create_transform read this pretrained_cfg and preprocess alike.
        pretrained = {**(config.get("pretrained_cfg") or {}), "input_size": [channels, size, size],
                      "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash",
                      "mean": list(self.data_config["mean"]), "std": list(self.data_config["std"])}
        pretrained.pop("test_input_size", None)
        pretrained.pop("test_crop_pct", None)
        config["pretrained_cfg"] = pretrained
        if classes is not None:
            config.update(label_names=list(classes), id2label={str(i): n for i, n in enumerate(classes)},
                          label2id={n: i for i, n in enumerate(classes)})
        atomic_write_json(out / "config.json", config)
        atomic_write_json(out / "preprocessor_config.json", {
            "image_processor_type": "TimmWrapperImageProcessor", "architecture": self.arch,
            "pretrained_cfg": pretrained})

    def example_batch(self, batch_size: int = 2) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(0)
        channels = int(self.data_config["input_size"][0])
        size = self.image_size
        return {"pixel_values": torch.randn(batch_size, channels, size, size, generator=generator)}


def load_timm(path: Path, arch: str | None = None, num_classes: int | None = None,
              **model_args: Any) -> TimmAdapter:
    """A folder from save_for_hf (config.json + model.safetensors), or arch + a .safetensors/.pth file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}",
                              hint="a timm checkpoint is a .safetensors/.pth file (with `arch:`) or a saved folder")
    if path.is_dir():
        return _load_folder(path, num_classes)
    if not arch:
        raise CheckpointError(f"{path}: a bare timm weights file needs `arch:` beside `path:`",
                              hint="for example arch: resnet18")
    args = dict(model_args)
    if num_classes:
        args["num_classes"] = num_classes
    model = create(arch, **args)
    _load_weights(model, path, arch)
    return TimmAdapter(model.eval(), arch, args, path)


def create(arch: str, **kwargs: Any) -> nn.Module:
    if not timm.is_model(arch):
        import difflib
        guess = difflib.get_close_matches(arch, timm.list_models(), n=1)
        raise CheckpointError(f"unknown timm architecture '{arch}'",
                              hint=f"did you mean '{guess[0]}'?" if guess else "see timm.list_models()")
    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except TypeError as exc:
        raise CheckpointError(f"timm '{arch}' does not take these arguments {kwargs}: {exc}") from None


def _load_folder(path: Path, num_classes: int | None) -> TimmAdapter:
    config_file = path / "config.json"
    weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if not config_file.is_file() or weights is None:
        raise CheckpointError(f"{path}: not a timm checkpoint folder (needs config.json and model.safetensors)",
                              hint="write one with timm.models.save_for_hf, or point at a weights file plus `arch:`")
    try:
        config = json.loads(config_file.read_text())
        arch = config["architecture"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"{config_file}: not a timm config ({exc})") from None
    args = dict(config.get("model_args") or {})
    args["num_classes"] = num_classes or config.get("num_classes") or args.get("num_classes", 1000)
    model = create(arch, **args)
    _load_weights(model, weights, arch)
    return TimmAdapter(model.eval(), arch, args, path, config.get("label_names"))


def _load_weights(model: nn.Module, file: Path, arch: str) -> None:
    try:
        if file.suffix == ".safetensors":
            state = load_file(str(file))
        else:
            # weights_only: a pickle that would run code is refused, never executed.
            state = torch.load(file, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    except Exception as exc:  # noqa: BLE001 - torn files raise many types
        from kdcli.models.hf import PICKLE_HINT, refused_pickle
        if refused_pickle(exc):
            raise CheckpointError(f"{file}: cannot read the weights: refused, a pickle that holds more than "
                                  "tensors (loading it could run code)", hint=PICKLE_HINT) from None
        raise CheckpointError(f"{file}: cannot read the weights: {str(exc).splitlines()[0][:200]}",
                              hint="the file may be truncated, or not a plain tensor state dict") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{file}: the weights do not fit timm '{arch}': {detail}",
                              hint="check `arch:` and `num_classes:` against how the checkpoint was made") from None
