"""How a spec's values are checked and shown in messages: what the spec's parsers (spec.py, for the
layers; spec_keys.py, for the keys beside them) and the weights' and checkpoints' checks share."""

from __future__ import annotations

import math
import reprlib
from typing import Any

MAX_INT = 2**63  # torch keeps sizes and dims in int64; larger integers are refused, never printed in full

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxset, _REPR.maxtuple, _REPR.maxstring = 3, 6, 4, 6, 6, 40


def short(value: Any) -> str:
    """At most 40 characters of a value, in bounded time whatever it is (a huge int, a shared list)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {value.bit_length():,}-bit integer"  # str() of an int over 4300 digits raises ValueError
    if isinstance(value, (list, dict, tuple, set, frozenset)):
        text = _REPR.repr(value)  # reprlib stops after a few items and levels
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(value: Any) -> str:
    return short(value) if not isinstance(value, (dict, list, tuple, set, frozenset)) else type(value).__name__


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)  # an int too large for a float raises OverflowError
    except OverflowError:
        return False
