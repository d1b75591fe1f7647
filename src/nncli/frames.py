"""Data already in memory (a polars, pandas or pyarrow table, or a 2-D numpy array) as batches,
with the same interface and the same batching rule as a CSV file's `Dataset`.

Values become a row-major float64 array, then the model's dtype, exactly as a CSV's cells do, so a
frame and the same numbers in a file give the same bits (a column-major array would select other
kernels: `df.to_numpy()` of pandas often is one).
"""

from __future__ import annotations

from typing import Iterator

from nncli.data import DEFAULT_BATCH_ROWS, Batch
from nncli.errors import NncliError, UsageError


def is_table(data) -> bool:
    """Whether `data` is in-memory rows rather than a path."""
    module = type(data).__module__.split(".")[0]
    return module in ("polars", "pandas", "pyarrow", "numpy")


def as_polars(data):
    """polars, pandas, pyarrow or numpy -> a polars DataFrame (numpy columns are named 0, 1, ...)."""
    import polars as pl

    module = type(data).__module__.split(".")[0]
    if module == "polars":
        return data if isinstance(data, pl.DataFrame) else data.collect()
    if module == "pandas":
        return pl.from_pandas(data)
    if module == "pyarrow":
        return pl.from_arrow(data)
    import numpy as np

    array = np.asarray(data)
    if array.ndim != 2:
        raise NncliError(f"a numpy array of rows must be 2-D, got {array.ndim}-D", "data")
    return pl.DataFrame({str(i): array[:, i] for i in range(array.shape[1])})


def batch_bounds(n: int, rows: int | None, exact: bool = True) -> list[tuple[int, int]]:
    """(start, stop) of each batch: `rows` rows each, the last one the rest (the CSV reader's rule,
    DataLoader's drop_last=False; `exact` is accepted for old callers and changes nothing)."""
    if rows is None or n <= rows:
        return [(0, n)]
    return [(i, min(i + rows, n)) for i in range(0, n, rows)]


class FrameData:
    """A table in memory with its columns assigned to features, targets and an id."""

    name = "data"
    bytes_read = total_bytes = None

    def __init__(self, data, targets: list[str] = (), features: list[str] = (), id_column: str | None = None,
                 want_targets: bool = False) -> None:
        import numpy as np

        frame = as_polars(data)
        if frame.height == 0:
            raise NncliError("the table has no rows", self.name)
        names = [str(c) for c in frame.columns]
        frame.columns = names
        if want_targets and not targets:
            raise UsageError("this needs targets: target=COLUMN")
        self.target_cols = [self._column(t, names, "target") for t in targets]
        self.id_col = self._column(id_column, names, "id_column") if id_column is not None else None
        taken = set(self.target_cols) | ({self.id_col} if self.id_col is not None else set())
        self.feature_cols = [self._column(f, names, "features") for f in features] if features else [n for n in names if n not in taken]
        self.warnings: list[str] = []
        self.x = self._floats(frame, self.feature_cols, np)
        self.y = self._floats(frame, self.target_cols, np) if self.target_cols and want_targets else None
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
        """The columns as one row-major float64 array, as the CSV reader gives them."""
        import polars as pl

        for c in columns:
            if not frame.schema[c].is_numeric():
                raise NncliError(f"column {c!r} holds {frame.schema[c]}, not numbers", self.name)
        if not columns:
            return np.zeros((frame.height, 0))
        values = frame.select([pl.col(c).cast(pl.Float64) for c in columns]).to_numpy()
        if np.isnan(values).any() and any(frame.get_column(c).null_count() for c in columns):
            bad = next(c for c in columns if frame.get_column(c).null_count())
            raise NncliError(f"column {bad!r} has an empty (null) cell", self.name)
        return np.ascontiguousarray(values, dtype=np.float64)

    @property
    def n_features(self) -> int:
        return len(self.feature_cols)

    @property
    def feature_names(self) -> list[str]:
        return list(self.feature_cols)

    @property
    def target_names(self) -> list[str]:
        return list(self.target_cols)

    @property
    def id_name(self) -> str | None:
        return self.id_col

    def batches(self, rows: int | None = DEFAULT_BATCH_ROWS, exact: bool = True, dtype: str | None = None) -> Iterator[Batch]:
        from nncli.data import features

        for start, stop in batch_bounds(len(self.x), rows, exact):
            yield Batch(features(self.x[start:stop], self.x.shape[1], dtype), None if self.y is None else self.y[start:stop],
                        None if self.ids is None else self.ids[start:stop], start)

    def close(self) -> None:
        pass
