"""The library's arguments, checked once where they come in: one rule per argument name, one message
shape (`<name> must be <what>, got <value>`), a UsageError before anything is read or built."""

from __future__ import annotations

import os
from collections.abc import Iterable

from nncli.errors import UsageError
from nncli.io.frames import is_table


def listed(value, name: str = "target") -> list[str]:
    """A column or a list of columns (names or 0-based indices) as names."""
    import numbers

    if value is None:
        return []
    if isinstance(value, (str, numbers.Integral)) and not isinstance(value, bool):
        return [str(value)]
    items = list(value) if isinstance(value, Iterable) and not isinstance(value, (bytes, dict)) else None
    if items is None or not all(isinstance(v, (str, numbers.Integral)) and not isinstance(v, bool) for v in items):
        raise UsageError(
            f"{name} must be a column (a name or a 0-based index) or a list of them, got {described(value)}"
        )
    return [str(v) for v in items]


def train_mode(mode: str | None) -> bool:
    if mode not in ("train", "eval"):
        raise UsageError(f"mode must be train or eval, got {mode!r}")
    return mode == "train"


def is_stdin(value) -> bool:
    return isinstance(value, str) and value == "-"


def _integer(value, low: int) -> bool:
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= low


def _finite(value) -> bool:
    import math
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


COUNT = (lambda v: _integer(v, 1), "an integer at or above 1")
COUNT_OR_ZERO = (lambda v: _integer(v, 0), "an integer at or above 0")
RATE = (lambda v: _finite(v) and v >= 0, "a finite number at or above 0")
NUMBER = (lambda v: _finite(v), "a finite number")
PATH = (lambda v: isinstance(v, (str, os.PathLike)) and os.fspath(v) != "", "a path (text or an os.PathLike)")
SPEC = (
    lambda v: isinstance(v, dict) or PATH[0](v),
    "a path to a YAML spec (text or an os.PathLike) or a spec as a dict",
)

# every numeric argument of load, Model, train, evaluate and Model's methods: one rule each
ARGUMENTS = {
    "batch_size": COUNT,
    "bins": COUNT,
    "epochs": COUNT,
    "patience": COUNT,
    "inputs": COUNT,
    "threads": COUNT,
    "max_layers": COUNT,
    "max_iter": COUNT,
    "warmup": COUNT_OR_ZERO,
    "max_params": COUNT_OR_ZERO,
    "lr": RATE,
    "momentum": RATE,
    "weight_decay": RATE,
    "clip_grad_norm": RATE,
    "clip_grad_value": RATE,
    "val_split": RATE,
    "threshold": NUMBER,
    "weights": PATH,
    "spec": SPEC,
}


def check_arguments(required: tuple = (), **given) -> None:
    """The public functions' arguments, each against its rule in ARGUMENTS (None: not given, the
    default, unless `required`), and DATA (`data`, `val`) as a path, paths or a table: a
    UsageError naming the argument, before anything is read or built."""
    for name, value in given.items():
        if name in ("data", "val"):
            if value is not None or name == "data":
                check_data(value, name)
            continue
        if value is not None or name in required:
            check_rule(value, name, ARGUMENTS[name])


def check_data(data, name: str = "data") -> None:
    """DATA is a path, a list of paths, or a table in memory (FrameData checks the table itself)."""
    if is_table(data):
        return
    paths = list(data) if isinstance(data, (list, tuple)) else [data]
    if paths and all(isinstance(p, (str, os.PathLike)) for p in paths):
        return
    rows = (isinstance(data, (list, tuple)) and paths) or isinstance(data, dict) or hasattr(data, "__next__")
    hint = "; rows go in a numpy array or a DataFrame" if rows else ""
    raise UsageError(
        f"{name} must be a path (or a list of paths) or a table: polars, pandas or pyarrow, or a 2-D numpy array; "
        f"got {described(data)}{hint}"
    )


def described(value) -> str:
    """An argument in a message: its repr, shortened, and its type where the repr does not say it."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return text if isinstance(value, (str, int, float, type(None))) else f"{text} (a {type(value).__name__})"


def check_rule(value, name: str, rule) -> None:
    ok, wanted = rule
    if not ok(value):
        raise UsageError(f"{name} must be {wanted}, got {described(value)}")


def check_rate(value, name: str) -> None:
    """A rate of any name (inside's thresholds too), None meaning not given."""
    if value is not None:
        check_rule(value, name, RATE)
