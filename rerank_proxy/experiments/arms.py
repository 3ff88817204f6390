"""The experiment setting (`RERANK_EXPERIMENT`) and the sticky assignment of a unit to an arm.

Why sticky by a stable hash: a user who sees the reranked list on one search and the lexical list
on the next would mix the arms' behaviour, and every replica and worker must agree without
sharing state. So the arm is a pure function of (salt, unit id), through BLAKE2b, not Python's
`hash()` (randomised per process for strings). Changing the salt re-draws everyone, for a new
experiment that must not inherit the last one's split.

Values:
* `off`: no experiment, arm "off";
* `shadow`: everyone is served "lexical"; the reranked list is computed behind, for comparison;
* `ab:<percent>`: the first <percent> of the hash space gets "reranked", the rest "lexical";
* `interleave`: everyone gets "interleaved" (team-draft, see interleave.py).

Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from rerank_proxy.config_values import BadValue

Kind = Literal["off", "shadow", "ab", "interleave"]
Arm = Literal["off", "lexical", "reranked", "interleaved"]

DEFAULT_SALT = "rerank-proxy-experiment-1"
UNITS = ("api_key", "address", "forwarded_for")  # RERANK_EXPERIMENT_UNIT: what stands in for a missing client_id
_HASH_BYTES = 8
_FLOAT_BITS = 53  # a double holds 53 bits exactly, so the bucket is exact and always below 1
_PERCENT = re.compile(r"\d+(\.\d+)?|\.\d+")


@dataclass(frozen=True, slots=True)
class Experiment:
    """A parsed `RERANK_EXPERIMENT`: the kind, and for `ab` the reranked arm's share in percent."""

    kind: Kind
    percent: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.percent) and 0.0 <= self.percent <= 100.0):
            raise ValueError(f"percent must be from 0 to 100, not {self.percent}")

    @property
    def shadow(self) -> bool:
        """Whether the reranked list is computed behind the served (lexical) one."""
        return self.kind == "shadow"

    def __str__(self) -> str:
        """The setting's value that parses back to this experiment."""
        if self.kind != "ab":
            return self.kind
        digits = format(Decimal(repr(self.percent)), "f")  # the shortest exact digits, never 1e-05
        return f"ab:{digits.rstrip('0').rstrip('.') if '.' in digits else digits}"


@dataclass(frozen=True, slots=True)
class ExperimentSetting:
    """The parser for `RERANK_EXPERIMENT`, in the form of rerank_proxy/config_values.py's parsers."""

    @property
    def accepted(self) -> str:
        return "off / shadow / interleave / ab:<percent 0-100>"

    def __call__(self, raw: str) -> Experiment:
        accepted = "off, shadow, interleave, or ab:<percent> with a percent from 0 to 100 (e.g. ab:50, ab:12.5)"
        value = raw.strip().lower()
        if value in ("off", "shadow", "interleave"):
            return Experiment(value)  # type: ignore[arg-type]  # one of Kind, checked just above
        name, colon, percent = value.partition(":")
        if name != "ab":
            raise BadValue(f"unknown experiment {raw.strip()!r}", accepted)
        if not colon or not percent.strip():
            raise BadValue("ab needs a percent (ab:<percent>)", accepted)
        if percent.strip().startswith("-") and _PERCENT.fullmatch(percent.strip()[1:]):
            raise BadValue(f"ab percent {percent.strip()} is below 0", accepted)
        if not _PERCENT.fullmatch(percent.strip()):
            raise BadValue(f"ab percent {percent.strip()!r} is not a number", accepted)
        share = float(percent)
        if share > 100.0:
            raise BadValue(f"ab percent {percent.strip()} is above 100", accepted)
        return Experiment("ab", share)


@dataclass(frozen=True, slots=True)
class SaltSetting:
    """The parser for `RERANK_EXPERIMENT_SALT`: a non-empty key BLAKE2b accepts (at most 64 bytes)."""

    @property
    def accepted(self) -> str:
        return f"a text of 1 to {hashlib.blake2b.MAX_KEY_SIZE} bytes"

    def __call__(self, raw: str) -> str:
        salt = raw.strip()
        if not salt or len(salt.encode()) > hashlib.blake2b.MAX_KEY_SIZE:
            raise BadValue(f"a salt of {len(salt.encode())} bytes", self.accepted)
        return salt


def bucket(unit_id: str, salt: str = DEFAULT_SALT) -> float:
    """The unit's place in the hash space, in [0, 1): BLAKE2b keyed by the salt, top 53 bits."""
    key = salt.encode()
    if len(key) > hashlib.blake2b.MAX_KEY_SIZE:
        raise ValueError(f"salt is longer than {hashlib.blake2b.MAX_KEY_SIZE} bytes")
    digest = hashlib.blake2b(unit_id.encode(), digest_size=_HASH_BYTES, key=key).digest()
    return (int.from_bytes(digest, "big") >> (8 * _HASH_BYTES - _FLOAT_BITS)) / (1 << _FLOAT_BITS)


def assign(experiment: Experiment, unit_id: str, salt: str = DEFAULT_SALT) -> Arm:
    """The arm that serves this unit; the same for the same unit on every process and replica."""
    if experiment.kind == "off":
        return "off"
    if experiment.kind == "shadow":
        return "lexical"
    if experiment.kind == "interleave":
        return "interleaved"
    return "reranked" if bucket(unit_id, salt) < experiment.percent / 100.0 else "lexical"


def unit_of(unit: str, client_id: str | None, headers: Mapping[str, str], address: str | None) -> str | None:
    """The unit a search is assigned by: its UBI client_id, else what RERANK_EXPERIMENT_UNIT names
    (`headers` lower-case names, as the edge parsed them; `address` the client's peer address)."""
    if unit == "forwarded_for":
        first = headers.get("x-forwarded-for", "").split(",")[0].strip()
        return unit_id(client_id, source=first or address)
    if unit == "address":
        return unit_id(client_id, source=address)
    return unit_id(client_id, api_key=headers.get("authorization"), source=address)


def unit_id(client_id: str | None = None, api_key: str | None = None, source: str | None = None) -> str | None:
    """The first present of the UBI client_id, the API key, the source address; None if none is.

    Each is prefixed by its kind, so a client_id that happens to equal some address is another unit.
    """
    for kind, value in (("client", client_id), ("key", api_key), ("addr", source)):
        if value is not None and value.strip():
            return f"{kind}:{value.strip()}"
    return None
