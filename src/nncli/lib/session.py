"""Opening DATA: `Read` (how to read it), `open_data` (a path, paths or a table -> a source), and
`open_built` (DATA opened, reading started, then the model built for its width)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from nncli.constants import DEFAULT_BATCH_ROWS
from nncli.core.backprop import needs_one_batch
from nncli.core.forward import head_of
from nncli.core.losses import choose_loss
from nncli.errors import NncliError, NncliWarning, UsageError
from nncli.io.context import LIBRARY, RunContext
from nncli.io.frames import FrameData, is_table
from nncli.io.reading import Dataset, Many, ReadOptions, batches_ahead, is_pipe, spooled
from nncli.lib.checks import listed


@dataclass
class Read:
    """How to read DATA: columns, and for CSV the delimiter, header and decimal comma."""

    target: Any = None
    targets_file: str | None = None
    features: Any = None
    id_column: str | None = None
    delimiter: str | None = None
    header: bool | None = None
    decimal_comma: bool = False
    label: str | None = None  # the name DATA goes by in messages, when it is a spooled copy of standard input
    targets_label: str | None = None  # the same for the --targets file
    input_format: str | None = None  # csv, tsv, parquet, arrow, ndjson (+ .gz, .bz2, .xz, .zst); default: the suffix
    schema: Any = None  # the model's input schema (set by open_built and train, not by callers)
    unused: tuple = ()  # columns a schema's reading leaves out without a notice (the spec's `exclude:`); "*": all
    spec_target: bool = False  # `target` is the spec's `target:`: where a command needs no targets, it may be absent
    scale_target: bool = True  # with a schema that scales the target: read it scaled (evaluate: False)

    def __post_init__(self) -> None:
        from nncli.io.columns import split_columns

        # a text is a comma list ("a,b": two columns; '"a,b"': one), a list is taken item by item as given
        if isinstance(self.features, str):
            self.features = split_columns(self.features, "features")
        if isinstance(self.target, str):
            self.target = split_columns(self.target, "target")

    def options(self, path: str) -> ReadOptions:
        """How io reads DATA file `path` with these options."""
        return ReadOptions(
            path,
            delimiter=self.delimiter,
            header=self.header,
            features=listed(self.features, "features"),
            targets=listed(self.target),
            targets_file=self.targets_file,
            id_column=self.id_column,
            label=self.label,
            targets_label=self.targets_label,
            decimal_comma=self.decimal_comma,
            input_format=self.input_format,
            schema=self.schema,
            scale_target=self.scale_target,
            unused=tuple(self.unused),
            spec_target=self.spec_target,
        )


def open_data(data, read: Read, want_targets: bool = False):
    """A path (or "-") -> a streaming Dataset; a table in memory -> FrameData. Warnings are issued."""
    source: FrameData | Dataset | Many
    if is_table(data):
        if read.targets_file:
            raise UsageError("targets_file is for CSV files; pass the targets as a column of the table")
        targets = listed(read.target)
        if read.spec_target and not want_targets:  # the spec's target may be absent where none is needed
            from nncli.io.frames import as_polars

            names = {str(c) for c in as_polars(data).columns}
            targets = [t for t in targets if t in names]
        source = FrameData(
            data,
            targets,
            listed(read.features, "features"),
            read.id_column,
            want_targets,
            schema=read.schema,
            scale_target=read.scale_target,
            unused=tuple(read.unused),
        )
    else:
        from nncli.io.reading import expand_paths

        paths = expand_paths(data)
        if len(paths) > 1 and read.targets_file:
            raise UsageError("--targets FILE goes with one DATA file; with several, name the target columns (--target)")
        sources = []
        try:
            for path in paths:
                sources.append(Dataset(read.options(path), want_targets))
        except BaseException:
            for s in sources:
                s.close()
            raise
        source = sources[0] if len(sources) == 1 else Many(sources)
    for message in getattr(source, "warnings", []):
        warnings.warn(message, NncliWarning, stacklevel=3)
    return source


def reading_files(source) -> list:
    """The open files under a Dataset (or Many), whose bytes_read a progress bar follows."""
    return [s.csv for s in getattr(source, "sources", [source])]


def rows_per_batch(built, train: bool, batch_size: int | None) -> int | None:
    """The one batching rule of loss, grads, step and evaluate: `batch_size` rows (default 16384), or
    every row in one batch where train-mode BatchNorm or Dropout needs the whole batch. Data that fits
    one batch is computed exactly as PyTorch computes it on the whole tensor."""
    return None if needs_one_batch(built, train) else (batch_size or DEFAULT_BATCH_ROWS)


def use_labels(built, source, choice) -> None:
    """Read one target column of a classifier as text labels, encoded with the model's classes."""
    from nncli.core.losses import BINARY, CLASS

    if (
        built.classes is not None
        and choice.family in (CLASS, BINARY)
        and len(source.target_names) == 1
        and hasattr(source, "classes")
    ):
        source.classes = built.classes


