"""The input schema a model is trained on, saved with its weights and enforced on every table
it is given: the feature columns in order with their kind (number or category), the fitted
transforms, and the target's name, kind, classes and scaling.

`encode(block)` gives the float64 matrix the model sees, equal bit for bit to scikit-learn's

    ColumnTransformer([("num", SimpleImputer(...), numbers), ("cat", OneHotEncoder(...), categories)])

(`"passthrough"` for the numbers when nothing is imputed; for categories filled before encoding,
`make_pipeline(SimpleImputer(strategy=...), OneHotEncoder(...))`) fitted on the same training
rows given as a pandas DataFrame. Its columns, in this order (ColumnTransformer's, in that
construction):
  1. the number features, in the schema's order (without those imputation drops: no value in
     the training rows), then, with `add_indicator`, one 0/1 column per number feature that had
     a missing cell in training;
  2. the category features, in the schema's order, each as its one-hot columns (its categories
     in sorted order, its infrequent column last).
Columns are found BY NAME: a table whose columns are in another order gives the same matrix; a
feature column the table lacks is an error naming it; columns that are neither features nor the
target are left out (`match` returns them, for one notice).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from nncli.errors import NncliError, printable
from nncli.io.preprocess import state
from nncli.io.preprocess.categories import OneHot
from nncli.io.preprocess.impute import Imputer
from nncli.io.preprocess.missing import column_numbers, is_missing, row_where, text_series
from nncli.io.preprocess.target import TargetScaler

VERSION = 1
KINDS = ("number", "category")
NAME = "input schema"
IMPUTE_KEYWORDS = ("strategy", "fill_value", "add_indicator", "keep_empty_features")
ONEHOT_KEYWORDS = ("handle_unknown", "min_frequency", "max_categories", "missing", "fill_value")
MAX_JSON = 64 << 20  # characters of a saved schema: a million categories of 60 characters


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # number | category


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # number (regression) | category (classes)
    classes: tuple[str, ...] | None = None  # the class labels in index order (category)
    scaling: TargetScaler | None = None  # number only

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "classes": None if self.classes is None else list(self.classes),
            "scaling": None if self.scaling is None else self.scaling.to_dict(),
        }

    @classmethod
    def from_dict(cls, saved: Any, where: str) -> Target:
        d = state.fields(saved, "target", ("name", "kind", "classes", "scaling"), where)
        kind = state.choice(d["kind"], KINDS, "target", "kind", where)
        classes = None
        if kind == "category":
            classes = state.texts(d["classes"], "target", "classes", where, limit=state.MAX_CATEGORIES)
            if not classes:
                raise state.fail("target", "classes", "at least one class", where)
        elif d["classes"] is not None:
            raise state.fail("target", "classes", "null for a number target", where)
        if kind == "category" and d["scaling"] is not None:
            raise state.fail("target", "scaling", "null for a category target", where)
        scaling = None if d["scaling"] is None else TargetScaler.from_dict(d["scaling"], where)
        return cls(state.text(d["name"], "target", "name", where), kind, classes, scaling)


@dataclass(frozen=True)
class Matched:
    """A table's columns read against the schema."""

    positions: list[int]  # for each feature, in the schema's order, its column's index in the table
    extra: list[str] = field(default_factory=list)  # columns that are neither a feature nor the target


@dataclass(frozen=True)
class Encoded:
    values: np.ndarray  # (rows, width) float64
    unknown: dict[str, int]  # rows with a category unseen in training, per category column (counts > 0 only)


