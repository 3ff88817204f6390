"""Which failures of a cache tier to log: the first of each exception type, so a bug is never a silent
miss and an outage is not a log line per search (every failure is still counted by its tier)."""

from __future__ import annotations


class FirstOfKind:
    def __init__(self) -> None:
        self._seen: set[type[BaseException]] = set()

    def first(self, exc: BaseException) -> bool:
        """True the first time an exception of this type is seen."""
        kind = type(exc)
        if kind in self._seen:
            return False
        self._seen.add(kind)
        return True
