"""The spec's keys beside its layers: the class labels (`classes:`), the data it names (`target:`,
`features:`, `exclude:`) and what turns a raw table into the model's inputs (`preprocess:`), parsed
into plain values; each mistake is one message naming the key and what was written.

The keywords and choices of nncli.io.preprocess's Imputer.fit and OneHot.fit are repeated here (core
does not import io) so that a spec's mistake is named when it is read, not after the training rows are.
"""

from __future__ import annotations

import difflib
from typing import Any

from nncli.core.spec_values import MAX_INT, describe, finite, is_int, short

PREPROCESS_KINDS = ("standardize", "minmax")  # feature scaling, Spec.preprocess
PREPROCESS_KEYS = (*PREPROCESS_KINDS, "impute", "onehot", "categorical", "target")
IMPUTE_KEYS = ("strategy", "fill_value", "add_indicator", "keep_empty_features")
IMPUTE_STRATEGIES = ("mean", "median", "most_frequent", "constant")
ONEHOT_KEYS = ("columns", "handle_unknown", "min_frequency", "max_categories", "missing", "fill_value")
ONEHOT_UNKNOWN = ("ignore", "error")
ONEHOT_MISSING = ("error", "category", "most_frequent", "constant")
TARGET_SCALINGS = ("standardize", "minmax")
MAX_CLASSES = 100_000


def _is_name(value: Any) -> bool:
    """A column name as written: text, or an integer (made text, as `classes` labels are)."""
    return isinstance(value, str) or (is_int(value) and abs(value) < MAX_INT)


def _parse_names(value: Any, what: str, fail, one: bool = False) -> list[str] | None:
    """A list of column names, none twice (`one`: a single name alone too, as `target: species`);
    `what` names the key in messages."""
    if value is None:
        return None
    if one and _is_name(value):
        return [str(value)]
    either = "a column name or " if one else ""
    if not isinstance(value, list):
        raise fail(f"{what} must be {either}a list of column names, got {describe(value)}")
    if not value:
        raise fail(f"{what} is an empty list: name at least one column, or leave it out")
    bad = [v for v in value if not _is_name(v)]
    if bad:
        raise fail(f"{what} must hold column names (text or integers), got {describe(bad[0])}")
    names = [str(v) for v in value]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise fail(f"{what} names {short(n)} twice")
        seen.add(n)
    return names


def parse_columns(doc: dict, fail) -> dict:
    """`target`, `features` and `exclude`: which columns of the data the model takes, by name."""
    target = _parse_names(doc.get("target"), "`target`", fail, one=True)
    features = _parse_names(doc.get("features"), "`features`", fail)
    exclude = _parse_names(doc.get("exclude"), "`exclude`", fail)
    if features is not None and exclude is not None:
        raise fail("`features` and `exclude` together: give the columns to use or those to leave out, not both")
    both = [t for t in target or [] if t in (features or [])]
    if both:
        raise fail(f"`features` names the target {short(both[0])}: a column is a feature or the target, not both")
    return {"target": target, "features": features, "exclude": exclude}


def check_onehot_columns(onehot: dict | None, columns: dict, fail) -> None:
    """A one-hot column must be a feature: never the target, an excluded column, or one `features` leaves out."""
    if onehot is None or onehot["columns"] == "auto":
        return
    for c in onehot["columns"]:
        if c in (columns["target"] or []):
            raise fail(f"`preprocess: onehot` names the target {short(c)}; it encodes feature columns")
        if c in (columns["exclude"] or []):
            raise fail(f"`preprocess: onehot` names {short(c)}, which `exclude` leaves out")
        if columns["features"] is not None and c not in columns["features"]:
            raise fail(f"`preprocess: onehot` names {short(c)}, which is not among `features`")


def parse_classes(classes: Any, fail) -> list[str] | None:
    """`classes: [setosa, versicolor, virginica]`: the labels of class 0, 1, 2, ... (text or integers)."""
    if classes is None:
        return None
    if not isinstance(classes, list) or len(classes) < 2 or len(classes) > MAX_CLASSES:
        raise fail(f"`classes` must be a list of at least 2 labels, got {describe(classes)}")
    bad = [
        c
        for c in classes
        if not isinstance(c, (str, int)) or isinstance(c, bool) or (isinstance(c, int) and abs(c) >= MAX_INT)
    ]
    if bad:
        raise fail(f"`classes` must hold text or integer labels, got {describe(bad[0])}")
    labels = [str(c) for c in classes]
    seen = set()
    for label in labels:
        if label in seen:
            raise fail(f"`classes` names {label!r} twice")
        seen.add(label)
    return labels


