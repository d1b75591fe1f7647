"""One-hot encoding of category (text) columns, equal to scikit-learn's `OneHotEncoder` (1.9) with
`sparse_output=False`, `handle_unknown="ignore"|"error"`, `min_frequency`, `max_categories`, on
object columns where a missing cell is NaN (as pandas reads one).

- Categories are the distinct texts of the training rows in sorted order (code point order, as
  Python's `sorted`), one 0/1 column each, column after column.
- Infrequent categories (fewer rows than `min_frequency`, an int count or a fraction of the
  training rows; or beyond the `max_categories - 1` most frequent, ties decided by sorted order
  as scikit-learn's stable argsort decides them) share one column, the column's last
  (scikit-learn names it `<column>_infrequent_sklearn`).
- An unknown category at predict time: all zeros (`ignore`: `transform` counts such rows per
  column, for one warning each), or an error naming the row and the column (`error`).
- A missing cell (see missing.py), by `missing`:
  `error` refuses it, naming its row and column (at fit and at predict time);
  `category` makes it a category of its own, after the texts (scikit-learn's NaN category, which
  counts as any other for the infrequent grouping);
  `most_frequent` / `constant` fill it first, as `SimpleImputer(strategy=...)` in a Pipeline
  before the encoder: the most frequent text, the smallest tied; or `fill_value` ("missing_value"
  when not given). A column with no value in the training rows then has no fill and no output
  column (SimpleImputer drops it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from nncli.errors import NncliError, printable
from nncli.io.preprocess import state
from nncli.io.preprocess.missing import row_where, shown

UNKNOWN = ("ignore", "error")
MISSING = ("error", "category", "most_frequent", "constant")
FILLS = ("most_frequent", "constant")
DEFAULT_FILL = "missing_value"  # scikit-learn's fill_value for text
NAME = "one-hot encoding"

Cell = str | None


@dataclass(frozen=True)
class OneHot:
    columns: tuple[str, ...]  # the category columns, in order
    categories: tuple[tuple[Cell, ...], ...]  # per column, sorted; None (the missing category) last
    infrequent: tuple[tuple[int, ...], ...]  # per column, indices into its categories grouped in one column
    handle_unknown: str
    missing: str
    fills: tuple[Cell, ...]  # per column, for most_frequent/constant; None: no fill, the column is dropped
    fill_value: str
    min_frequency: int | float | None
    max_categories: int | None

    @classmethod
    def fit(
        cls,
        cells: Sequence[Sequence[Cell] | pl.Series],
        columns: Sequence[str],
        handle_unknown: str = "ignore",
        min_frequency: int | float | None = None,
        max_categories: int | None = None,
        missing: str = "error",
        fill_value: str | None = None,
        source: str | None = None,
    ) -> OneHot:
        """Fit on the training rows: `cells[j]` is column j's cells, None where missing."""
        _check_options(handle_unknown, min_frequency, max_categories, missing, fill_value, source)
        fill_text = DEFAULT_FILL if fill_value is None else fill_value
        all_categories: list[tuple[Cell, ...]] = []
        all_infrequent: list[tuple[int, ...]] = []
        fills: list[Cell] = []
        for column, given in zip(columns, cells):
            values = given.to_list() if isinstance(given, pl.Series) else given
            fill = _fill(values, missing, fill_text) if missing in FILLS else None
            if missing in FILLS and fill is None:  # no value to fill with: SimpleImputer drops the column
                all_categories.append(())
                all_infrequent.append(())
                fills.append(None)
                continue
            if missing == "error":
                _refuse_missing(values, column, 0, source)
            counts = Counter(fill if v is None and fill is not None else v for v in values)
            order = _sorted(counts)
            all_categories.append(order)
            tally = np.array([counts[c] for c in order], dtype=np.int64)
            all_infrequent.append(_infrequent(tally, len(values), min_frequency, max_categories))
            fills.append(fill)
        return cls(
            columns=tuple(columns),
            categories=tuple(all_categories),
            infrequent=tuple(all_infrequent),
            handle_unknown=handle_unknown,
            missing=missing,
            fills=tuple(fills),
            fill_value=fill_text,
            min_frequency=min_frequency,
            max_categories=max_categories,
        )

    def _outputs(self, j: int) -> list[int]:
        """Column j: each category's output column (frequent ones in order, the infrequent one last)."""
        rare = set(self.infrequent[j])
        frequent = [i for i in range(len(self.categories[j])) if i not in rare]
        out = [0] * len(self.categories[j])
        for rank, i in enumerate(frequent):
            out[i] = rank
        for i in rare:
            out[i] = len(frequent)
        return out

    def widths(self) -> list[int]:
        return [len(c) - len(r) + (1 if r else 0) for c, r in zip(self.categories, self.infrequent)]

    @property
    def width(self) -> int:
        return sum(self.widths())

    @property
    def names(self) -> list[str]:
        """The output's columns, named as scikit-learn's get_feature_names_out names them."""
        names = []
        for column, cats, rare in zip(self.columns, self.categories, self.infrequent):
            names += [f"{column}_{'nan' if c is None else c}" for i, c in enumerate(cats) if i not in set(rare)]
            names += [f"{column}_infrequent_sklearn"] if rare else []
        return names

    def transform(
        self,
        cells: Sequence[Sequence[Cell] | pl.Series],
        first_row: int = 0,
        source: str | None = None,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[int, ...]]:
        """A block: `cells[j]` is column j's cells (a list, or a String series; None/null where
        missing) -> ((rows, width) float64, the count of rows with an unknown category, per
        column). `out`, when given, is the (rows, width) array written (a view into a wider one)."""
        rows = len(cells[0]) if len(cells) else 0
        if out is None:
            out = np.zeros((rows, self.width), dtype=np.float64)
        else:
            out[...] = 0.0
        unknown, start = [], 0
        for j, (values, width) in enumerate(zip(cells, self.widths())):
            if len(values) != rows:
                raise ValueError("columns of different lengths")
            if self.missing in FILLS and self.fills[j] is None:  # dropped in training: no output, nothing unknown
                unknown.append(0)
                continue
            codes = self._codes(j, values, first_row, source)
            known = np.flatnonzero(codes >= 0)
            out[known, start + codes[known]] = 1.0
            unknown.append(rows - known.size)
            start += width
        return out, tuple(unknown)

    def _codes(self, j: int, values: Sequence[Cell] | pl.Series, first_row: int, source: str | None) -> np.ndarray:
        """Column j's cells -> each one's output column within the column's block, -1 if unknown."""
        column, fill = self.columns[j], self.fills[j]
        series = values if isinstance(values, pl.Series) else pl.Series(column, values, dtype=pl.String)
        nulls = series.is_null()
        if self.missing == "error" and nulls.any():
            _refuse_missing([None], column, first_row + int(nulls.arg_max() or 0), source)
        if fill is not None:
            series, nulls = series.fill_null(fill), nulls & False
        outputs = dict(zip(self.categories[j], self._outputs(j)))
        null_code = outputs.pop(None, -1)
        codes = series.replace_strict(
            list(outputs), list(outputs.values()), default=-1, return_dtype=pl.Int64
        ).to_numpy()
        codes = np.where(nulls.to_numpy(), null_code, codes)
        if self.handle_unknown == "error" and (codes < 0).any():
            r = int(np.argmax(codes < 0))
            cell = series[r]
            raise NncliError(
                f"column {printable(column)!r}: {'a missing cell' if cell is None else shown(cell)} is not a "
                "category seen in training (handle_unknown: error)",
                row_where(source, first_row + r),
            )
        return codes

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "categories": [list(c) for c in self.categories],
            "infrequent": [list(r) for r in self.infrequent],
            "handle_unknown": self.handle_unknown,
            "missing": self.missing,
            "fills": list(self.fills),
            "fill_value": self.fill_value,
            "min_frequency": self.min_frequency,
            "max_categories": self.max_categories,
        }

    @classmethod
    def from_dict(cls, saved: Any, where: str) -> OneHot:
        d = state.fields(saved, NAME, tuple(cls.__dataclass_fields__), where)
        columns = state.texts(d["columns"], NAME, "columns", where)
        missing = state.choice(d["missing"], MISSING, NAME, "missing", where)
        lists = [d["categories"], d["infrequent"], d["fills"]]
        if not all(isinstance(x, list) and len(x) == len(columns) for x in lists):
            raise state.fail(NAME, "categories", "one list per column", where)
        categories = tuple(_saved_categories(c, missing, where) for c in d["categories"])
        infrequent = tuple(_saved_indices(r, len(c), where) for r, c in zip(d["infrequent"], categories))
        fill_value = state.text(d["fill_value"], NAME, "fill_value", where)
        fills = tuple(_saved_fill(f, c, missing, fill_value, where) for f, c in zip(d["fills"], categories))
        min_frequency, max_categories = d["min_frequency"], d["max_categories"]
        try:
            _check_options("ignore", min_frequency, max_categories, missing, None, where)
        except NncliError:
            raise state.fail(NAME, "min_frequency or max_categories", "as scikit-learn takes them", where) from None
        return cls(
            columns=columns,
            categories=categories,
            infrequent=infrequent,
            handle_unknown=state.choice(d["handle_unknown"], UNKNOWN, NAME, "handle_unknown", where),
            missing=missing,
            fills=fills,
            fill_value=fill_value,
            min_frequency=min_frequency,
            max_categories=max_categories,
        )


