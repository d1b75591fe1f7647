"""Checks for the state a transform's `from_dict` reads: saved JSON comes from a weights file,
which may have been written by someone else, so each field is checked for what nncli writes
(types, lengths, finite numbers, sizes) before it is used, and refused as an NncliError."""

from __future__ import annotations

import math
import sys
from typing import Any

from nncli.errors import NncliError

MAX_COLUMNS = 100_000  # feature columns of one schema
MAX_CATEGORIES = 1_000_000  # categories of one column
MAX_TEXT = 10_000  # characters of a column name or a category


def fields(state: Any, name: str, required: tuple[str, ...], where: str) -> dict:
    if not isinstance(state, dict):
        raise NncliError(f"the saved {name} is not what nncli writes (an object)", where)
    keys = set(state)
    if keys != set(required):
        odd = sorted(map(str, keys ^ set(required)))[:5]
        raise NncliError(f"the saved {name} is not what nncli writes (fields {', '.join(odd)})", where)
    return state


def fail(name: str, field: str, expected: str, where: str) -> NncliError:
    return NncliError(f"the saved {name}'s {field} is not what nncli writes ({expected})", where)


def choice(value: Any, options: tuple[str, ...], name: str, field: str, where: str) -> str:
    if not isinstance(value, str) or value not in options:
        raise fail(name, field, " or ".join(options), where)
    return value


def flag(value: Any, name: str, field: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(name, field, "true or false", where)
    return value


def text(value: Any, name: str, field: str, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise fail(name, field, f"text of at most {MAX_TEXT} characters", where)
    return value


def texts(value: Any, name: str, field: str, where: str, limit: int = MAX_COLUMNS, missing: bool = False) -> tuple:
    """A list of text (None allowed where `missing`), no repeats."""
    if not isinstance(value, list) or len(value) > limit:
        raise fail(name, field, f"a list of at most {limit} texts", where)
    out = tuple(None if missing and v is None else text(v, name, field, where) for v in value)
    if len(set(out)) != len(out):
        raise fail(name, field, "no repeated names", where)
    return out


FLOAT_MAX = sys.float_info.max


def number(value: Any, name: str, field: str, where: str, positive: bool = False) -> float:
    # compared, not math.isfinite: an int past a float's range (a JSON number of 400 digits) made it raise
    ok = isinstance(value, int | float) and not isinstance(value, bool) and -FLOAT_MAX <= value <= FLOAT_MAX
    if not ok or (positive and value <= 0):
        raise fail(name, field, "a finite positive number" if positive else "a finite number", where)
    return float(value)


def count(value: Any, name: str, field: str, where: str, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < 2**62:
        raise fail(name, field, f"an integer from {low}", where)
    return value


def finite(value: float, what: str, where: str | None) -> float:
    """A fitted statistic that must be saved as JSON: refuse an overflow (inf) at fit time."""
    if not math.isfinite(value):
        raise NncliError(f"{what} overflows float64", where)
    return value