@dataclass(frozen=True)
class Schema:
    features: tuple[Feature, ...]
    imputer: Imputer | None = None  # on the number features, in order
    onehot: OneHot | None = None  # on the category features, in order
    target: Target | None = None

    @property
    def numbers(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "number"]

    @property
    def categories(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "category"]

    @property
    def width(self) -> int:
        """The encoded width: the model's in_features."""
        numbers = self.imputer.width if self.imputer is not None else len(self.numbers)
        return numbers + (self.onehot.width if self.onehot is not None else 0)

    @property
    def names(self) -> list[str]:
        """The encoded columns' names (ColumnTransformer's with verbose_feature_names_out=False)."""
        numbers = self.imputer.names if self.imputer is not None else self.numbers
        return numbers + (self.onehot.names if self.onehot is not None else [])

    @classmethod
    def fit(
        cls,
        frame: pl.DataFrame,
        numbers: Sequence[str] = (),
        categories: Sequence[str] = (),
        impute: dict[str, Any] | None = None,
        onehot: dict[str, Any] | None = None,
        target: Target | None = None,
        source: str | None = None,
    ) -> Schema:
        """Fit on the training rows. The features are `numbers` and `categories` in the table's
        order; `impute` holds SimpleImputer's keywords (strategy, fill_value, add_indicator,
        keep_empty_features), `onehot` OneHot.fit's (handle_unknown, min_frequency,
        max_categories, missing, fill_value)."""
        chosen = set(numbers) | set(categories)
        if len(chosen) != len(numbers) + len(categories):
            raise NncliError("a column is named twice among the features", source)
        _require(frame.columns, list(chosen), source)
        kinds = {**{n: "number" for n in numbers}, **{c: "category" for c in categories}}
        schema = cls(tuple(Feature(n, kinds[n]) for n in frame.columns if n in chosen), target=target)
        return cls.fit_parts(
            schema.features,
            schema._numbers(frame, 0, source),
            schema._texts(frame, source),
            impute,
            onehot,
            target,
            source,
        )

    @classmethod
    def fit_parts(
        cls,
        features: Sequence[Feature],
        numbers: np.ndarray,
        texts: Sequence[Sequence[str | None] | pl.Series],
        impute: dict[str, Any] | None = None,
        onehot: dict[str, Any] | None = None,
        target: Target | None = None,
        source: str | None = None,
    ) -> Schema:
        """Fit on the training rows given as the readers give a block: the number features as a
        (rows, n) float64 matrix (NaN where missing) and the category features' cells, each in
        the order of `features`. A category cell is missing only as None (or null): a reader's
        text goes through `missing.column_texts` / `text_series` first, which make `""`, `NA`,
        `?` ... None."""
        _check_keywords(impute, IMPUTE_KEYWORDS, "impute", source)
        _check_keywords(onehot, ONEHOT_KEYWORDS, "onehot", source)
        schema = cls(tuple(features), target=target)
        if target is not None and target.name in {f.name for f in features}:
            raise NncliError(f"the target {printable(target.name)!r} is also a feature", source)
        imputer = None
        if impute is not None and schema.numbers:
            imputer = Imputer.fit(numbers, schema.numbers, **impute, source=source)
        else:
            _refuse_missing(numbers, schema.numbers, 0, source)
        encoder = OneHot.fit(texts, schema.categories, **(onehot or {}), source=source) if texts else None
        return cls(schema.features, imputer, encoder, target)

    def match(self, columns: Sequence[str], source: str | None = None) -> Matched:
        """The features' places among a table's columns, by name; the columns left over."""
        _require(columns, [f.name for f in self.features], source)
        index = {name: i for i, name in enumerate(columns)}
        wanted = {f.name for f in self.features} | ({self.target.name} if self.target else set())
        return Matched([index[f.name] for f in self.features], [c for c in columns if c not in wanted])

    def encode(self, block: pl.DataFrame, first_row: int = 0, source: str | None = None) -> Encoded:
        """A block of rows (its columns in any order, extra ones ignored) -> the model's matrix."""
        self.match(block.columns, source)
        return self.encode_parts(self._numbers(block, first_row, source), self._texts(block, source), first_row, source)

    def encode_parts(
        self,
        numbers: np.ndarray,
        texts: Sequence[Sequence[str | None] | pl.Series],
        first_row: int = 0,
        source: str | None = None,
    ) -> Encoded:
        """A block given as the readers give one (see fit_parts) -> the model's matrix."""
        x = np.asarray(numbers, dtype=np.float64)
        out = np.empty((x.shape[0], self.width), dtype=np.float64)  # one row-major matrix, written in place
        numbers_width = self.imputer.width if self.imputer is not None else x.shape[1]
        if self.imputer is not None:
            self.imputer.transform(x, first_row, source, out=out[:, :numbers_width])
        else:
            _refuse_missing(x, self.numbers, first_row, source)
            out[:, :numbers_width] = x
        if self.onehot is None:
            return Encoded(out, {})
        _, counts = self.onehot.transform(texts, first_row, source, out=out[:, numbers_width:])
        return Encoded(out, {c: n for c, n in zip(self.categories, counts) if n})

    def targets(self, block: pl.DataFrame, first_row: int = 0, source: str | None = None) -> np.ndarray:
        """The target column of a block as the loss takes it, float64 (rows,): scaled numbers, or
        class indices."""
        if self.target is None:
            raise NncliError("the model's schema names no target", source)
        name = self.target.name
        _require(block.columns, [name], source)
        if self.target.classes is None:
            y = column_numbers(block.get_column(name), name, first_row, source)
            return self.target.scaling.transform(y, first_row, source) if self.target.scaling else y
        index = {label: i for i, label in enumerate(self.target.classes)}
        cells = block.get_column(name).cast(pl.String).to_list()
        out = np.empty(len(cells), dtype=np.float64)
        for r, cell in enumerate(cells):
            i = None if is_missing(cell) else index.get(cell.strip())
            if i is None:
                what = "is missing" if is_missing(cell) else f"is {printable(cell)!r}, not one of the model's classes"
                raise NncliError(f"the target {printable(name)!r} {what}", row_where(source, first_row + r))
            out[r] = i
        return out

    def _texts(self, block: pl.DataFrame, source: str | None) -> list[pl.Series]:
        return [text_series(block.get_column(c), c, source) for c in self.categories]

    def _numbers(self, block: pl.DataFrame, first_row: int, source: str | None) -> np.ndarray:
        """The number features as an F-ordered float64 matrix (column after column, as scikit-learn
        receives a DataFrame's columns), NaN where missing."""
        x = np.empty((block.height, len(self.numbers)), dtype=np.float64, order="F")
        for j, name in enumerate(self.numbers):
            x[:, j] = column_numbers(block.get_column(name), name, first_row, source)
        return x

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "features": [{"name": f.name, "kind": f.kind} for f in self.features],
            "impute": None if self.imputer is None else self.imputer.to_dict(),
            "onehot": None if self.onehot is None else self.onehot.to_dict(),
            "target": None if self.target is None else self.target.to_dict(),
        }

    def to_json(self) -> str:
        """The text saved in a weights file's metadata (floats written to round-trip exactly)."""
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: Any, where: str) -> Schema:
        if not isinstance(text, str) or len(text) > MAX_JSON:
            raise NncliError(f"the saved {NAME} is not what nncli writes (JSON text)", where)
        try:
            saved = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            raise NncliError(f"the saved {NAME} is not what nncli writes (JSON text)", where) from None
        return cls.from_dict(saved, where)

    @classmethod
    def from_dict(cls, saved: Any, where: str) -> Schema:
        d = state.fields(saved, NAME, ("version", "features", "impute", "onehot", "target"), where)
        if d["version"] != VERSION or isinstance(d["version"], bool):
            version = printable(str(d["version"]))[:20]
            raise NncliError(f"the saved {NAME} is version {version}; this nncli reads {VERSION}", where)
        features = _saved_features(d["features"], where)
        imputer = None if d["impute"] is None else Imputer.from_dict(d["impute"], where)
        onehot = None if d["onehot"] is None else OneHot.from_dict(d["onehot"], where)
        schema = cls(features, imputer, onehot, None if d["target"] is None else Target.from_dict(d["target"], where))
        if imputer is not None and list(imputer.columns) != schema.numbers:
            raise state.fail(NAME, "imputation", "on the number features, in order", where)
        if (onehot.columns if onehot else ()) != tuple(schema.categories):
            raise state.fail(NAME, "one-hot encoding", "on the category features, in order", where)
        if schema.target is not None and schema.target.name in {f.name for f in features}:
            raise state.fail(NAME, "target", "a column that is not a feature", where)
        return schema


