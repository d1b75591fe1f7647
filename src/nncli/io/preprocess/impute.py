"""Imputation of number columns, equal to scikit-learn's `SimpleImputer` (1.9) on the same rows.

`SimpleImputer(strategy=..., fill_value=..., add_indicator=..., keep_empty_features=...)` with
`missing_values=np.nan`, fitted on a pandas DataFrame or an F-ordered float64 array (column after
column, as ColumnTransformer hands it a DataFrame's columns): the statistics are computed here by
the very numpy calls scikit-learn makes, on that layout, so `mean` sums in the same order:
- mean: `np.ma.mean`, median: `np.ma.median` (the two middle values averaged), over the cells
  that are not missing;
- most_frequent: the most frequent value, the smallest of those tied (scipy's `mode`);
- constant: `fill_value` (0 when not given, as scikit-learn's default for numbers).
A column with no value in the training rows is dropped from the output (scikit-learn warns
"Skipping features without any observed values"), for every strategy, constant included; with
`keep_empty_features=True` it is kept and filled with 0 (constant: with `fill_value`).
With `add_indicator`, one 0/1 column per feature that had a missing cell in the training rows
(`MissingIndicator(features="missing-only")`), after the imputed columns, in the features' order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nncli.errors import NncliError, printable
from nncli.io.preprocess import state
from nncli.io.preprocess.missing import row_where

STRATEGIES = ("mean", "median", "most_frequent", "constant")
NAME = "imputation"


@dataclass(frozen=True)
class Imputer:
    columns: tuple[str, ...]  # the number columns it was fitted on, in order
    strategy: str
    fill_value: float  # constant's fill (0.0 unless given)
    add_indicator: bool
    keep_empty_features: bool
    statistics: tuple[float | None, ...]  # the fill per column; None: no value in training, dropped
    indicator: tuple[int, ...]  # columns with a missing cell in training, each given a 0/1 column

    @classmethod
    def fit(
        cls,
        values: np.ndarray,
        columns: Sequence[str],
        strategy: str = "mean",
        fill_value: float | None = None,
        add_indicator: bool = False,
        keep_empty_features: bool = False,
        source: str | None = None,
    ) -> Imputer:
        """Fit on the training rows: `values` (rows, len(columns)) float64, NaN where missing."""
        if strategy not in STRATEGIES:
            raise NncliError(f"impute's strategy is {strategy!r}; it is one of {', '.join(STRATEGIES)}", source)
        fill = 0.0 if fill_value is None else fill_value
        if (
            isinstance(fill, bool)
            or not isinstance(fill, int | float)
            or not -state.FLOAT_MAX <= fill <= state.FLOAT_MAX
        ):
            raise NncliError(f"impute's fill_value for number columns is a finite number, not {fill!r}", source)
        x = np.asfortranarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(columns):
            raise ValueError(f"values of shape {x.shape} for {len(columns)} columns")
        _refuse_infinite(x, columns, 0, source)
        mask = np.isnan(x)
        seen = [not mask[:, j].all() for j in range(mask.shape[1])]
        stats = _statistics(x, mask, strategy, float(fill))
        # a column with no value: dropped (None), or with keep_empty_features filled as scikit-learn fills it
        empty = (float(fill) if strategy == "constant" else 0.0) if keep_empty_features else None
        filled = tuple(
            state.finite(float(s), f"the {strategy} of column {printable(c)!r}", source) if ok else empty
            for s, ok, c in zip(stats, seen, columns)
        )
        return cls(
            columns=tuple(columns),
            strategy=strategy,
            fill_value=float(fill),
            add_indicator=add_indicator,
            keep_empty_features=keep_empty_features,
            statistics=filled,
            indicator=tuple(int(i) for i in np.flatnonzero(mask.any(axis=0))) if add_indicator else (),
        )

    @property
    def kept(self) -> tuple[int, ...]:
        """The columns in the output (those with a fill), in order."""
        return tuple(i for i, s in enumerate(self.statistics) if s is not None)

    @property
    def names(self) -> list[str]:
        """The output's columns, named as scikit-learn's get_feature_names_out names them."""
        return [self.columns[i] for i in self.kept] + [f"missingindicator_{self.columns[i]}" for i in self.indicator]

    @property
    def width(self) -> int:
        return len(self.kept) + len(self.indicator)

    def transform(
        self, values: np.ndarray, first_row: int = 0, source: str | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """A block of rows (rows, len(columns)) float64, NaN where missing -> (rows, width) float64.
        `out`, when given, is the (rows, width) array written (a view into a wider one)."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise ValueError(f"values of shape {x.shape} for {len(self.columns)} columns")
        _refuse_infinite(x, self.columns, first_row, source)
        if out is None:
            out = np.empty((x.shape[0], self.width), dtype=np.float64)
        kept = list(self.kept)
        # whole-array steps (a column at a time cost ten times as much on a row-major block): the kept
        # columns copied, then each gap replaced by its column's statistic; the same values either way
        part = out[:, : len(kept)]
        part[...] = x[:, kept] if len(kept) != x.shape[1] else x
        gaps = np.isnan(part)
        if gaps.any():
            fills = np.array([self.statistics[i] for i in kept], dtype=np.float64)
            np.copyto(part, np.broadcast_to(fills, part.shape), where=gaps)
        for k, i in enumerate(self.indicator, start=len(kept)):
            out[:, k] = np.isnan(x[:, i])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "strategy": self.strategy,
            "fill_value": self.fill_value,
            "add_indicator": self.add_indicator,
            "keep_empty_features": self.keep_empty_features,
            "statistics": list(self.statistics),
            "indicator": list(self.indicator),
        }

    @classmethod
    def from_dict(cls, saved: Any, where: str) -> Imputer:
        d = state.fields(saved, NAME, tuple(cls.__dataclass_fields__), where)
        columns = state.texts(d["columns"], NAME, "columns", where)
        stats = d["statistics"]
        if not isinstance(stats, list) or len(stats) != len(columns):
            raise state.fail(NAME, "statistics", "one number or null per column", where)
        indicator = d["indicator"]
        if not isinstance(indicator, list) or len(indicator) > len(columns):
            raise state.fail(NAME, "indicator", "column indices", where)
        picks = tuple(state.count(i, NAME, "indicator", where) for i in indicator)
        if list(picks) != sorted(set(picks)) or any(i >= len(columns) for i in picks):
            raise state.fail(NAME, "indicator", "increasing column indices", where)
        add = state.flag(d["add_indicator"], NAME, "add_indicator", where)
        if picks and not add:
            raise state.fail(NAME, "indicator", "empty without add_indicator", where)
        return cls(
            columns=columns,
            strategy=state.choice(d["strategy"], STRATEGIES, NAME, "strategy", where),
            fill_value=state.number(d["fill_value"], NAME, "fill_value", where),
            add_indicator=add,
            keep_empty_features=state.flag(d["keep_empty_features"], NAME, "keep_empty_features", where),
            statistics=tuple(None if s is None else state.number(s, NAME, "statistics", where) for s in stats),
            indicator=picks,
        )


def _statistics(x: np.ndarray, mask: np.ndarray, strategy: str, fill: float) -> np.ndarray:
    """scikit-learn's `_dense_fit`, for float64 columns (nan where a column has no value)."""
    masked = np.ma.masked_array(x, mask=mask)
    if strategy == "mean":
        return np.ma.getdata(np.ma.mean(masked, axis=0)).astype(np.float64)
    if strategy == "median":
        return np.ma.getdata(np.ma.median(masked, axis=0)).astype(np.float64)
    if strategy == "constant":
        return np.full(x.shape[1], fill)
    out = np.full(x.shape[1], np.nan)
    for j in range(x.shape[1]):
        present = x[~mask[:, j], j]
        if present.size:
            values, counts = np.unique(present, return_counts=True)
            out[j] = values[np.argmax(counts)]  # the first of the most frequent: the smallest, as scipy's mode
    return out


def _refuse_infinite(x: np.ndarray, columns: Sequence[str], first_row: int, source: str | None) -> None:
    infinite = np.isinf(x)
    if infinite.any():
        r, j = (int(i) for i in np.argwhere(infinite)[0])
        raise NncliError(
            f"column {printable(columns[j])!r}: {x[r, j]} is not a finite number", row_where(source, first_row + r)
        )