def with_label_hint(error: NncliError, source, choice) -> NncliError:
    """A target column of words read as numbers: say where the classes come from."""
    from nncli.core.losses import BINARY, CLASS

    if (
        choice.family in (CLASS, BINARY)
        and "is not a number" in error.what
        and any(repr(n) in error.what for n in source.target_names)
    ):
        error.what += (
            " (text class labels need the classes: `classes: [...]` in the spec, or weights trained on these labels)"
        )
        error.args = (error.message,)
    return error


def spooled_path(data, read: Read, stack):
    """(DATA, Read) that can be read again: standard input, or a pipe given by name (a FIFO,
    `<(...)`), copied to a temporary file (removed on exit), for DATA and for the --targets file.
    Messages still name them as given, and DATA's format is still the one its name says
    (`data.csv.gz` through a FIFO is gzip). The caller's Read is left as it was."""
    import dataclasses

    if isinstance(data, (list, tuple)):
        if len(data) != 1:
            return data, read
        data = data[0]
    path = os.fspath(data)
    if read.targets_file is not None and (read.targets_file == "-" or is_pipe(read.targets_file)):
        if path == "-" and read.targets_file == "-":
            raise UsageError("DATA and --targets can't both be standard input")
        copy = spooled(ReadOptions(read.targets_file), stack)
        read = dataclasses.replace(read, targets_file=copy.path, targets_label=copy.label)
    if path != "-" and not is_pipe(path):
        return data, read
    copy = spooled(ReadOptions(path, label=read.label), stack)
    read = dataclasses.replace(read, label=copy.label)
    if path != "-" and read.input_format is None:
        from nncli.io.tables import detect_format

        fmt, compression = detect_format(path)
        read = dataclasses.replace(read, input_format=f"{fmt}.{compression}" if compression else fmt)
    return copy.path, read


def target_hint(error: NncliError, read: Read) -> str:
    """One more column than the model takes, and no target: the label is probably being read as a feature."""
    import re

    found = re.match(r"the model expects (\d+) features; .* has (\d+)$", error.what)
    if found and int(found[2]) > int(found[1]) and not (read.target or read.targets_file or read.features):
        return " (is a target column among them? name it with --target, or choose features with --features)"
    return ""


@dataclass
class Labelled:
    """What use_labels looks at, before a model is built (its classes) or after (a source's target
    names, whose classes use_labels may set): a stand-in for the built model or the source."""

    classes: list[str] | None = None
    target_names: list[str] = field(default_factory=list)


class Opened(NamedTuple):
    built: Any  # nncli.core.model.Model
    source: Any  # the open DATA
    batches: Any  # its batches (being read), or None where `read_rows` was False


def _reader(source, dtype: str, context: RunContext = LIBRARY) -> Callable[[int | None], Any]:
    """read_ahead(rows): the source's batches being read in the background: in a child process where
    fork is there (parsing on its own core while torch imports), else in a thread (io.readers.start_reading)."""

    def read_ahead(wanted):
        from nncli.io.readers import start_reading

        # a --targets file is read by the child too: put back with DATA if the child fails at its start
        targets = [
            t for s in getattr(source, "sources", [source]) if (t := getattr(s, "targets_csv", None)) is not None
        ]
        return start_reading(
            lambda: source.batches(wanted, dtype=dtype),
            reading_files(source),
            depth=batches_ahead(wanted, source.n_features, dtype),
            context=context,
            rewind=reading_files(source) + targets,
        )

    return read_ahead


