"""Tables in memory, a partition at a time: what the dask, Ray and Spark map functions share (the
columns read, the model prepared once on the driver, one pandas or arrow batch scored).

A model with an input schema (issue #26) reads each batch as `model.forward(batch)` does: the
spec's target and features where the caller names none, the schema's columns found by name and
encoded (text categories, missing cells imputed), outputs of a scaled target in its units. The
warnings a batch's reading would give (a category unseen in training) are not issued: a map
function runs where no one sees them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.errors import NncliError
from nncli.lib.engines.worker import Shipped, rebuild, schema_of, ship


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


def table_options(
    model, target, features, id_column, threshold: float = 0.5, batch_size: int | None = None
) -> TableOptions:
    """The map functions' options, with the spec's `target:` and `features:` where none are given,
    as `model.forward(batch)` reads a table (lib.session.with_schema)."""
    from nncli.io.columns import column_list  # "a,b" is two columns, as everywhere in nncli
    from nncli.lib.session import Read, with_schema

    given = Read(target=column_list(target) or None, features=column_list(features) or None)
    read = with_schema(model, given)
    return TableOptions(list(read.features or []), list(read.target or []), id_column, threshold, batch_size)


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

    schema = getattr(model, "schema", None)
    if schema is None:
        width = len(feature_columns(columns, options))
    else:
        # the schema's features by name (extra columns left out), then the targets and the id there too
        schema.match([str(c) for c in columns], where)
        feature_columns(columns, TableOptions([f.name for f in schema.features], options.targets, options.id_column))
        width = schema.width
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
    from nncli.lib.model import target_scaling

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = rebuild(shipped)
        schema = schema_of(shipped)
        frame = FrameData(batch, list(options.targets), list(options.features), options.id_column, schema=schema)
        run = ForwardRun(built, head, frame, frame.batches(options.batch_size or DEFAULT_BATCH_ROWS), options.threshold)
        run.scaling = target_scaling(schema, head)  # outputs in the target's units, as model.forward gives them
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
    row.update(_schema_row(schema_of(shipped)))
    return score_pandas(pd.DataFrame(row), shipped, head, options).iloc[:0]


def _schema_row(schema) -> dict:
    """One row the schema encodes whatever the table's types (Ray and Spark give none): 0 for each
    number feature, a category seen in training for each category feature (a text; a zero was refused
    as a float, an unseen text refused under `handle_unknown: error`)."""
    import numpy as np

    if schema is None:
        return {}
    row = {name: np.zeros(1) for name in schema.numbers}
    if schema.onehot is not None:
        for name, categories in zip(schema.onehot.columns, schema.onehot.categories):
            seen = next((c for c in categories if c is not None), "0")
            row[name] = np.array([str(seen)], dtype=object)
    return row