def _check_options(handle_unknown, min_frequency, max_categories, missing, fill_value, where) -> None:
    """The option values scikit-learn's parameter validation accepts."""
    if handle_unknown not in UNKNOWN:
        raise NncliError(f"onehot's handle_unknown is {handle_unknown!r}; it is ignore or error", where)
    if missing not in MISSING:
        raise NncliError(f"onehot's missing is {missing!r}; it is one of {', '.join(MISSING)}", where)
    if min_frequency is not None:
        whole = isinstance(min_frequency, int) and not isinstance(min_frequency, bool) and min_frequency >= 1
        fraction = isinstance(min_frequency, float) and 0 < min_frequency < 1
        if not (whole or fraction):
            raise NncliError(
                f"onehot's min_frequency is a count from 1 or a fraction between 0 and 1, not {min_frequency!r}", where
            )
    if max_categories is not None and not (
        isinstance(max_categories, int) and not isinstance(max_categories, bool) and max_categories >= 1
    ):
        raise NncliError(f"onehot's max_categories is an integer from 1, not {max_categories!r}", where)
    if fill_value is not None and not isinstance(fill_value, str):
        raise NncliError(f"onehot's fill_value for a category column is text, not {fill_value!r}", where)


def _sorted(counts: Counter) -> tuple[Cell, ...]:
    texts = sorted(c for c in counts if c is not None)
    return tuple(texts) + ((None,) if None in counts else ())


