"""Values kept by `set`, `$var` substitution, and dotted paths into a response.

Paths follow the suite's convention: `hits.hits.0._source.name`; `\\.` is a literal dot inside a key; a
segment may be a stashed `$var`; `""` and `$body` mean the whole response.
"""

from __future__ import annotations

import re
from typing import Any

_INLINE = re.compile(r"\$\{(\w+)\}")
_WHOLE = re.compile(r"^\$(\w+)$")


class Missing:
    """The value at a path that does not exist (distinct from a JSON null)."""

    _instance: Missing | None = None

    def __new__(cls) -> Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<missing>"


MISSING = Missing()


class StashError(KeyError):
    pass


class Stash:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.body: Any = None          # the last response body (`$body`)

    def clear(self) -> None:
        self.values.clear()
        self.body = None

    def lookup(self, name: str) -> Any:
        if name == "body":
            return self.body
        if name not in self.values:
            raise StashError(f"${name} was never set")
        return self.values[name]

    def resolve(self, value: Any) -> Any:
        """`value` with every `$var` (a whole string) and `${var}` (inside a string) replaced, keys included."""
        if isinstance(value, str):
            whole = _WHOLE.match(value)
            if whole:
                return self.lookup(whole.group(1))
            return _INLINE.sub(lambda m: str(self.lookup(m.group(1))), value)
        if isinstance(value, dict):
            return {self.resolve(k) if isinstance(k, str) else k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        return value

    def at_path(self, path: str, body: Any | None = None) -> Any:
        """The value at `path` in `body` (default: the last response), or MISSING."""
        current = self.body if body is None else body
        if path in ("", "$body"):
            return current
        for segment in split_path(path):
            segment = str(self.resolve(segment))
            if isinstance(current, dict):
                if segment not in current:
                    return MISSING
                current = current[segment]
            elif isinstance(current, list):
                try:
                    current = current[int(segment)]
                except (ValueError, IndexError):
                    return MISSING
            else:
                return MISSING
        return current


def split_path(path: str) -> list[str]:
    """`a.b\\.c.0` -> ["a", "b.c", "0"]."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(path):
        char = path[i]
        if char == "\\" and i + 1 < len(path) and path[i + 1] == ".":
            current.append(".")
            i += 2
            continue
        if char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts
