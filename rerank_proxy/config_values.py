"""How one setting's raw text becomes a typed value: the parsers the settings table names.

Each parser is a small frozen object, so the table can state a setting's type and range in one
place, and the same parser turns the shipped default into the dataclass default and a variable's
value into the loaded one. A parser raises `BadValue` (what is wrong, what is accepted); the loader
adds the variable's name and value (redacted for secrets) once, at the boundary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

MAX_WORKERS = 256


class BadValue(ValueError):
    """A raw value this parser cannot accept."""

    def __init__(self, problem: str, accepted: str) -> None:
        super().__init__(f"{problem}; accepted: {accepted}")
        self.problem = problem
        self.accepted = accepted


class Parser(Protocol):
    @property
    def accepted(self) -> str:
        """What the parser accepts, in a few words (the "accepts" column of docs/settings.md)."""
        ...

    def __call__(self, raw: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Integer:
    lo: int
    hi: int

    @property
    def accepted(self) -> str:
        return f"integer {_amount(self.lo)}-{_amount(self.hi)}"

    def __call__(self, raw: str) -> int:
        accepted = f"an integer from {self.lo} to {self.hi}"
        try:
            value = int(raw.strip())
        except ValueError:
            raise BadValue("not an integer", accepted) from None
        if not self.lo <= value <= self.hi:
            raise BadValue("out of range", accepted)
        return value


@dataclass(frozen=True, slots=True)
class OptionalInteger:
    """Empty means "not set" (None): the provider's own default applies."""

    lo: int
    hi: int

    @property
    def accepted(self) -> str:
        return f"empty, or integer {_amount(self.lo)}-{_amount(self.hi)}"

    def __call__(self, raw: str) -> int | None:
        return Integer(self.lo, self.hi)(raw) if raw.strip() else None


@dataclass(frozen=True, slots=True)
class Number:
    lo: float
    hi: float

    @property
    def accepted(self) -> str:
        return f"number {_amount(self.lo)}-{_amount(self.hi)}"

    def __call__(self, raw: str) -> float:
        accepted = f"a number from {self.lo} to {self.hi}"
        try:
            value = float(raw.strip())
        except ValueError:
            raise BadValue("not a number", accepted) from None
        if not self.lo <= value <= self.hi:
            raise BadValue("out of range", accepted)
        return value


@dataclass(frozen=True, slots=True)
class Flag:
    @property
    def accepted(self) -> str:
        return "true or false"

    def __call__(self, raw: str) -> bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise BadValue("not a boolean", "true or false")


@dataclass(frozen=True, slots=True)
class OneOf:
    choices: tuple[str, ...]

    @property
    def accepted(self) -> str:
        return " / ".join(self.choices)

    def __call__(self, raw: str) -> str:
        value = raw.strip().lower()
        if value not in self.choices:
            raise BadValue("unknown value", ", ".join(self.choices))
        return value


@dataclass(frozen=True, slots=True)
class Text:
    """Free text, surrounding spaces dropped."""

    @property
    def accepted(self) -> str:
        return "text"

    def __call__(self, raw: str) -> str:
        return raw.strip()


@dataclass(frozen=True, slots=True)
class Words:
    """A comma-separated list; empty items dropped."""

    @property
    def accepted(self) -> str:
        return "comma-separated list"

    def __call__(self, raw: str) -> tuple[str, ...]:
        return split_words(raw)


@dataclass(frozen=True, slots=True)
class Url:
    """An http(s) URL, or (optional) empty."""

    optional: bool = False

    @property
    def accepted(self) -> str:
        return "empty, or an http(s) URL" if self.optional else "an http(s) URL"

    def __call__(self, raw: str) -> str:
        value = raw.strip()
        if not value and self.optional:
            return ""
        return check_url(value)


@dataclass(frozen=True, slots=True)
class Urls:
    """A non-empty comma-separated list of http(s) URLs."""

    @property
    def accepted(self) -> str:
        return "comma-separated http(s) URLs"

    def __call__(self, raw: str) -> tuple[str, ...]:
        urls = split_words(raw)
        if not urls:
            raise BadValue("empty", "comma-separated http(s) URLs")
        return tuple(check_url(url) for url in urls)


@dataclass(frozen=True, slots=True)
class UrlPath:
    @property
    def accepted(self) -> str:
        return "empty, or a path starting with /"

    def __call__(self, raw: str) -> str:
        value = raw.strip()
        if value and not value.startswith("/"):
            raise BadValue("must start with /", "a path like /v2/rerank")
        return value


@dataclass(frozen=True, slots=True)
class ExistingFile:
    """Empty, or a path to a file that exists now (a typo fails at start-up, not at first use)."""

    @property
    def accepted(self) -> str:
        return "empty, or a path to a readable file"

    def __call__(self, raw: str) -> str:
        value = raw.strip()
        if value and not Path(value).expanduser().is_file():
            raise BadValue("file not found", "a path to a readable file")
        return value


@dataclass(frozen=True, slots=True)
class RedisUrl:
    @property
    def accepted(self) -> str:
        return "empty, or redis://, rediss://, unix:// URL"

    def __call__(self, raw: str) -> str:
        value = raw.strip()
        if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise BadValue("not a Redis URL", "redis://host:port/db, rediss://... or unix://path")
        return value


@dataclass(frozen=True, slots=True)
class Workers:
    """`auto` (one per CPU this process may use, lowered to the cgroup quota) or an integer."""

    @property
    def accepted(self) -> str:
        return f"auto, or integer 1-{MAX_WORKERS}"

    def __call__(self, raw: str) -> int:
        accepted = f"auto, or an integer from 1 to {MAX_WORKERS}"
        if raw.strip().lower() == "auto":
            from rerank_proxy.cpus import usable_cpus

            return min(usable_cpus()[0], MAX_WORKERS)
        try:
            value = int(raw.strip())
        except ValueError:
            raise BadValue("not an integer or auto", accepted) from None
        if not 1 <= value <= MAX_WORKERS:
            raise BadValue("out of range", accepted)
        return value


@dataclass(frozen=True, slots=True)
class JsonList:
    """A JSON list, kept raw: the loader builds its items once the settings they inherit are known."""

    example: str

    @property
    def accepted(self) -> str:
        return "empty, or a JSON list of objects"

    def __call__(self, raw: str) -> tuple[dict[str, Any], ...]:
        if not raw.strip():
            return ()
        accepted = f"a JSON list like {self.example}"
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise BadValue(f"invalid JSON ({exc.msg} at {exc.pos})", accepted) from None
        if not isinstance(items, list):
            raise BadValue("not a JSON list", accepted)
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadValue(f"item {i} is not a JSON object", accepted)
        return tuple(items)


def _amount(value: float) -> str:
    """A bound as people read it: 1,000,000 rather than 1e+06, 0.1 as it is."""
    return f"{int(value):,}" if value == int(value) else str(value)


def split_words(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadValue("not an http(s) URL", "http://host:port or https://host:port")
    return value.rstrip("/")


_TEMPLATE_FIELD = re.compile(r"\{[^{}]*[^{}\s][^{}]*\}")


@dataclass(frozen=True, slots=True)
class Template:
    """Text with {field} placeholders; a literal `\\n` in the variable is a line break."""

    @property
    def accepted(self) -> str:
        return "text with {field} placeholders"

    def __call__(self, raw: str) -> str:
        template = raw.replace("\\n", "\n")
        check_template(template)
        return template


def check_template(template: str, where: str = "") -> None:
    """Every brace must belong to one {field} placeholder: `title: {title` is a mistake, not text."""
    leftover = _TEMPLATE_FIELD.sub("", template)
    if "{" in leftover or "}" in leftover:
        raise BadValue(f"{where}malformed template (an unmatched or empty brace)",
                       "text with {field} placeholders, e.g. 'title: {title}\\nbody: {body}'")
