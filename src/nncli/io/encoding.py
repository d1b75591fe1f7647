"""A file read against a model's input schema: its columns found by name, each block of raw cells
encoded into the matrix the model sees (io.preprocess.schema), block by block as it is read.

The blocks that come out have the shape the plain reader's have (the features, then any number
targets, as float64 values; the id and a text label as texts), so batching, dtype conversion and
label encoding downstream are the same code for both paths. What the schema changes:
  - features are the schema's, found BY NAME in the header (a reordered table gives the same
    numbers); a headerless file is read by position, with a warning;
  - number cells may be missing (NaN), which the schema's imputer fills or refuses, naming the cell;
  - category cells are one-hot encoded, and rows with categories unseen in training are counted;
  - a number target is scaled as it was in training (Dataset.batches, which keeps the targets as
    read beside them for metrics in the target's units), unless the caller wants it unscaled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nncli.errors import NncliError, UsageError, printable
from nncli.io.cells import Block


@dataclass
class Columns:
    """Where a schema's features and a file's targets are: 0-based column indices in the file."""

    numbers: list[int]  # the number features, in the schema's order
    categories: list[int]  # the category features, in the schema's order
    warnings: list[str] = field(default_factory=list)  # what matching noticed (extra columns, no header)


def match_columns(
    schema, table, targets: Sequence[int], id_col: int | None, features: Sequence[str], unused: Sequence[str] = ()
) -> Columns:
    """The schema's features among `table`'s columns. `features`: the user's --features, which must
    name the schema's features (an error names the difference). Columns left over get one notice,
    except those in `unused` (the spec's `exclude:`; "*" for all: train's own reading)."""
    names = [f.name for f in schema.features]
    if features:
        given = [_named(f.strip(), table.names) for f in features]
        if given != names:
            raise UsageError(_difference(given, names))
    taken = set(targets) | ({id_col} if id_col is not None else set())
    warnings = []
    if table.names:
        where = schema.match(table.names, table.name)
        positions = where.positions
        extra = set(where.extra) - set(unused)
        ignored = [c for i, c in enumerate(table.names) if c in extra and i not in taken]
        if ignored and "*" not in unused:
            shown = ", ".join(printable(c) for c in ignored[:10]) + (", ..." if len(ignored) > 10 else "")
            warnings.append(f"columns the model was not trained on are ignored: {shown} ({table.name})")
    else:
        free = [i for i in range(table.ncols) if i not in taken]
        if len(free) < len(names):
            raise NncliError(
                f"the file has no header and {len(free)} feature columns; the model takes {len(names)} "
                f"({', '.join(printable(n) for n in names[:10])})",
                table.name,
            )
        positions = free[: len(names)]
        warnings.append(
            f"the file has no header: its first {len(names)} columns are taken as the model's features, "
            f"in its order ({', '.join(printable(n) for n in names[:10])}{', ...' if len(names) > 10 else ''})"
            f" ({table.name})"
        )
    clash = [p for p in positions if p in taken]
    if clash:
        raise UsageError(f"{table.column_label(clash[0])} is one of the model's features; it can't be a target or id")
    kinds = [f.kind for f in schema.features]
    return Columns(
        [p for p, k in zip(positions, kinds) if k == "number"],
        [p for p, k in zip(positions, kinds) if k == "category"],
        warnings,
    )


def _named(token: str, columns: Sequence[str] | None) -> str:
    """A --features token as a column name: a name, or a 0-based index into the table's columns."""
    if not columns or token in columns:
        return token
    if token.lstrip("+-").isdigit() and len(token) < 20 and -len(columns) <= int(token) < len(columns):
        return columns[int(token)]
    return token


def _difference(given: list[str], names: list[str]) -> str:
    missing = [n for n in names if n not in given]
    extra = [g for g in given if g not in names]
    parts = []
    if missing:
        parts.append(f"leaves out {', '.join(repr(printable(n)) for n in missing[:10])}")
    if extra:
        parts.append(f"adds {', '.join(repr(printable(n)) for n in extra[:10])}")
    if not parts:
        parts.append(f"orders them otherwise (the model's order: {', '.join(printable(n) for n in names[:10])})")
    return f"--features disagrees with the features the model was trained on: it {' and '.join(parts)}"


@dataclass
class Encoder:
    """Raw blocks -> the plain reader's blocks (see the module's docstring)."""

    schema: Any  # io.preprocess.schema.Schema
    columns: Columns
    source: str
    number_targets: int = 0  # number target columns read after the features (scaled with the schema's scaling)
    scale_target: bool = True
    target_names: list = field(default_factory=list)  # the number targets' column names, for messages
    unknown: Counter = field(default_factory=Counter)  # rows with an unseen category, per category column

    def raw_columns(self, numeric_targets: Sequence[int], texts: Sequence[int]) -> tuple[list[int], list[int]]:
        """The file's columns to read: (numbers, texts) for CsvFile.read / TableFile.read."""
        return self.columns.numbers + list(numeric_targets), self.columns.categories + list(texts)

    def blocks(self, raw: Iterable[Block]) -> Iterator[Block]:
        import numpy as np
        import polars as pl

        from nncli.io.preprocess.missing import text_series

        schema, n_numbers, n_categories = self.schema, len(self.columns.numbers), len(self.columns.categories)
        names = schema.categories
        for block in raw:
            values: Any = block.values  # numpy float64 (rows, numbers + targets)
            texts = [
                text_series(pl.Series(name, cells, dtype=pl.String), name, self.source)
                for name, cells in zip(names, block.texts[:n_categories])
            ]
            encoded = schema.encode_parts(values[:, :n_numbers], texts, block.first_row, self.source)
            self.unknown.update(encoded.unknown)
            targets = values[:, n_numbers:]
            if targets.shape[1]:
                targets = self.targets(targets, block.first_row)
                out = np.empty((len(values), encoded.values.shape[1] + targets.shape[1]))
                out[:, : encoded.values.shape[1]] = encoded.values
                out[:, encoded.values.shape[1] :] = targets
            else:
                out = encoded.values
            yield Block(np.ascontiguousarray(out), block.texts[n_categories:], block.first_row)

    @property
    def scaling(self):
        """The target's scaling (a TargetScaler) where the reader applies it, else None."""
        target = self.schema.target
        return target.scaling if target is not None and self.scale_target else None

    def targets(self, y, first_row: int):
        """Number targets read with missing cells allowed: a missing one is an error naming its row."""
        import numpy as np

        from nncli.io.preprocess.missing import row_where

        missing = np.isnan(y)
        if missing.any():
            r, j = (int(i) for i in np.argwhere(missing)[0])
            name = self.target_names[j] if j < len(self.target_names) else f"target {j}"
            raise NncliError(f"the target {printable(name)!r} is missing", row_where(self.source, first_row + r))
        return y

    def unknown_warnings(self) -> list[str]:
        """One line per category column with categories unseen in training (encoded as all zeros)."""
        return [
            f"column {printable(column)!r}: {n} row{'s' if n > 1 else ''} with a category not seen in training "
            f"(encoded as all zeros) ({self.source})"
            for column, n in self.unknown.items()
        ]
