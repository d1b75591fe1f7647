"""Which cells are missing, one list for every reader.

A text cell is missing when, spaces and tabs around it removed, it is one of `MISSING_TEXTS`: the
empty field, `NA`, `NaN`, `nan`, `null`, `None`, `?` (what pandas, R and the UCI tables write; the
match is exact, so `N/A`, `NULL` or `-` are values). A typed cell (Parquet, Arrow, NDJSON) is missing
when it is null, or NaN in a float column. Infinity is not missing, and not a number a fitted
transform takes either: it is refused, naming its row (scikit-learn refuses it too).

Here cells become what the transforms take: a number column a float64 array with NaN where a
cell is missing, a category column a list of str with None where a cell is missing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl

from nncli.errors import NncliError, printable
from nncli.io.cells import AROUND, MISSING_TEXTS, is_missing_text, parse_number


def is_missing(cell: object) -> bool:
    """A missing cell: None, a float NaN, or text in MISSING_TEXTS (spaces and tabs around it ignored)."""
    if cell is None:
        return True
    if isinstance(cell, float):
        return math.isnan(cell)
    return isinstance(cell, str) and is_missing_text(cell)


def missing_texts(series: pl.Series) -> pl.Series:
    """Of a String column: which cells are missing (null, or text in MISSING_TEXTS), as booleans."""
    return (series.is_null() | series.str.strip_chars(AROUND).is_in(MISSING_TEXTS)).fill_null(True)


def row_where(source: str | None, row: int) -> str:
    """The `where` of an error about one row: rows are counted from 0 after the header, as nncli's
    readers count them."""
    return f"{source}, row {row}" if source else f"row {row}"


def shown(cell: str) -> str:
    text = cell if len(cell) <= 40 else cell[:37] + "..."
    return repr(printable(text))


def numbers_from_texts(
    cells: Sequence[str | None], column: str, first_row: int = 0, source: str | None = None
) -> np.ndarray:
    """Text cells of a number column as float64, NaN where missing; a cell that is not a number
    (or is infinite) is an error naming its column and row."""
    out = np.empty(len(cells), dtype=np.float64)
    for r, cell in enumerate(cells):
        if is_missing(cell):
            out[r] = np.nan
            continue
        value = parse_number(cell) if isinstance(cell, str) else None
        if value is None or not math.isfinite(value):
            problem = "is not a number" if value is None else "is not a finite number"
            raise NncliError(
                f"column {printable(column)!r} (a number column): {shown(str(cell))} {problem}",
                row_where(source, first_row + r),
            )
        out[r] = value
    return out


def column_numbers(series: pl.Series, column: str, first_row: int = 0, source: str | None = None) -> np.ndarray:
    """A column of a block as float64 with NaN where a cell is missing: typed numbers as they are
    (null -> NaN, booleans 0/1), text parsed as the CSV reader parses a cell."""
    dtype = series.dtype
    if dtype == pl.Null:
        return np.full(len(series), np.nan)
    if dtype == pl.String:
        return _parsed(series, column, first_row, source)
    if not (dtype.is_numeric() or dtype == pl.Boolean):
        raise NncliError(f"column {printable(column)!r} holds {dtype}, not numbers", source)
    values = series.cast(pl.Float64).fill_null(np.nan).to_numpy().astype(np.float64, copy=True)
    infinite = np.isinf(values)
    if infinite.any():
        r = int(infinite.argmax())
        raise NncliError(
            f"column {printable(column)!r} (a number column): {values[r]} is not a finite number",
            row_where(source, first_row + r),
        )
    return values


def _parsed(series: pl.Series, column: str, first_row: int, source: str | None) -> np.ndarray:
    """Text cells as numbers: polars' parse where it gives a finite number (it agrees with
    parse_number wherever it accepts a cell, as the CSV reader's fast path relies on), Python's
    parse_number, the authority, for the rest: spaces around a number, or an error naming the cell."""
    missing = missing_texts(series)
    values = series.cast(pl.Float64, strict=False).to_numpy().astype(np.float64, copy=True)
    doubt = ~np.isfinite(values) & ~missing.to_numpy()
    values[missing.to_numpy()] = np.nan
    if doubt.any():
        rows = np.flatnonzero(doubt)
        cells = series.gather(rows).to_list()
        for r, cell in zip(rows, cells):
            values[r] = numbers_from_texts([cell], column, first_row + int(r), source)[0]
    return values


def column_texts(series: pl.Series, column: str, source: str | None = None) -> list[str | None]:
    """A category column of a block as text, None where a cell is missing (see text_series)."""
    return text_series(series, column, source).to_list()


def text_series(series: pl.Series, column: str, source: str | None = None) -> pl.Series:
    """A category column of a block as a String series, null where a cell is missing. Integers and
    booleans are written as text (`3`, `true`), as a CSV file holds them; a float column is
    refused, since `1.0` and `1` would be two categories."""
    dtype = series.dtype
    if dtype == pl.Null:
        return pl.Series(series.name, [None] * len(series), dtype=pl.String)
    if dtype.is_float():
        raise NncliError(
            f"column {printable(column)!r} holds {dtype} numbers; it was a category column in training",
            source,
        )
    if dtype == pl.Categorical or isinstance(dtype, pl.Enum):  # pandas' category, Arrow's dictionary: text
        series = series.cast(pl.String)
        dtype = series.dtype
    if dtype != pl.String:
        if not (dtype.is_integer() or dtype == pl.Boolean):
            raise NncliError(f"column {printable(column)!r} holds {dtype}, not text", source)
        series = series.cast(pl.String)
    return series.zip_with(~missing_texts(series), pl.Series(series.name, [None] * len(series), dtype=pl.String))
