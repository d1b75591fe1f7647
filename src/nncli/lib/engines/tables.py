"""Tables in memory, a partition at a time: what the dask, Ray and Spark map functions share (the
columns read, the model prepared once on the driver, one pandas or arrow batch scored)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.errors import NncliError
from nncli.lib.engines.worker import Shipped, rebuild, ship


@dataclass
class TableOptions:
    """How a map function reads its batches: columns as FrameData takes them, and forward's options."""

    features: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    id_column: str | None = None
    threshold: float = 0.5
    batch_size: int | None = None

    def __post_init__(self) -> None:
        from nncli.core.forward import check_threshold

        self.threshold = check_threshold(self.threshold)  # on the driver, before a task is sent


def feature_columns(columns: list, options: TableOptions) -> list[str]:
    """The feature columns FrameData would take from a table with these columns."""
    names = [str(c) for c in columns]
    taken = {str(t) for t in options.targets} | ({str(options.id_column)} if options.id_column is not None else set())
    chosen = [str(f) for f in options.features] if options.features else [n for n in names if n not in taken]
    missing = [c for c in chosen + sorted(taken) if c not in names]
    if missing:
        raise NncliError(f"{missing[0]!r}: no such column (columns: {', '.join(names[:20])})", "data")
    return chosen


def prepared(model, columns: list, options: TableOptions, class_names: bool, where: str):
    """Build the model for a table's feature columns; (shipped, head) for the map function."""
    from nncli.core.forward import head_of
    from nncli.core.losses import spec_loss

    width = len(feature_columns(columns, options))
    built = model.build(width, where)
    model.check_preprocess()
    head = head_of(
        built.layers, width, spec_loss(model.spec.loss, model.spec.path), built.classes if class_names else None
    )
    return ship(model), head


def score_table(batch, shipped: Shipped, head, options: TableOptions):
    """A pandas (or polars, pyarrow) batch -> a polars DataFrame of forward's columns: nncli's FrameData
    (row-major float64, then the model's dtype: never `.to_numpy()` of a pandas frame, which is often
    column-major and changes last bits), nncli's batches within the batch, nncli's ForwardRun."""
    import polars as pl

    from nncli.io.frames import FrameData
    from nncli.lib.forwards import ForwardRun

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = rebuild(shipped)
        frame = FrameData(batch, list(options.targets), list(options.features), options.id_column)
        run = ForwardRun(built, head, frame, frame.batches(options.batch_size or DEFAULT_BATCH_ROWS), options.threshold)
        parts = [pl.DataFrame({n: c for n, c in zip(names, columns)}) for names, columns in run.frames()]
    return pl.concat(parts)


def score_pandas(batch, shipped: Shipped, head, options: TableOptions, meta=None):
    """score_table for a pandas batch, as pandas with the batch's index (an empty batch gives `meta`)."""
    if len(batch) == 0 and meta is not None:
        out = meta.iloc[:0].copy()
        out.index = batch.index[:0]
        return out
    out = score_table(batch, shipped, head, options).to_pandas()
    out.index = batch.index
    return out


def empty_output(shipped: Shipped, head, options: TableOptions, columns: list, dtypes: dict | None = None):
    """The output's columns and dtypes (an empty pandas frame): one row of zeros scored here."""
    import numpy as np
    import pandas as pd

    row = {}
    for c in columns:
        dtype = (dtypes or {}).get(c)
        numeric = dtype is None or pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
        row[str(c)] = np.zeros(1) if numeric else np.array(["0"], dtype=object)
    return score_pandas(pd.DataFrame(row), shipped, head, options).iloc[:0]
