"""The assertions of the YAML REST test format, on the last response.

- `match: {path: value}`: equal (numbers by value, so 1 == 1.0); a string value `/.../` is a regex
  (verbose mode, searched in the actual value as text).
- `is_true: path` / `is_false: path`: false is a missing value, null, false, "", "false" or 0.
- `length: {path: n}`: items of a list or object, or characters of a string.
- `gt`, `gte`, `lt`, `lte: {path: n}`: numeric comparison.
- `contains: {path: value}`: a list holding an item equal to `value` (an object item needs the keys
  of `value`, with equal values), or a string holding `value`.
- `exists: path`: the path is present and not null.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from tests.client_yaml.executor import StepFailure
from tests.client_yaml.stash import MISSING, Stash


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:300] + "..."


def equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return float(actual) == float(expected)
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and actual.keys() == expected.keys()
                and all(equal(actual[k], v) for k, v in expected.items()))
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(actual) == len(expected)
                and all(equal(a, e) for a, e in zip(actual, expected)))
    return bool(actual == expected)


def _is_regex(value: Any) -> bool:
    return isinstance(value, str) and len(value) > 1 and value.startswith("/") and value.endswith("/")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _pairs(arg: Any, step: str) -> list[tuple[str, Any]]:
    if not isinstance(arg, dict) or not arg:
        raise StepFailure(f"{step}: expected a mapping of path -> value, got {arg!r:.200}")
    return [(str(k), v) for k, v in arg.items()]


def check_match(arg: Any, stash: Stash) -> None:
    for path, raw_expected in _pairs(arg, "match"):
        actual = stash.at_path(path)
        expected = stash.resolve(raw_expected)
        if _is_regex(expected):
            if actual is MISSING or re.search(expected[1:-1], _text(actual), re.VERBOSE) is None:
                raise StepFailure(f"match {path}: {_short(actual)} does not match {expected}")
        elif not equal(actual, expected):
            raise StepFailure(f"match {path}: expected {_short(expected)}, got {_short(actual)}")


def truthy(value: Any) -> bool:
    if value is MISSING or value is None or value is False:
        return False
    if isinstance(value, str):
        return value not in ("", "false")
    if isinstance(value, (int, float)):
        return value != 0
    return True


def check_is_true(arg: Any, stash: Stash) -> None:
    path = "" if arg is None else str(arg)
    if not truthy(stash.at_path(path)):
        raise StepFailure(f"is_true {path!r}: got {_short(stash.at_path(path))}")


def check_is_false(arg: Any, stash: Stash) -> None:
    path = "" if arg is None else str(arg)
    if truthy(stash.at_path(path)):
        raise StepFailure(f"is_false {path!r}: got {_short(stash.at_path(path))}")


def check_exists(arg: Any, stash: Stash) -> None:
    path = str(arg)
    value = stash.at_path(path)
    if value is MISSING or value is None:
        raise StepFailure(f"exists {path!r}: not there")


def check_length(arg: Any, stash: Stash) -> None:
    for path, expected in _pairs(arg, "length"):
        actual = stash.at_path(path)
        if not isinstance(actual, (list, dict, str)):
            raise StepFailure(f"length {path}: {_short(actual)} has no length")
        if len(actual) != int(stash.resolve(expected)):
            raise StepFailure(f"length {path}: expected {expected}, got {len(actual)}")


def _comparison(name: str, compare: Callable[[Any, Any], bool]) -> Callable[[Any, Stash], None]:
    def check(arg: Any, stash: Stash) -> None:
        for path, raw_expected in _pairs(arg, name):
            actual = stash.at_path(path)
            expected = stash.resolve(raw_expected)
            if not isinstance(actual, (int, float)) or isinstance(actual, bool):
                raise StepFailure(f"{name} {path}: {_short(actual)} is not a number")
            if not compare(actual, float(expected)):
                raise StepFailure(f"{name} {path}: {actual} is not {name} {expected}")
    return check


def _holds(item: Any, expected: Any) -> bool:
    if isinstance(expected, dict) and isinstance(item, dict):
        return all(k in item and equal(item[k], v) for k, v in expected.items())
    return equal(item, expected)


def check_contains(arg: Any, stash: Stash) -> None:
    for path, raw_expected in _pairs(arg, "contains"):
        actual = stash.at_path(path)
        expected = stash.resolve(raw_expected)
        if isinstance(actual, str) and isinstance(expected, str):
            found = expected in actual
        elif isinstance(actual, list):
            found = any(_holds(item, expected) for item in actual)
        else:
            found = False
        if not found:
            raise StepFailure(f"contains {path}: {_short(expected)} not in {_short(actual)}")


ASSERTIONS: dict[str, Callable[[Any, Stash], None]] = {
    "match": check_match,
    "is_true": check_is_true,
    "is_false": check_is_false,
    "exists": check_exists,
    "length": check_length,
    "gt": _comparison("gt", operator.gt),
    "gte": _comparison("gte", operator.ge),
    "lt": _comparison("lt", operator.lt),
    "lte": _comparison("lte", operator.le),
    "contains": check_contains,
}
