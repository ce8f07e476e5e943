"""Name -> class registries, with a did-you-mean on a miss."""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar

from kdcli.errors import BadInput

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.what} '{name}' is registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        if name not in self._items:
            guess = difflib.get_close_matches(name, self._items, n=1)
            raise BadInput(f"unknown {self.what} '{name}'",
                           hint=f"did you mean '{guess[0]}'?" if guess else f"known: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)
