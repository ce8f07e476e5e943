"""Model adapters: one Outputs view over transformers and timm models; loaders; init-student's shrinking."""

from __future__ import annotations

from kdcli.models.base import Adapter, Outputs, dir_size, mean_pool
from kdcli.models.load import detect_source, load_model, load_tokenizer
from kdcli.models.st import read_pipeline

__all__ = ["Adapter", "Outputs", "detect_source", "dir_size", "load_model", "load_tokenizer", "mean_pool",
           "read_pipeline"]
