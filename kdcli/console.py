"""Human output on stderr (rich), machine output on stdout (--json); progress is runtime/progress.py."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

# Piped (CI logs), a line is a line: no wrapping at 80 columns that would split paths and messages.
err = Console(stderr=True, soft_wrap=not sys.stderr.isatty())


_printed: list[bool] = []


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()
    _printed.append(True)


def forget_json() -> None:
    """A new command starts (tests run several in one process)."""
    _printed.clear()


def json_printed() -> bool:
    """Whether this process printed its JSON result already (then an error adds no second object)."""
    return bool(_printed)


def table(title: str, columns: list[str], rows: Iterable[Iterable[Any]]) -> Table:
    out = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        out.add_column(name, justify="left" if i == 0 else "right", overflow="fold" if i == 0 else "ellipsis")
    for row in rows:
        out.add_row(*[_fmt(v) for v in row])
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)
