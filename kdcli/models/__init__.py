"""Model adapters: one Outputs view over transformers and timm models."""

from __future__ import annotations

from pathlib import Path

from kdcli.models.base import Adapter, Outputs, dir_size, mean_pool

__all__ = ["Adapter", "Outputs", "load_model", "dir_size", "mean_pool"]


def load_model(source: str, path: Path, task: str, *, arch: str | None = None, num_classes: int | None = None,
               allow_new_head: bool = False) -> Adapter:
    """Load a checkpoint from local files for `task` (no hub, no remote code)."""
    if source == "timm":
        from kdcli.models.timm import load_timm
        return load_timm(Path(path), arch, num_classes)
    from kdcli.models.hf import load_hf
    return load_hf(Path(path), task, num_classes, allow_new_head=allow_new_head)


def detect_source(path: Path) -> str:
    """transformers or timm, from what a saved folder holds."""
    import json
    config = Path(path) / "config.json"
    if config.is_file():
        try:
            if "architecture" in json.loads(config.read_text()):
                return "timm"
        except ValueError:
            pass
    elif Path(path).is_file():
        return "timm"
    return "transformers"
