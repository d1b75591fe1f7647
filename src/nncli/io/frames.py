"""Data already in memory (a polars, pandas or pyarrow table, or a 2-D numpy array) as batches,
with the same interface and the same batching rule as a CSV file's `Dataset`.

Values become a row-major float64 array, then the model's dtype, exactly as a CSV's cells do, so a
frame and the same numbers in a file give the same bits (a column-major array would select other
kernels: `df.to_numpy()` of pandas often is one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.errors import NncliError, UsageError
from nncli.io.reading import Batch


def is_table(data) -> bool:
    """Whether `data` is in-memory rows rather than a path."""
    module = type(data).__module__.split(".")[0]
    return module in ("polars", "pandas", "pyarrow", "numpy")


def as_polars(data):
    """polars, pandas or pyarrow table, or a 2-D numpy array -> a polars DataFrame (numpy columns are
    named 0, 1, ...). What polars can't hold as one table (a Series, duplicate column names, a column
    of mixed Python objects, a datetime unit it lacks) is an NncliError naming the column."""
    import polars as pl

    module = type(data).__module__.split(".")[0]
    if module == "polars":
        if isinstance(data, pl.LazyFrame):
            return data.collect()
        if isinstance(data, pl.DataFrame):
            return data
    elif module == "pandas":
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            _check_unique([str(c) for c in data.columns])
            return _from_pandas(data)
    elif module == "pyarrow":
        import pyarrow as pa

        if isinstance(data, (pa.Table, pa.RecordBatch)):
            _check_unique(list(data.column_names))
            return pl.from_arrow(data)
    elif module == "numpy":
        return _from_numpy(data)
    raise NncliError(f"a {module} {type(data).__name__} is not a table of rows: pass a DataFrame (or a Table)", "data")


def _check_unique(names: list[str]) -> None:
    from nncli.io.reading import _not_unique

    seen: set = set()
    for name in names:  # polars holds one column per name: say which, where pandas or arrow allowed two
        if name in seen:
            raise NncliError(_not_unique(name, [i for i, n in enumerate(names) if n == name]), "data")
        seen.add(name)


def _from_pandas(frame):
    import polars as pl

    try:
        return pl.from_pandas(frame)
    except Exception as e:  # pyarrow can't type a column (ints and strings in one object column, ...)
        for name in frame.columns:
            try:
                pl.from_pandas(frame[[name]])
            except Exception:
                kinds = sorted({type(v).__name__ for v in frame[name]})
                raise NncliError(
                    f"column {str(name)!r} holds values of several types ({', '.join(kinds)}); "
                    "give it one type (numbers, or text)",
                    "data",
                ) from None
        raise NncliError(f"polars can't read the pandas DataFrame: {str(e).splitlines()[0][:200]}", "data") from None


def _from_numpy(data):
    import numpy as np
    import polars as pl

    if isinstance(data, np.ma.MaskedArray) and np.ma.getmaskarray(data).any():
        raise NncliError("the masked array has masked cells; fill them (array.filled(...)) or drop their rows", "data")
    array = np.asarray(data)
    if array.ndim != 2:
        raise NncliError(f"a numpy array of rows must be 2-D, got {array.ndim}-D", "data")
    if array.dtype.kind not in "biuf":  # text, objects, dates, complex numbers: nothing a model takes
        raise NncliError(f"a numpy array of {array.dtype} holds no numbers a model takes (integers or floats)", "data")
    return pl.DataFrame({str(i): array[:, i] for i in range(array.shape[1])})


def batch_bounds(n: int, rows: int | None, exact: bool = True) -> list[tuple[int, int]]:
    """(start, stop) of each batch: `rows` rows each, the last one the rest (the CSV reader's rule,
    DataLoader's drop_last=False; `exact` is accepted for old callers and changes nothing)."""
    if rows is None or n <= rows:
        return [(0, n)]
    return [(i, min(i + rows, n)) for i in range(0, n, rows)]


class FrameData:
    """A table in memory with its columns assigned to features, targets and an id. Its targets are
    read as a CSV's are: numbers, or (once `classes` is set, with one target column) text labels
    encoded as class indices."""

    name = "data"
    bytes_read = total_bytes = None

    def __init__(
        self,
        data,
        targets: Sequence[str] = (),
        features: Sequence[str] = (),
        id_column: str | None = None,
        want_targets: bool = False,
        schema=None,
        scale_target: bool = True,
        unused: Sequence[str] = (),
    ) -> None:
        import numpy as np

        frame = as_polars(data)
        if frame.height == 0:
            raise NncliError("the table has no rows", self.name)
        names = [str(c) for c in frame.columns]
        self.schema, self.scale_target = schema, scale_target
        if want_targets and not targets and schema is not None and schema.target is not None:
            targets = [schema.target.name]  # the column the model was trained to predict
        if want_targets and not targets:
            raise UsageError("this needs targets: target=COLUMN")
        self.target_cols = _unique([self._column(t, names, "target") for t in targets], "target")
        self.id_col = self._column(id_column, names, "id_column") if id_column is not None else None
        taken = set(self.target_cols) | ({self.id_col} if self.id_col is not None else set())
        if schema is not None:
            from nncli.io.encoding import match_columns

            # a table in memory is matched as a file with a header is: by name
            self.feature_cols = [f.name for f in schema.features]
            positions = match_columns(
                schema,
                _Names(names),
                [names.index(t) for t in self.target_cols],
                None if self.id_col is None else names.index(self.id_col),
                features,
                unused,
            )
            self._matched = positions.warnings
        elif features:
            self.feature_cols = _unique([self._column(f, names, "features") for f in features], "features")
            clash = [c for c in self.feature_cols if c in taken]
            if clash:
                raise UsageError(f"column {clash[0]!r} can't be both a feature and a target or the id")
        else:
            self.feature_cols = [n for n in names if n not in taken]
        self.warnings: list[str] = list(getattr(self, "_matched", []))
        self.classes: list[str] | None = None  # set (with one target column) to read text labels as class indices
        frame = frame.rename(dict(zip(frame.columns, names)))  # a copy's names: the caller's frame is left as it was
        if schema is not None:
            encoded = schema.encode(frame, 0, self.name)
            self.x = encoded.values
            self.warnings += [
                f"column {c!r}: {n} row{'s' if n > 1 else ''} with a category not seen in training "
                f"(encoded as all zeros) ({self.name})"
                for c, n in encoded.unknown.items()
            ]
        else:
            self.x = self._floats(frame, self.feature_cols, np)
        # the targets are converted when read (batches): how depends on `classes`, set after the model is built
        self._targets = frame.select(self.target_cols) if self.target_cols and want_targets else None
        self.ids = frame.get_column(self.id_col).cast(str).to_list() if self.id_col is not None else None

    @staticmethod
    def _column(token, names: list[str], option: str) -> str:
        token = str(token)
        if token in names:
            return token
        if token.lstrip("-").isdigit() and -len(names) <= int(token) < len(names):
            return names[int(token)]
        raise NncliError(f"{option} {token!r}: no such column (columns: {', '.join(names[:20])})", "data")

    def _floats(self, frame, columns: list[str], np):
        """The columns as one row-major float64 array, as the CSV reader gives them, writable (polars
        gives a read-only view of a single column's memory, and torch.from_numpy warns on those)."""
        import polars as pl

        schema = frame.schema  # built anew on every access: once, not once a column (2,000 columns took 13 s)
        for c in columns:
            if not schema[c].is_numeric():
                raise NncliError(_not_numbers(frame, c), self.name)
        if not columns:
            return np.zeros((frame.height, 0))
        values = frame.select([pl.col(c).cast(pl.Float64) for c in columns]).to_numpy()
        if np.isnan(values).any() and any(frame.get_column(c).null_count() for c in columns):
            bad = next(c for c in columns if frame.get_column(c).null_count())
            raise NncliError(f"column {bad!r} has an empty (null) cell", self.name)
        return np.require(
            values, np.float64, ["C_CONTIGUOUS", "WRITEABLE"]
        )  # copies only a read-only or column-major array

    def _texts(self, column: str) -> list[str]:
        import polars as pl

        if self._targets is None:  # opened without its targets (want_targets False): a caller's bug
            raise AssertionError("the table's targets were not kept")
        values = self._targets.get_column(column)
        if values.null_count():
            raise NncliError(f"column {column!r} has an empty (null) cell", self.name)
        return values.cast(pl.String).to_list()

    def target_texts(self) -> list[str]:
        """Every label of the (one) target column, as text: what train learns the classes from."""
        return self._texts(self.target_cols[0])

    def _target_values(self):
        """The targets as the loss takes them: text labels encoded with `classes` (as the CSV reader
        encodes them), else the columns as numbers."""
        import numpy as np

        if self._targets is None:
            return None
        if self.classes is not None and len(self.target_cols) == 1:
            from nncli.io.labels import encode

            return encode(self._texts(self.target_cols[0]), self.classes, 0, self.target_cols[0], self.name)
        return self._floats(self._targets, self.target_cols, np)

    @property
    def scaling(self):
        """A schema's target scaling, applied to number targets as they are batched (None without)."""
        target = self.schema.target if self.schema is not None else None
        return target.scaling if target is not None and self.scale_target else None

    @property
    def n_features(self) -> int:
        return self.x.shape[1]

    @property
    def feature_names(self) -> list[str]:
        return self.schema.names if self.schema is not None else list(self.feature_cols)

    @property
    def target_names(self) -> list[str]:
        return list(self.target_cols)

    @property
    def id_name(self) -> str | None:
        return self.id_col

    def batches(
        self, rows: int | None = DEFAULT_BATCH_ROWS, exact: bool = True, dtype: str | None = None
    ) -> Iterator[Batch]:
        from nncli.io.reading import features

        y = self._target_values()
        units = None
        if y is not None and self.scaling is not None and not (self.classes is not None and len(self.target_cols) == 1):
            y, units = self.scaling.transform(y, 0, self.name), y
        for start, stop in batch_bounds(len(self.x), rows, exact):
            yield Batch(
                features(self.x[start:stop], self.x.shape[1], dtype),
                None if y is None else y[start:stop],
                None if self.ids is None else self.ids[start:stop],
                start,
                y_units=None if units is None else units[start:stop],
            )

    def close(self) -> None:
        pass


@dataclass
class _Names:
    """A table in memory as io.encoding.match_columns sees a file: its name and columns."""

    names: list[str]
    name: str = "data"

    @property
    def ncols(self) -> int:
        return len(self.names)

    def column_label(self, index: int) -> str:
        return f"column {self.names[index]!r}"


def _unique(columns: list[str], option: str) -> list[str]:
    seen: set = set()
    for c in columns:
        if c in seen:
            raise UsageError(f"{option}: column {c!r} is named twice")
        seen.add(c)
    return columns


def _not_numbers(frame, column: str) -> str:
    """Why a column is not numbers; for text, its first word, as the CSV reader names a cell that is
    not a number (a classifier's target of words then gets the hint to name the classes)."""
    import polars as pl

    kind = frame.schema[column]
    if kind in (pl.String, pl.Categorical) or isinstance(kind, (pl.Categorical, pl.Enum)):
        values = frame.get_column(column).cast(pl.String)
        row = next((i for i, v in enumerate(values) if v is not None), None)
        if row is not None:
            return f"column {column!r} holds text: {values[row]!r} (row {row}) is not a number"
    return f"column {column!r} holds {kind}, not numbers"
