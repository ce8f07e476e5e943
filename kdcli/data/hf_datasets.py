"""Text kept as Hugging Face datasets: a `save_to_disk` folder, a .parquet file or an .arrow file.

Columns are read by name (only the two a job uses), and rows go through the same checks as a csv's, so
a missing column, an empty text or an unknown label reads as it does for csv: file, row, column, hint.
Rows are numbered from 1 and named "line" in messages, like a jsonl file's. Needs the `datasets` extra
(pyarrow, and `datasets` itself for save_to_disk folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdcli.errors import DataError

HF_SUFFIXES = (".parquet", ".arrow")
_FOLDER_MARKERS = ("state.json", "dataset_info.json")
_INSTALL = "pip install 'kdcli[datasets]' (or pip install datasets)"


def is_hf_dataset(path: Path) -> bool:
    """A .parquet/.arrow file, or a folder `save_to_disk` wrote (one split, or a DatasetDict)."""
    if path.is_dir():
        return any((path / name).is_file() for name in (*_FOLDER_MARKERS, "dataset_dict.json"))
    return path.suffix.lower() in HF_SUFFIXES


def read_columns(path: Path, columns: list[str | None]) -> tuple[list[str], dict[str, list[Any]]]:
    """(every column name, {name: values}) for the wanted columns that exist; the caller names the missing."""
    table = _table(path)
    names = list(table.column_names)
    wanted = [c for c in columns if c is not None and c in names]
    return names, {c: table.column(c).to_pylist() for c in wanted}


def _table(path: Path) -> Any:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder", hint="check the path (and the working directory)")
    try:
        import pyarrow  # noqa: F401 - every reader below needs it
    except ImportError:
        raise DataError(f"{path}: reading Hugging Face datasets needs pyarrow", hint=_INSTALL) from None
    if path.is_dir():
        return _folder(path)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq
            return pq.read_table(path)
        return _arrow_file(path)
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise DataError(f"{path}: cannot read the {path.suffix} file ({str(err).splitlines()[0][:200]})",
                        hint="is it a whole file written by pyarrow or datasets?") from None


def _arrow_file(path: Path) -> Any:
    """datasets writes the Arrow streaming format; pyarrow's own files use the random-access one."""
    import pyarrow as pa
    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


def _folder(path: Path) -> Any:
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataError(f"{path}: a DatasetDict folder with splits {', '.join(splits) or '(none)'}",
                        hint=f"point at one split, e.g. {path / (splits[0] if splits else 'train')}")
    try:
        from datasets import load_from_disk
    except ImportError:
        raise DataError(f"{path}: reading a save_to_disk folder needs the datasets package", hint=_INSTALL) from None
    try:
        dataset = load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - datasets raises many types for damaged folders
        raise DataError(f"{path}: cannot read the dataset folder ({str(err).splitlines()[0][:200]})",
                        hint="write it again with Dataset.save_to_disk") from None
    return dataset.data.table