def _saved_features(value: Any, where: str) -> tuple[Feature, ...]:
    if not isinstance(value, list) or len(value) > state.MAX_COLUMNS:
        raise state.fail(NAME, "features", f"a list of at most {state.MAX_COLUMNS}", where)
    features = []
    for item in value:
        d = state.fields(item, "feature", ("name", "kind"), where)
        features.append(
            Feature(
                state.text(d["name"], "feature", "name", where),
                state.choice(d["kind"], KINDS, "feature", "kind", where),
            )
        )
    if len({f.name for f in features}) != len(features):
        raise state.fail(NAME, "features", "no repeated names", where)
    return tuple(features)


def _check_keywords(given: dict[str, Any] | None, known: tuple[str, ...], name: str, source: str | None) -> None:
    odd = sorted(set(given or {}) - set(known))
    if odd:
        raise NncliError(f"{name} takes {', '.join(known)}; not {', '.join(map(str, odd))}", source)


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def _require(columns: Sequence[str], wanted: Sequence[str], source: str | None) -> None:
    """Every wanted column present, once."""
    seen: dict[str, int] = {}
    for c in columns:
        seen[c] = seen.get(c, 0) + 1
    for name in wanted:
        if name not in seen:
            shown = ", ".join(printable(c) for c in list(columns)[:20]) + (", ..." if len(columns) > 20 else "")
            raise NncliError(
                f"the column {printable(name)!r} the model was trained on is not in the data (its columns: {shown})",
                source,
            )
        if seen[name] > 1:
            raise NncliError(f"the column {printable(name)!r} appears {seen[name]} times in the data", source)


def _refuse_missing(x: np.ndarray, columns: Sequence[str], first_row: int, source: str | None) -> None:
    """Without imputation a missing number is an error naming its row and column (never a NaN
    that training reports as divergence)."""
    missing = np.isnan(x)
    if missing.any():
        r, j = (int(i) for i in np.argwhere(missing)[0])
        raise NncliError(
            f"column {printable(columns[j])!r}: the cell is missing (add `preprocess: {{impute: ...}}` to fill it)",
            row_where(source, first_row + r),
        )