def _fill(values: Sequence[Cell], missing: str, fill_value: str) -> Cell:
    """SimpleImputer's statistic for an object column; None when the column has no value."""
    present = Counter(v for v in values if v is not None)
    if not present:
        return None
    if missing == "constant":
        return fill_value
    top = max(present.values())
    return min(v for v, n in present.items() if n == top)


def _infrequent(tally: np.ndarray, rows: int, min_frequency, max_categories) -> tuple[int, ...]:
    """scikit-learn's `_identify_infrequent`: the indices of the infrequent categories."""
    if isinstance(min_frequency, int):
        rare = tally < min_frequency
    elif isinstance(min_frequency, float):
        rare = tally < rows * min_frequency
    else:
        rare = np.zeros(tally.shape[0], dtype=bool)
    kept = tally.size - int(rare.sum()) + 1
    if max_categories is not None and max_categories < kept:
        frequent = max_categories - 1
        if frequent == 0:
            rare[:] = True
        else:
            rare[np.argsort(tally, kind="mergesort")[:-frequent]] = True
    return tuple(int(i) for i in np.flatnonzero(rare))


def _refuse_missing(values: Sequence[Cell], column: str, first_row: int, source: str | None) -> None:
    for r, v in enumerate(values):
        if v is None:
            raise NncliError(
                f"column {printable(column)!r}: the cell is missing (impute it, or onehot's missing: category)",
                row_where(source, first_row + r),
            )


def _saved_categories(value: Any, missing: str, where: str) -> tuple[Cell, ...]:
    cats = state.texts(value, NAME, "categories", where, limit=state.MAX_CATEGORIES, missing=missing == "category")
    texts = [c for c in cats if c is not None]
    if texts != sorted(texts) or (None in cats and cats[-1] is not None):
        raise state.fail(NAME, "categories", "sorted, a missing category last", where)
    return cats


def _saved_indices(value: Any, size: int, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > size:
        raise state.fail(NAME, "infrequent", "indices of categories", where)
    picks = tuple(state.count(i, NAME, "infrequent", where) for i in value)
    if list(picks) != sorted(set(picks)) or any(i >= size for i in picks):
        raise state.fail(NAME, "infrequent", "increasing indices of categories", where)
    return picks


def _saved_fill(value: Any, categories: tuple[Cell, ...], missing: str, fill_value: str, where: str) -> Cell:
    if value is None:
        if missing in FILLS and categories:
            raise state.fail(NAME, "fills", "a fill for each column that has categories", where)
        return None
    if missing not in FILLS:
        raise state.fail(NAME, "fills", "null unless missing is most_frequent or constant", where)
    fill = state.text(value, NAME, "fills", where)
    if missing == "constant" and fill != fill_value:
        raise state.fail(NAME, "fills", "the fill_value", where)
    if missing == "most_frequent" and fill not in categories:
        raise state.fail(NAME, "fills", "one of the column's categories", where)
    return fill
