"""The input schema of a model (io.preprocess.schema.Schema): fitted by train on the training rows,
saved with the weights, and read back for every later command.

train fits it on every table whose columns have names (a CSV with a header, Parquet, Arrow,
NDJSON, a table in memory), so that later commands find the features by name; a headerless CSV
keeps today's rule (columns by position), unless the spec asks for preprocessing that needs names.

Which columns are features: `--features` (or `features=`), else the spec's `features:`, else every
column but the target(s), the id and the spec's `exclude:`. Which are categories: those the spec's
`preprocess: {onehot: [...]}` names, or with `onehot: auto` (`categorical: auto`) every text column
(a CSV column with a cell that is neither a number nor missing; a typed table's text columns). The
transforms are fitted on the training rows only: with --val-split, the rows train keeps, drawn as
train draws them (same seed, same rule)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nncli.errors import NncliError, UsageError, printable

NEEDS_NAMES = "needs the columns' names"


def wanted(spec) -> bool:
    """Whether the spec asks for a fitted transform (which needs named columns)."""
    return bool(getattr(spec, "impute", None) or getattr(spec, "onehot", None) or getattr(spec, "target_scaling", None))


def target_names(spec, read) -> list[str]:
    from nncli.lib.checks import listed

    return [str(t).strip() for t in (listed(read.target) or (getattr(spec, "target", None) or []))]


def fit_schema(model, data, read, *, val_split: float | None = None, stratify: bool = False):
    """The schema fitted on DATA's training rows (features, imputation, categories; the target is
    added by `with_target` once the classes are known), or None where DATA's columns have no names
    and the spec asks for nothing that needs them."""
    from nncli.io.preprocess.schema import Schema

    spec = model.spec
    names = _column_names(data, read)
    if names is None:
        if wanted(spec) or getattr(spec, "features", None) or getattr(spec, "exclude", None):
            raise NncliError(
                f"the spec's data keys (features, exclude, preprocess) {NEEDS_NAMES}: DATA has no header",
                _name(data, read),
            )
        return None
    targets = target_names(spec, read)
    features = _features(spec, read, names, targets, read.id_column)
    _refuse_repeated(names, [*features, *targets], _name(data, read))
    auto = (getattr(spec, "onehot", None) or {}).get("columns") == "auto"
    # number columns are read as numbers (a cell that is not one is the reader's error, naming its
    # line), except with `onehot: auto`, where every feature is read as text to find the text columns
    listed_categories = [] if auto else _categories(spec, None, features)
    numbers = [] if auto else [f for f in features if f not in listed_categories]
    frame = _raw_frame(data, read, [*features, *targets], numbers, listed_categories)
    categories = _categories(spec, frame, features) if auto else listed_categories
    numbers = [f for f in features if f not in categories]
    keep = _training_rows(model, frame, targets, val_split, stratify)
    rows = frame if keep is None else frame[keep]
    onehot = dict(getattr(spec, "onehot", None) or {})
    onehot.pop("columns", None)
    impute = getattr(spec, "impute", None)
    schema = Schema.fit(rows, numbers, categories, impute=impute, onehot=onehot or None, source=_name(data, read))
    _check_inputs(schema, _name(data, read))
    return schema


def _refuse_repeated(names: list[str], used: list[str], source: str) -> None:
    """A column name the features or the target use must name one column (as forward refuses it)."""
    for name in dict.fromkeys(used):
        if names.count(name) > 1:
            raise NncliError(f"the column {printable(name)!r} appears {names.count(name)} times in the data", source)


def _check_inputs(schema, source: str) -> None:
    """The model's input columns: at least one, and each name once (a column named like another's
    one-hot column, `island_Biscoe` beside `island`, would be confused with it by name)."""
    names = schema.names
    if not names:
        raise NncliError(
            "no feature is left for the model: every feature column is excluded, or has no value in the "
            "training rows (imputation drops those)",
            source,
        )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise NncliError(
                f"the model's input {printable(name)!r} would come from two columns (a column of that name and a "
                "one-hot column of another, or a missing indicator): rename the column",
                source,
            )
        seen.add(name)


def with_target(schema, model, data, read, classes, *, val_split: float | None = None, stratify: bool = False):
    """The schema with its target: the class labels of a classifier, or the scaling of a number
    target fitted on the training rows (`preprocess: {target: standardize|minmax}`)."""
    import dataclasses

    from nncli.io.preprocess.schema import Target
    from nncli.io.preprocess.target import TargetScaler

    if schema is None:
        return None
    targets = target_names(model.spec, read)
    if len(targets) != 1:
        if getattr(model.spec, "target_scaling", None):
            raise UsageError("`preprocess: {target: ...}` scales one target column; name one")
        return schema
    name = targets[0]
    if classes is not None:
        return dataclasses.replace(schema, target=Target(name, "category", tuple(classes)))
    scaling = None
    kind = getattr(model.spec, "target_scaling", None)
    if kind:
        frame = _raw_frame(data, read, [name])
        keep = _training_rows(model, frame, [name], val_split, stratify)
        rows = frame if keep is None else frame[keep]
        from nncli.io.preprocess.missing import column_numbers

        y = column_numbers(rows.get_column(name), name, 0, _name(data, read))
        scaling = TargetScaler.fit(y, kind, name, _name(data, read))
    return dataclasses.replace(schema, target=Target(name, "number", None, scaling))


def checkpoint_schema(start: dict | None, where: str):
    """The schema a checkpoint was trained with (None: no checkpoint, or one written without)."""
    if not start or start.get("schema") is None:
        return None
    from nncli.io.preprocess.schema import Schema

    return Schema.from_json(start["schema"], where)


def _name(data, read) -> str:
    """DATA in messages: as given (a spooled copy of standard input by the name it was given)."""
    from nncli.io.frames import is_table

    if is_table(data):
        return "data"
    if read.label:
        return read.label
    return str(data[0] if isinstance(data, (list, tuple)) else data)


def _column_names(data, read) -> list[str] | None:
    """DATA's column names (the first file's), or None where they have none (a headerless CSV)."""
    from nncli.io.frames import as_polars, is_table
    from nncli.io.reading import expand_paths, open_table

    if is_table(data):
        return [str(c) for c in as_polars(data).columns]
    path = expand_paths(data)[0]
    table = open_table(path, read.options(path), read.label)
    try:
        return list(table.names) if table.names else None
    finally:
        table.close()


def _raw_frame(data, read, columns: Sequence[str], numbers: Sequence[str] = (), texts: Sequence[str] = ()):
    """DATA's `columns` as a polars DataFrame: `numbers` read as numbers (NaN where missing), `texts`
    as text (a category column of numbers, `Pclass`, as the predict-time reader gives it), the others
    as read (a CSV's cells as text; a typed table's columns as typed)."""
    import numpy as np
    import polars as pl

    from nncli.io.frames import as_polars, is_table
    from nncli.io.reading import expand_paths, open_table

    if is_table(data):
        frame = as_polars(data)
        frame = frame.rename({c: str(c) for c in frame.columns})
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise NncliError(f"no column {printable(missing[0])!r}", "data")
        return frame.select(list(columns))
    parts = []
    for path in expand_paths(data):
        table = open_table(path, read.options(path), read.label)
        try:
            for n in columns:
                if n not in table.index:
                    raise NncliError(f"no column {printable(n)!r}", table.name)
            typed = getattr(table, "types", None)
            is_number = set(numbers) | {
                n
                for n in columns
                if typed is not None
                and n not in texts
                and (typed[table.index[n]].is_numeric() or typed[table.index[n]] == pl.Boolean)
            }

            numeric = [table.index[n] for n in columns if n in is_number]
            text = [table.index[n] for n in columns if n not in is_number]
            blocks = list(table.read(numeric, text, missing=True))
            names = table.names
        finally:
            table.close()
        series = {}
        for j, i in enumerate(numeric):
            series[names[i]] = pl.Series(names[i], np.concatenate([b.values[:, j] for b in blocks]), pl.Float64)
        for j, i in enumerate(text):
            series[names[i]] = pl.Series(names[i], [c for b in blocks for c in b.texts[j]], pl.String)
        parts.append(pl.DataFrame([series[n] for n in columns]))
    return parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical_relaxed")


def _features(spec, read, names: list[str], targets: list[str], id_column: str | None) -> list[str]:
    from nncli.lib.checks import listed

    given = listed(read.features, "features") or getattr(spec, "features", None)
    exclude = set(getattr(spec, "exclude", None) or [])
    # `exclude:` leaves columns out where they are (an id a later table may lack); a target or id must be there
    targets = [_column_name(t, names, "target") for t in targets]
    if id_column:
        id_column = _column_name(id_column, names, "id column")
    if given:
        return [_column_name(str(g).strip(), names, "features") for g in given]
    taken = set(targets) | exclude | ({id_column} if id_column else set())
    return [n for n in names if n not in taken]


def _column_name(token: str, names: list[str], option: str) -> str:
    """A column by name, or by 0-based index (negative from the end) as the readers take one."""
    if token in names:
        return token
    if token.lstrip("+-").isdigit() and len(token) < 20 and -len(names) <= int(token) < len(names):
        return names[int(token)]
    raise NncliError(
        f"{option}: no column {printable(token)!r} (columns: {', '.join(map(printable, names[:20]))})", None
    )


def _categories(spec, frame, features: list[str]) -> list[str]:
    import polars as pl

    from nncli.io.preprocess.missing import missing_texts

    onehot = getattr(spec, "onehot", None) or {}
    columns = onehot.get("columns")
    if columns is None:
        return []
    if columns != "auto":
        odd = [c for c in columns if c not in features]
        if odd:
            raise NncliError(f"`preprocess: onehot` names {printable(odd[0])!r}, which is not a feature", spec.path)
        return list(columns)
    out = []
    for name in features:
        series = frame.get_column(name)
        if series.dtype != pl.String:
            continue
        parsed = series.str.strip_chars(" \t").cast(pl.Float64, strict=False)
        if bool((parsed.is_null() & ~missing_texts(series)).any()):
            out.append(name)  # a cell that is neither a number nor missing: a text column
    return out


def _training_rows(model, frame, targets: list[str], val_split: float | None, stratify: bool):
    """The row indices train keeps for training (None: all), drawn as train draws them."""
    if val_split is None:
        return None
    from nncli.core.training import stratified_split, validation_split

    seed = model.seed if model.seed is not None else (model.spec.seed if model.spec.seed is not None else 0)
    if not stratify:
        return validation_split(frame.height, val_split, seed)[0].numpy()
    return stratified_split(_labels(model, frame, targets), val_split, seed)[0].numpy()


def _labels(model, frame, targets: list[str]) -> Any:
    """Class labels as train's stratified split sees them: text labels as their index among the
    classes (the spec's, else sorted), numbers as class indices (argmax over several columns)."""
    import numpy as np
    import torch

    from nncli.io.labels import learn_classes
    from nncli.io.preprocess.missing import column_numbers

    if len(targets) == 1:
        cells = frame.get_column(targets[0]).cast(str).to_list()
        classes = model.spec.classes or learn_classes(cells)
        if classes is not None:
            index = {c: i for i, c in enumerate(classes)}
            return torch.tensor([index.get(c.strip(), -1) for c in cells])
    y = np.stack([column_numbers(frame.get_column(t), t) for t in targets], axis=1)
    if y.shape[1] > 1:
        return torch.from_numpy(y).argmax(dim=1)
    if np.all(y == np.round(y)):
        return torch.from_numpy(y[:, 0]).long()
    return torch.from_numpy(y[:, 0] >= 0.5).long()
