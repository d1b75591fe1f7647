"""DATA (and an optional targets file) -> batches of feature, target and id columns.

Columns are chosen by name or 0-based index (negative from the end, as in Python). Batches
have a fixed number of rows and the last one the rest (PyTorch's DataLoader with
drop_last=False), whatever the block size the reader uses, so a result never depends on how
the file was read. Columns are looked up in dicts and sets and rows are regrouped
by offsets, so the cost grows linearly with the columns and the rows.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any

from nncli.constants import ALIGNMENT, DEFAULT_BATCH_ROWS
from nncli.errors import NncliError, UsageError
from nncli.io.csvread import CsvFile, display_name

if TYPE_CHECKING:
    from nncli.io.encoding import Encoder
    from nncli.io.tables import TableFile

_INDEX = re.compile(r"^[+-]?[0-9]+$")  # ASCII digits: \d would take `٣` as 3


@dataclass
class ReadOptions:
    """How to read one DATA file: the one home of the reading options (the CLI's READ group and the
    library's `Read` become one of these, see lib.session.Read.options). Built by keyword, `path` aside."""

    path: str
    _: KW_ONLY
    delimiter: str | None = None
    header: bool | None = None
    features: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    targets_file: str | None = None
    id_column: str | None = None
    label: str | None = None  # the name DATA goes by in messages, when `path` is a spooled copy
    targets_label: str | None = None  # the same for targets_file
    decimal_comma: bool = False  # `1,5` is 1.5 (European spreadsheets); the delimiter is then `;` or tab
    input_format: str | None = None  # csv, tsv, parquet, arrow, ndjson (+ .gz ...); default: the suffix
    schema: Any = None  # the model's input schema (io.preprocess.schema.Schema): columns by name, encoded (io.encoding)
    scale_target: bool = True  # with a schema that scales the target: read it scaled (False: in its units)
    unused: tuple = ()  # with a schema: columns left out without a notice (the spec's `exclude:`; "*": every one)
    spec_target: bool = False  # the targets are the spec's `target:`: a command that wants none reads DATA without them


@dataclass
class Batch:
    x: Any  # numpy float64 (rows, features)
    y: Any | None  # numpy float64 (rows, targets) or None
    ids: list[str] | None
    first_row: int  # 0-based index of the batch's first data row
    source: str | None = None  # the file it came from, when DATA is several files
    y_units: Any | None = None  # a target scaled for the loss (a schema's): the targets as read, for metrics

    def __len__(self) -> int:
        return len(self.x)


def expand_paths(data) -> list[str]:
    """DATA as a list of paths: several paths, or a quoted glob ('data/*.parquet') expanded and sorted;
    rows are read in the order of the sorted paths. `-` stands alone."""
    import glob

    given = [os.fspath(d) for d in data] if isinstance(data, (list, tuple)) else [os.fspath(data)]
    paths = []
    for path in given:
        if path != "-" and not os.path.exists(path) and any(c in path for c in "*?["):
            matched = sorted(glob.glob(path))
            if not matched:
                raise NncliError("no file matches this pattern", path)
            paths += matched
        else:
            paths.append(path)
    if len(paths) > 1:
        if "-" in paths:
            raise UsageError("standard input (-) can't be read with other files")
        paths = sorted(paths)
    return paths


class Many:
    """Several DATA files with the same columns, read one after the other (in sorted order), as one."""

    def __init__(self, sources: list) -> None:
        first = sources[0]
        for other in sources[1:]:
            if (
                other.feature_names != first.feature_names
                or other.target_names != first.target_names
                or other.id_name != first.id_name
            ):
                for s in sources:
                    s.close()
                raise NncliError(
                    f"the columns differ from {first.name}'s (features {', '.join(first.feature_names[:8])}"
                    f"{', ...' if len(first.feature_names) > 8 else ''})",
                    other.name,
                )
        self.sources = sources
        self.name = f"{first.name} and {len(sources) - 1} more"
        self.feature_names, self.target_names, self.id_name = first.feature_names, first.target_names, first.id_name
        self.n_features = first.n_features
        self.target_cols = first.target_cols

    @property
    def warnings(self) -> list[str]:
        return [w for s in self.sources for w in s.warnings]

    @property
    def bytes_read(self) -> int:
        return sum(s.bytes_read or 0 for s in self.sources)

    @property
    def total_bytes(self):
        sizes = [s.total_bytes for s in self.sources]
        return None if None in sizes else sum(sizes)

    @property
    def classes(self):
        return self.sources[0].classes

    @classes.setter
    def classes(self, value) -> None:
        for s in self.sources:
            s.classes = value

    def batches(
        self, rows: int | None = DEFAULT_BATCH_ROWS, exact: bool = True, dtype: str | None = None
    ) -> Iterator[Batch]:
        done = 0
        for s in self.sources:
            for batch in s.batches(rows, exact, dtype):
                yield Batch(batch.x, batch.y, batch.ids, done + batch.first_row, s.name, batch.y_units)
            done += batch.first_row + len(batch)

    def target_texts(self) -> list[str]:
        return [t for s in self.sources for t in s.target_texts()]

    def close(self) -> None:
        for s in self.sources:
            s.close()


def open_table(path: str, opts: ReadOptions, label: str | None, forced: bool = True):
    """A CSV (TSV, compressed) or a typed table file (Parquet, Arrow, NDJSON), by suffix or --input-format."""
    from nncli.io.tables import TABLE_FORMATS, TableFile, detect_format

    fmt, compression = detect_format(path, opts.input_format if forced else None)
    if fmt in TABLE_FORMATS:
        return TableFile(path, fmt, label, compression)
    delimiter = opts.delimiter or ("\t" if fmt == "tsv" else None)
    return CsvFile(path, delimiter, opts.header, label, opts.decimal_comma, compression)


def column_index(token: str, csv: CsvFile, option: str) -> int:
    """A column named by its header name or its 0-based index (negative from the end).

    A name given to several columns is refused: picking one of them silently could train on the
    wrong column.
    """
    token = token.strip()
    if csv.names and token in csv.index:
        if token in csv.duplicates:
            raise NncliError(
                f"{option} {token!r}: {_not_unique(token, csv.duplicates[token])}: name it by 0-based index", csv.name
            )
        return csv.index[token]
    if _INDEX.match(token):
        i = int(token) if len(token) <= 20 else csv.ncols  # int() of 10^4 digits raises; no file is that wide
        if -csv.ncols <= i < csv.ncols:
            return i % csv.ncols
        raise NncliError(
            f"{option} {token}: there is no column {token}; {csv.name} has {csv.ncols} columns (0 to {csv.ncols - 1})",
            csv.name,
        )
    if not csv.names:
        raise NncliError(f"{option} {token!r}: the file has no header; name columns by 0-based index", csv.name)
    import difflib

    close = difflib.get_close_matches(token, csv.names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    shown = ", ".join(csv.names[:20]) + (", ..." if len(csv.names) > 20 else "")
    raise NncliError(f"{option} {token!r}: no such column{hint} (columns: {shown})", csv.name)


class Dataset:
    """An open DATA file with its columns assigned to features, targets and an id."""

    def __init__(self, opts: ReadOptions, want_targets: bool = False) -> None:
        if opts.targets_file and opts.targets:
            raise UsageError("give target columns with --target or a file with --targets, not both")
        if opts.path == "-" and opts.targets_file == "-":
            raise UsageError("DATA and --targets can't both be standard input")
        if want_targets and not (opts.targets or opts.targets_file) and opts.schema is not None:
            if opts.schema.target is not None:  # the column the model was trained to predict
                opts = dataclasses.replace(opts, targets=[opts.schema.target.name])
        if want_targets and not (opts.targets or opts.targets_file):
            raise UsageError("this command needs targets: --target COLUMN (or --targets FILE)")
        self.csv = open_table(opts.path, opts, opts.label)
        if opts.spec_target and not want_targets and self.csv.names:  # forward: the spec's target may be absent
            opts = dataclasses.replace(opts, targets=[t for t in opts.targets if t.strip() in self.csv.index])
        self.name = self.csv.name
        self.classes: list[str] | None = None  # set (with one target column) to read text labels as class indices
        self.want_targets = want_targets  # forward names targets only to leave them out of the features
        self._warnings: list[str] = []
        self.targets_csv: CsvFile | TableFile | None = None
        self.encoder: Encoder | None = None
        try:
            self._assign_columns(opts, want_targets)
        except BaseException:
            self.close()
            raise

    def _assign_columns(self, opts: ReadOptions, want_targets: bool) -> None:
        csv = self.csv
        self.target_cols = _unique([column_index(t, csv, "--target") for t in opts.targets], csv, "--target")
        self.id_col = column_index(opts.id_column, csv, "--id-column") if opts.id_column else None
        taken = set(self.target_cols) | ({self.id_col} if self.id_col is not None else set())
        if opts.schema is not None:
            from nncli.io.encoding import Encoder, match_columns

            columns = match_columns(opts.schema, csv, self.target_cols, self.id_col, opts.features, opts.unused)
            self._warnings += columns.warnings
            self.encoder = Encoder(
                opts.schema,
                columns,
                csv.name,
                scale_target=opts.scale_target,
                target_names=self.names(self.target_cols, csv),
            )
            self.feature_cols = columns.numbers + columns.categories
        elif opts.features:
            self.feature_cols = _unique([column_index(f, csv, "--features") for f in opts.features], csv, "--features")
            clash = [c for c in self.feature_cols if c in taken]
            if clash:
                raise UsageError(f"{csv.column_label(clash[0])} can't be both a feature and a target or the id")
        else:
            self.feature_cols = [c for c in range(csv.ncols) if c not in taken]
        used = {t.strip() for t in [*opts.targets, *opts.features, opts.id_column or ""]}
        self._warn_duplicates(csv, used)
        if opts.targets_file and want_targets:
            self.targets_csv = open_table(opts.targets_file, opts, opts.targets_label, forced=False)
            self.target_cols = list(range(self.targets_csv.ncols))
            self._warn_duplicates(self.targets_csv, set())

    def _warn_duplicates(self, csv: CsvFile | TableFile, used: set[str]) -> None:
        """Names given to several columns, that no option names (those that one does are errors)."""
        for name, positions in csv.duplicates.items():
            if name not in used:
                self._warnings.append(f"{_not_unique(name, positions)} ({csv.name})")

    @property
    def warnings(self) -> list[str]:
        """What reading noticed but did not refuse, DATA's then the targets file's: the CLI shows them."""
        return self.csv.warnings + self._warnings + (self.targets_csv.warnings if self.targets_csv else [])

    @property
    def n_features(self) -> int:
        return self.encoder.schema.width if self.encoder is not None else len(self.feature_cols)

    def names(self, cols: list[int], csv: CsvFile | TableFile) -> list[str]:
        return [csv.names[c] if csv.names else str(c) for c in cols]

    @property
    def feature_names(self) -> list[str]:
        """The model's input columns: with a schema, the encoded ones (`island_Biscoe`, ...)."""
        return self.encoder.schema.names if self.encoder is not None else self.names(self.feature_cols, self.csv)

    @property
    def target_names(self) -> list[str]:
        return self.names(self.target_cols, self.targets_csv or self.csv)

    @property
    def id_name(self) -> str | None:
        if self.id_col is None:
            return None
        return self.csv.names[self.id_col] if self.csv.names else "id"

    @property
    def bytes_read(self) -> int:
        return self.csv.bytes_read

    @property
    def total_bytes(self) -> int | None:
        return self.csv.total_bytes

    def batches(
        self, rows: int | None = DEFAULT_BATCH_ROWS, exact: bool = True, dtype: str | None = None
    ) -> Iterator[Batch]:
        """Batches of `rows` rows, the last one shorter (DataLoader's drop_last=False); None: one batch.

        `dtype` ("float32", "float64"): the features come in the model's dtype, rounded from float64
        here (in the reader thread, off the model's path) exactly as torch's .to(dtype) rounds them."""
        import numpy as np

        from nncli.timing import phase, timed

        targets_csv = self.targets_csv
        in_targets_file = targets_csv is not None
        labelled = self.classes is not None  # one target column of text labels, encoded with the classes
        targets = self.target_cols if self.want_targets else []
        numeric = self.feature_cols + ([] if in_targets_file or labelled else targets)
        text = ([self.id_col] if self.id_col is not None else []) + (
            targets if labelled and not in_targets_file else []
        )
        nf = self.n_features
        if rows is None and not in_targets_file:
            yield self._whole(self._read(numeric, text), nf, bool(targets), labelled, dtype)
            return
        blocks = self._read(numeric, text)
        if len(numeric) == len(self.feature_cols) and dtype is not None:
            blocks = _converted(blocks, nf, dtype)  # no numeric targets: the features only, in dtype, from the start
        main = timed("convert", _rebatch(blocks, rows, exact))
        other = None
        targets_name = targets_csv.name if targets_csv is not None else None
        if targets_csv is not None:
            other = _rebatch(
                targets_csv.read([] if labelled else self.target_cols, self.target_cols if labelled else []),
                rows,
                exact,
            )
        done = 0
        for values, texts in main:
            if other is not None:
                target_values = next(other, None)
                if target_values is None or len(target_values[0]) != len(values):
                    got = done + (0 if target_values is None else len(target_values[0]))
                    raise NncliError(f"{self.name} has more rows than the targets file ({got})", targets_name)
                y = self._encode(target_values[1][0], done) if labelled else target_values[0]
            else:
                # a copy, not a view: a view would keep the whole parsed block alive while the batch waits
                y = (
                    (self._encode(texts[-1], done) if labelled else np.ascontiguousarray(values[:, nf:]))
                    if targets
                    else None
                )
            with phase("convert"):
                x = features(values, nf, dtype)
                y, units = self._scaled(y, done, labelled)
            yield Batch(x, y, texts[0] if self.id_col is not None else None, done, self.name, units)
            done += len(values)
        if other is not None and next(other, None) is not None:
            raise NncliError(f"the targets file has more rows than {self.name} ({done})", targets_name)

    def _read(self, numeric: list[int], text: list[int]):
        """The blocks of DATA: `numeric` (the features, then number targets) as values, `text` as texts;
        with a schema, the raw feature columns read and encoded (io.encoding), in the same shape."""
        if self.encoder is None:
            return self.csv.read(numeric, text)
        encoder = self.encoder
        raw_numbers, raw_texts = encoder.raw_columns(numeric[len(self.feature_cols) :], text)
        return self._warn_unknown(encoder.blocks(self.csv.read(raw_numbers, raw_texts, missing=True)))

    def _warn_unknown(self, blocks):
        """Once DATA is read: rows with categories unseen in training, counted per column, as warnings."""
        import warnings

        from nncli.errors import NncliWarning

        yield from blocks
        if self.encoder is not None:
            for message in self.encoder.unknown_warnings():
                warnings.warn(message, NncliWarning, stacklevel=2)

    def _whole(self, blocks, nf: int, targets: bool, labelled: bool, dtype: str | None) -> Batch:
        """Every row as one batch (train's load): each block's features are converted as it comes and
        its float64 rows let go, then the pieces are joined once; the same values as batches of the
        joined rows, without a float64 copy of the whole file (1M x 33: 264 MB, and its page faults)."""
        import numpy as np

        from nncli.timing import phase, timed

        xs, ys, ids, done = [], [], [], 0
        for block in timed("convert", blocks):
            with phase("convert"):
                xs.append(features(block.values, nf, dtype))
                if targets:
                    ys.append(
                        self._encode(block.texts[-1], done) if labelled else np.ascontiguousarray(block.values[:, nf:])
                    )
                if self.id_col is not None:
                    ids.extend(block.texts[0])
                done += len(block.values)
        with phase("convert"):
            x = _joined(xs)
            y, units = self._scaled(_joined(ys) if targets else None, 0, labelled)
        return Batch(x, y, ids if self.id_col is not None else None, 0, self.name, units)

    def _scaled(self, y, first_row: int, labelled: bool):
        """(targets as the loss takes them, targets as read or None): a schema's target scaling applied."""
        scaling = self.encoder.scaling if self.encoder is not None else None
        if y is None or labelled or scaling is None:
            return y, None
        return scaling.transform(y, first_row, self.name), y

    def _encode(self, labels: list[str], first_row: int):
        from nncli.io.labels import encode

        if self.classes is None:  # only labelled reading encodes (batches' `labelled`)
            raise AssertionError("labels encoded without classes")
        return encode(labels, self.classes, first_row, self.target_names[0], self.name)

    def target_texts(self) -> list[str]:
        """Every label of the (one) target column, as text: what train learns the classes from."""
        source, col = (self.targets_csv, 0) if self.targets_csv is not None else (self.csv, self.target_cols[0])
        return [t for block in source.read([], [col]) for t in block.texts[0]]

    def close(self) -> None:
        self.csv.close()
        if self.targets_csv:
            self.targets_csv.close()


def features(values, n: int, dtype: str | None):
    """The first `n` columns, row-major (as torch.tensor(rows) is: the same kernels, the same bits),
    in `dtype`: float64 -> float32 rounds to nearest, ties to even, as torch's .to(float32) does;
    a finite value beyond float32's range becomes inf there as well (no numpy warning)."""
    import numpy as np

    if dtype is None or values.dtype == np.dtype(dtype):
        return np.ascontiguousarray(values[:, :n])
    out = aligned_empty((len(values), n), dtype)  # where torch.tensor's rows would start (forward.to_tensor)
    with np.errstate(over="ignore"):
        np.copyto(out, values[:, :n], casting="unsafe")  # astype's rounding, into that memory
    return out


def aligned_empty(shape: tuple, dtype):
    """An uninitialised C-ordered array starting on 64 bytes, as torch's allocator starts a tensor."""
    import numpy as np

    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def _converted(blocks, n: int, dtype: str):
    """Each block's values in the model's dtype as it is parsed, so that rows waiting to be batched
    take half the memory (float32) and no float64 batch is joined: the same numbers, converted
    element by element either way."""
    from nncli.io.cells import Block
    from nncli.timing import phase

    for block in blocks:
        with phase("convert"):
            values = features(block.values, n, dtype)
        yield Block(values, block.texts, block.first_row)


def _not_unique(name: str, positions: list[int]) -> str:
    shown = [str(p) for p in positions[:5]] + ([f"{len(positions) - 5} more"] if len(positions) > 5 else [])
    listed = ", ".join(shown[:-1]) + " and " + shown[-1]
    return f"column name {name!r} is not unique (columns {listed})"


def _unique(cols: list[int], csv: CsvFile, option: str) -> list[int]:
    seen = set()
    for c in cols:
        if c in seen:
            raise UsageError(f"{option}: {csv.column_label(c)} is named twice")
        seen.add(c)
    return cols


def _rebatch(blocks, rows: int | None, exact: bool = True):
    """Regroup parsed blocks into (values, texts) of `rows` rows, the last one shorter if the rows
    don't divide: PyTorch's `DataLoader(batch_size=rows, drop_last=False)` rule, the batches a
    hand-written loop makes. None: a single group. (`exact` is accepted for old callers; the rule
    is the same either way: a remainder that joined the last batch was a batch no loop makes.)
    Blocks wait in a queue with an offset into the first one: each row is copied once into its
    batch, however small the batches (slicing off the rest of a block for each batch of one row
    made `-b 1` quadratic).
    """
    from collections import deque

    pending: deque = deque()  # [values, texts, offset] of blocks not yet wholly batched
    held = 0

    def take(n: int):
        nonlocal held
        values, texts = [], None
        while n:
            entry = pending[0]
            block_values, block_texts, offset = entry
            k = min(n, len(block_values) - offset)
            values.append(block_values[offset : offset + k])
            pieces = [t[offset : offset + k] for t in block_texts]
            if texts is None:
                texts = pieces
            else:
                for out, piece in zip(texts, pieces):
                    out.extend(piece)
            if offset + k == len(block_values):
                pending.popleft()
            else:
                entry[2] = offset + k
            n -= k
            held -= k
        return _joined(values), texts

    for block in blocks:
        if not len(block.values):
            continue
        pending.append([block.values, block.texts, 0])
        held += len(block.values)
        while rows is not None and held >= rows:
            yield take(rows)
    if held:
        yield take(held)


def _joined(parts: list):
    """The parts one after the other: a new array on 64 bytes (see aligned_empty), or the only part."""
    import numpy as np

    if len(parts) == 1:
        return parts[0]
    out = aligned_empty((sum(len(p) for p in parts), *parts[0].shape[1:]), parts[0].dtype)
    return np.concatenate(parts, out=out)


# What the reader may parse ahead of the model, in bytes of features: it fills this while torch
# imports (~1 s), so the model starts on parsed rows. Measured on 2 cores (1M rows x 32 columns):
# no read-ahead 2.56 s, 32 MiB 2.34 s, 64 MiB 2.37 s and 40 MiB more peak memory; the reader,
# sharing the GIL with the import, parses about 300,000 rows by then. 24 MiB keeps the peak under
# 400 MiB with --precision's decimals too.
READ_AHEAD_BYTES = 24 << 20


def batches_ahead(rows: int | None, width: int, dtype: str | None) -> int:
    """How many batches of `rows` x `width` features make READ_AHEAD_BYTES (at least 2)."""
    if rows is None:
        return 2
    # at most MAX_BATCHES_AHEAD: a batch of one row costs ~640 bytes of objects beside its numbers
    return min(MAX_BATCHES_AHEAD, max(2, READ_AHEAD_BYTES // (rows * max(width, 1) * (4 if dtype == "float32" else 8))))


MAX_BATCHES_AHEAD = 256


def prefetched(items, depth: int = 2):
    """Produce items in a background thread, up to `depth` ahead, so that parsing the next block
    (polars releases the GIL) overlaps the model and the writer working on this one."""
    import queue
    import threading

    import numpy  # noqa: F401  imported here, not in the thread: two threads importing one module can stall
    import polars  # noqa: F401

    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(entry) -> bool:
        """Queue an entry, waiting while the queue is full; False once the consumer has gone."""
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    return
            offer((done, None))
        except BaseException as e:  # handed to the consumer, which raises it in the main thread
            offer((done, e))

    def consume():
        from nncli.timing import phase

        try:
            while True:
                with phase("wait for data"):
                    item, error = _get(slots)
                if error is not None:
                    raise error
                if item is done:
                    return
                yield item
        finally:
            stop.set()

    threading.Thread(target=produce, name="nncli-reader", daemon=True).start()  # starts reading now
    return ThreadReader(consume(), stop)


def _get(slots):
    """The next entry, waited for in short steps: an untimed wait never woke for Ctrl-C once polars
    (imported above) had installed its SIGINT handler, which has SA_RESTART (as export.run_session)."""
    import queue

    while True:
        try:
            return slots.get(timeout=0.05)
        except queue.Empty:
            continue


class ThreadReader:
    """prefetched()'s batches (the reader thread; readers.ProcessReader is the other): iterate them;
    close() lets the reader thread go even if iteration never started (a build that fails after
    reading began), with what it had parsed."""

    def __init__(self, batches, stop) -> None:
        self._batches, self._stop = batches, stop

    def __iter__(self):
        return self._batches

    def __next__(self):
        return next(self._batches)

    def close(self) -> None:
        self._stop.set()
        self._batches.close()


def is_pipe(path: str) -> bool:
    """Whether `path` is a FIFO or a socket (a named pipe, or `<(...)`'s /dev/fd/N): bytes that can be
    read once. A character device is not: it may never end (/dev/zero), and nothing copies it."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def spooled(opts: ReadOptions, stack) -> ReadOptions:
    """DATA that can be read twice: standard input, or a pipe given by name (a FIFO, `<(...)`), is
    copied to a temporary file (removed on exit). A second open of a FIFO whose writer has finished
    would wait for another writer for ever."""
    import dataclasses
    import shutil
    import sys

    from nncli.io.output import scratch_file

    if opts.path == "-":
        if sys.stdin is None:  # fd 0 was closed when Python started (`nncli ... - <&-`)
            raise NncliError("standard input is closed", "<stdin>")
        source, label = sys.stdin.buffer, "<stdin>"
    elif is_pipe(opts.path):
        try:
            source = stack.enter_context(open(opts.path, "rb"))
        except OSError as e:
            raise NncliError(f"cannot read: {e.strerror}", opts.path) from None
        label = opts.label or opts.path
    else:
        return opts
    # Named like nncli's other temporary files (with the PID), so one left by a SIGKILLed run is
    # found by `nncli clean`; removed on exit and on every terminating signal.
    copy, path = stack.enter_context(scratch_file(None, "stdin.csv"))
    shutil.copyfileobj(source, copy, 1 << 20)
    copy.flush()
    return dataclasses.replace(opts, path=path, label=label)


__all__ = ["Batch", "ReadOptions", "Dataset", "column_index", "display_name"]
