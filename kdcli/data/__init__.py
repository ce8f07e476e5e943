"""Read training data: labelled text files and images. Every failure is a DataError that names the
file, the line or item, and the column, with a hint."""

from kdcli.data.images import (
                             IMAGE_SUFFIXES,
                             SOURCES,
                             ImageData,
                             normalize_images,
                             read_images,
                             split_indices,
)
from kdcli.data.text import (
                             MAX_TEXT_CHARS,
                             TEXT_SUFFIXES,
                             TextExample,
                             check_train_labels,
                             collate_text,
                             length_bucketed_batches,
                             read_text,
                             tokenize,
)

__all__ = ["IMAGE_SUFFIXES", "MAX_TEXT_CHARS", "SOURCES", "TEXT_SUFFIXES", "ImageData", "TextExample",
           "check_train_labels", "collate_text", "length_bucketed_batches", "normalize_images", "read_images",
           "read_text", "split_indices", "tokenize"]