def open_built(
    model,
    data,
    read: Read,
    *,
    want_targets: bool,
    rows: int | None = None,
    rows_for: Callable[[Any], int | None] | None = None,
    read_rows: bool = True,
    prepare: Callable[[Any, Any], None] | None = None,
    plan: Callable[[Any], int | None] | None = None,
    training: bool = False,
) -> Opened:
    """Open DATA first (its width fixes inferred sizes), start reading it, then build the model
    (a Model: its `dtype`, `build_for` and `check_preprocess` are used).

    Batches hold `rows` rows (None: every row in one batch), or as many as `rows_for(built)` says once
    the model is built. With `rows` known, reading starts in the background before the model is built,
    so parsing overlaps torch's import. `read_rows=False` opens DATA to size the model and reads nothing
    (train). `plan(source)`, if given, may set the source up without the model and return the rows per
    batch to start reading at once. `prepare(built, source)` runs after the build (it may set labels).
    `training`: the preprocessing statistics are about to be fitted, so none are required yet."""
    read = with_schema(model, read)
    source = open_data(data, read, want_targets)
    dtype = model.dtype
    read_ahead = _reader(source, dtype, getattr(model, "context", LIBRARY))

    ahead = rows if read_rows and rows_for is None and rows is not None else None
    planned: dict = {}
    if plan is not None and not is_table(data):
        try:
            wanted = plan(source)
        except BaseException:
            source.close()
            raise
        if wanted is not None:
            planned = {"rows": wanted, "classes": getattr(source, "classes", None)}
            ahead = wanted
    batches = read_ahead(ahead) if ahead is not None and not is_table(data) else None
    try:
        built = model.build_for(source, read)
        if not training:
            try:
                model.check_preprocess()
            except NncliError:
                source.close()
                raise
        warn_positional(model, built, read, source)
        if prepare is not None:
            prepare(built, source)
    except BaseException:
        if batches is not None:
            batches.close()  # the reader thread stops, and lets go of what it parsed
        raise
    if planned and getattr(source, "classes", None) != planned["classes"]:
        raise AssertionError("reading started with other classes than the model's")  # plan() mirrors build(): a bug
    if batches is None and read_rows:
        wanted = rows_for(built) if rows_for is not None else rows
        batches = source.batches(wanted, dtype=dtype) if is_table(data) else read_ahead(wanted)
    return Opened(built, source, batches)


def with_schema(model, read: Read) -> Read:
    """`read` with the model's input schema (saved with its weights, or fitted by train), if it has one,
    and the spec's `target:` and `features:` where the caller names none."""
    import dataclasses

    spec = getattr(model, "spec", None)
    schema = getattr(model, "schema", None) if read.schema is None else read.schema
    # a schema names its own target (read where a command wants targets, by name, header or not)
    if spec is not None and not (read.target or read.targets_file) and getattr(spec, "target", None):
        if schema is None or schema.target is None:
            read = dataclasses.replace(read, target=list(spec.target), spec_target=True)
    if spec is not None and not read.features and getattr(spec, "features", None) and read.schema is None:
        read = dataclasses.replace(read, features=list(spec.features))
    if spec is not None and getattr(spec, "exclude", None) and not read.unused:
        read = dataclasses.replace(read, unused=tuple(spec.exclude))
    return read if schema is None or read.schema is not None else dataclasses.replace(read, schema=schema)


def warn_positional(model, built, read: Read, source) -> None:
    """A .safetensors written before nncli saved an input schema (or not by nncli) reads a table with a
    header by position, as it always did: say so once, since a reordered table would give other numbers."""
    weights = getattr(model, "weights", None)
    if read.schema is not None or not weights or getattr(built, "schema", "") is not None:
        return
    if not str(weights).lower().endswith(".safetensors"):
        return  # a .pt from nncli holds no marker where no schema is known: it cannot be told from an older one
    names = getattr(getattr(source, "csv", None), "names", None) if not is_table(source) else True
    if isinstance(source, FrameData) or names:
        warnings.warn(
            f"the weights carry no input schema (written by an older nncli, or not by nncli): {source.name}'s "
            "columns are taken by position, not by name",
            NncliWarning,
            stacklevel=4,
        )


def labels_before_build(model, source, loss: str | None, classes=None) -> bool:
    """Set the source up to read its targets as the built model will (text labels encoded with
    its classes, or numbers) without building it, so reading can start while torch imports.
    The classes come from the spec, the weights file's header or `classes`; False where only
    the build can tell (a .pt file, a spec the build will refuse)."""
    from nncli.core.model import UNKNOWN, saved_classes
    from nncli.core.spec import resolve

    if model.built is not None:
        return False
    saved = saved_classes(model.weights) if model.weights else None
    if saved is UNKNOWN:
        return False
    try:
        layers = resolve(model.spec, model.inputs or model.spec.inputs or source.n_features, source.name)
    except NncliError:
        return False  # the build names the problem
    head = head_of(layers, source.n_features)
    known = Labelled(saved if saved is not None else (model.spec.classes or classes))
    use_labels(known, source, choose_loss(loss, model.spec.loss, model.spec.path, head))
    return True