def parse_preprocess(preprocess: Any, fail) -> dict:
    """`preprocess:` -> the Spec fields preprocess (feature scaling), impute, onehot and target_scaling."""
    parts: dict[str, Any] = {"preprocess": None, "impute": None, "onehot": None, "target_scaling": None}
    if preprocess is None:
        return parts
    if not isinstance(preprocess, dict) or not preprocess:
        got = "an empty mapping" if preprocess == {} else describe(preprocess)
        raise fail(f"`preprocess` must be a mapping of any of {', '.join(PREPROCESS_KEYS)}, got {got}")
    unknown = [k for k in preprocess if k not in PREPROCESS_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), PREPROCESS_KEYS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise fail(
            f"unknown `preprocess` key {short(unknown[0])}{hint} (`preprocess` takes {', '.join(PREPROCESS_KEYS)})"
        )
    scaling = [k for k in PREPROCESS_KINDS if k in preprocess]
    if len(scaling) > 1:
        raise fail("`preprocess` takes standardize or minmax, not both")
    if scaling:
        parts["preprocess"] = _parse_scaling(scaling[0], preprocess[scaling[0]], fail)
    if "impute" in preprocess:
        parts["impute"] = _parse_impute(preprocess["impute"], fail)
    if "onehot" in preprocess and "categorical" in preprocess:
        raise fail("`preprocess` takes onehot or categorical: auto, not both")
    if "onehot" in preprocess:
        parts["onehot"] = _parse_onehot(preprocess["onehot"], fail)
    if "categorical" in preprocess:
        if preprocess["categorical"] != "auto":
            raise fail(
                "`preprocess: categorical` takes auto (one-hot encode every text column other than the target), "
                f"got {describe(preprocess['categorical'])}"
            )
        parts["onehot"] = {"columns": "auto"}
    if "target" in preprocess:
        scale = preprocess["target"]
        if not isinstance(scale, str) or scale not in TARGET_SCALINGS:
            raise fail(f"`preprocess: target` must be {' or '.join(TARGET_SCALINGS)}, got {describe(scale)}")
        parts["target_scaling"] = scale
    return parts


def _parse_scaling(kind: str, columns: Any, fail) -> dict:
    """`standardize: true` (every feature) or `standardize: [age, income]`; `minmax` likewise."""
    if columns is True:
        return {kind: True}
    if (
        not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in columns)
    ):
        raise fail(f"`preprocess: {kind}` takes true or a list of column names, got {describe(columns)}")
    return {kind: [str(c) for c in columns]}


def _choice(value: Any, choices: tuple, what: str, fail) -> str:
    if not isinstance(value, str) or value not in choices:
        raise fail(f"{what} must be one of {', '.join(choices)}, got {describe(value)}")
    return value


def _unknown_option(given: dict, keys: tuple, what: str, fail) -> None:
    unknown = [k for k in given if k not in keys]
    if unknown:
        raise fail(f"unknown key {short(unknown[0])} in {what} (it takes {', '.join(keys)})")


def _parse_impute(value: Any, fail) -> dict:
    """`impute: median`, or `impute: {strategy: ..., fill_value: ..., add_indicator: ..., keep_empty_features: ...}`:
    SimpleImputer's keywords as given, strategy "mean" unless given (as SimpleImputer's default)."""
    what = "`preprocess: impute`"
    if isinstance(value, str):
        value = {"strategy": value}
    if not isinstance(value, dict):
        raise fail(
            f"{what} must be a strategy ({', '.join(IMPUTE_STRATEGIES)}) or a mapping of "
            f"{', '.join(IMPUTE_KEYS)}, got {describe(value)}"
        )
    if "columns" in value:
        raise fail(f"{what}: impute on some columns only is not supported yet; it imputes every number feature")
    _unknown_option(value, IMPUTE_KEYS, what, fail)
    impute: dict[str, Any] = {
        "strategy": _choice(value.get("strategy", "mean"), IMPUTE_STRATEGIES, f"{what} strategy", fail)
    }
    if "fill_value" in value:
        fill = value["fill_value"]
        if not isinstance(fill, (int, float)) or isinstance(fill, bool) or not finite(fill):
            raise fail(f"{what} fill_value must be a finite number, got {describe(fill)}")
        impute["fill_value"] = fill
    for flag in ("add_indicator", "keep_empty_features"):
        if flag in value:
            if not isinstance(value[flag], bool):
                raise fail(f"{what} {flag} must be true or false, got {describe(value[flag])}")
            impute[flag] = value[flag]
    return impute


def _parse_onehot(value: Any, fail) -> dict:
    """`onehot: [island, sex]`, `onehot: auto`, or a mapping of `columns` and OneHot.fit's keywords, as given."""
    what = "`preprocess: onehot`"
    if isinstance(value, list) or value == "auto":
        value = {"columns": value}
    if not isinstance(value, dict):
        raise fail(
            f"{what} must be a list of columns, auto, or a mapping of {', '.join(ONEHOT_KEYS)}, got {describe(value)}"
        )
    _unknown_option(value, ONEHOT_KEYS, what, fail)
    if value.get("columns") is None:
        raise fail(f"{what} must name its columns: `columns: [a, b]` or `columns: auto`")
    columns = value["columns"]
    onehot: dict[str, Any] = {
        "columns": "auto" if columns == "auto" else _parse_names(columns, f"{what} columns", fail)
    }
    if "handle_unknown" in value:
        onehot["handle_unknown"] = _choice(value["handle_unknown"], ONEHOT_UNKNOWN, f"{what} handle_unknown", fail)
    if "missing" in value:
        onehot["missing"] = _choice(value["missing"], ONEHOT_MISSING, f"{what} missing", fail)
    if "min_frequency" in value:
        m = value["min_frequency"]
        count = is_int(m) and 1 <= m < MAX_INT
        fraction = isinstance(m, float) and 0 < m < 1
        if not (count or fraction):
            raise fail(f"{what} min_frequency must be a count from 1 or a fraction between 0 and 1, got {describe(m)}")
        onehot["min_frequency"] = m
    if "max_categories" in value:
        m = value["max_categories"]
        if not (is_int(m) and 1 <= m < MAX_INT):
            raise fail(f"{what} max_categories must be an integer from 1, got {describe(m)}")
        onehot["max_categories"] = m
    if "fill_value" in value:
        fill = value["fill_value"]
        if not _is_name(fill):
            raise fail(f"{what} fill_value must be text (a category), got {describe(fill)}")
        onehot["fill_value"] = str(fill)  # `fill_value: 0` is the category "0", as the table's text reads
    return onehot
