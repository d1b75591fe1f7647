"""Results -> Rich tables for people; CSV, TSV, JSON and JSON Lines for programs.

Floats are printed as the shortest text that reads back as the same value of their dtype (a
float32 0.4647 prints as 0.4647), unless --precision asks for fixed decimals. CSV and JSON never
pass through Rich, which would shrink or cut cells to fit 80 columns.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import BinaryIO

from nncli.io.texts import jsonable, number_texts  # noqa: F401  (re-exported: one home, in texts.py)


class OutputFormat(StrEnum):
    """What --format accepts (and an -o suffix resolves to): a str, so writers compare it as text."""

    table = "table"
    csv = "csv"
    tsv = "tsv"
    json = "json"
    jsonl = "jsonl"
    parquet = "parquet"
    arrow = "arrow"


FORMATS = tuple(OutputFormat)
BINARY_FORMATS = (OutputFormat.parquet, OutputFormat.arrow)
TABLE_PRECISION = 4
WIDE = 256  # columns beyond which CSV is written without polars


def console(stream=None, stderr: bool = False):
    """A Rich console made on demand, so COLUMNS, NO_COLOR and test runners' streams take effect."""
    from rich.console import Console

    if stderr:
        return Console(stderr=True, highlight=False, **_ascii_if_needed(sys.stderr))
    if stream is None or stream is sys.stdout.buffer:
        return Console(file=sys.stdout, highlight=False, **_ascii_if_needed(sys.stdout))
    return Console(file=stream, highlight=False, width=_columns(), force_terminal=False)


def _columns() -> int:
    """The width for a table written to a file: COLUMNS if it is a number, else 120."""
    value = os.environ.get("COLUMNS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 120


_ASCII = str.maketrans(
    {
        "↓": "v",
        "→": "->",
        "●": "*",
        "○": "o",
        "┤": "|",
        "└": "+",
        "─": "-",
        "…": "...",
        "–": "-",
        "·": "|",
        "²": "2",
        "←": "<-",
        "█": "#",
        "│": "|",
    }
)


def encodable(text: str, encoding: str | None) -> str:
    """Text the stream's encoding can hold: under PYTHONIOENCODING=ascii or latin-1 the symbols nncli
    draws with become ASCII, and anything else a user wrote becomes `?`, never a UnicodeEncodeError."""
    encoding = encoding or "utf-8"
    if encoding.lower().replace("_", "-").startswith("utf"):
        return text
    try:
        text.encode(encoding)
        return text
    except (UnicodeEncodeError, LookupError):
        text = text.translate(_ASCII)
        try:
            return text.encode(encoding, "replace").decode(encoding)
        except LookupError:
            return text.encode("ascii", "replace").decode("ascii")


def _ascii_if_needed(stream) -> dict:
    """Box lines and symbols need an encoding that has them: under PYTHONIOENCODING=ascii or
    latin-1, tables fall back to ASCII (Rich's `safe_box`, no legacy symbols)."""
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("_", "-")
    if encoding.startswith("utf"):
        return {}
    return {"safe_box": True, "legacy_windows": False, "emoji": False}


def text_stream(binary):
    """A text view of a binary output stream that never closes it (detach() before it is dropped)."""
    import io

    return io.TextIOWrapper(binary, encoding="utf-8", errors="replace", write_through=True)


# -- numbers ---------------------------------------------------------------------------------------


def fmt(value: float, precision: int | None) -> str:
    """A number for a table: fixed decimals, or scientific where those decimals would show only zeros."""
    p = TABLE_PRECISION if precision is None else precision
    if value == 0:
        value = 0.0  # -0.0 prints as 0
    elif p > 0 and abs(value) < 0.5 * 10**-p and value == value:
        return f"{value:.{p}e}"  # rather than 0.0000 for a small gradient; --precision 0 asks for whole numbers
    return f"{value:.{p}f}"


# -- rows ------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """A block of result rows: column names and one numpy array (or list of strings) per column."""

    names: list[str]
    columns: list


class RowWriter:
    """Writes frames one after another, so output streams as it is produced."""

    def __init__(
        self,
        fmt: str,
        stream: BinaryIO,
        precision: int | None = None,
        caption: str = "",
        keys: int = 0,
        show_all: bool = False,
    ) -> None:
        self.fmt, self.stream, self.precision, self.caption, self.keys = fmt, stream, precision, caption, keys
        self.count = 0
        self._held: list[Frame] = []
        self._tail: list[Frame] = []
        # On a terminal a table shows the first and last rows that fit (--all: every row); anywhere
        # else (a file, a pipe) nothing is ever left out.
        self.edge = None
        if fmt == "table" and not show_all and stream is sys.stdout.buffer and sys.stdout.isatty():
            self.edge = max((console().height - 12) // 2, 5)

    def write(self, frame: Frame) -> None:
        if self.fmt in BINARY_FORMATS:
            self._held.append(frame)  # Parquet and Arrow files are written whole, at close
        elif self.fmt == "table":
            self._hold(frame)
        elif self.fmt in ("csv", "tsv"):
            self._write_csv(frame)
        else:
            self._write_json(frame)
        self.count += len(frame.columns[0]) if frame.columns else 0

    def close(self) -> None:
        if self.fmt in BINARY_FORMATS:
            self._write_binary()
        elif self.fmt == "table":
            self._write_table()
        elif self.fmt == "json":
            self.stream.write(b"[]\n" if self.count == 0 else b"\n]\n")
        self.stream.flush()

    def _polars(self, frame: Frame):
        import numpy as np
        import polars as pl

        from nncli.io.texts import fixed_decimals

        columns = {}
        for name, col in zip(frame.names, frame.columns):
            if self.precision is not None and isinstance(col, np.ndarray) and col.dtype.kind == "f":
                if self.fmt.startswith("json"):
                    col = np.round(col, self.precision)
                elif self.fmt in ("csv", "tsv"):
                    texts = fixed_decimals(col, self.precision)  # polars' own texts, made faster
                    if texts is not None:
                        columns[name] = texts.alias(name)
                        continue
            columns[name] = pl.Series(name, col, strict=False)
        return pl.DataFrame(columns)

    def _write_csv(self, frame: Frame) -> None:
        if len(frame.names) > WIDE:
            self._write_wide_csv(frame)
            return
        import io

        from nncli.timing import phase

        with phase("format"):
            text = io.BytesIO()
            self._polars(frame).write_csv(
                text,
                include_header=self.count == 0,
                separator="\t" if self.fmt == "tsv" else ",",
                float_precision=self.precision,
            )
        with phase("write"):
            self.stream.write(text.getbuffer())

    def _write_wide_csv(self, frame: Frame) -> None:
        """Thousands of columns (a one-hot of many classes): polars is slow there, the csv module is not."""
        import csv
        import io

        text = io.StringIO()
        writer = csv.writer(text, delimiter="\t" if self.fmt == "tsv" else ",", lineterminator="\n")
        if self.count == 0:
            writer.writerow(frame.names)
        writer.writerows(
            zip(
                *[number_texts(col, self.precision).tolist() if hasattr(col, "dtype") else col for col in frame.columns]
            )
        )
        self.stream.write(text.getvalue().encode())

    def _write_json(self, frame: Frame) -> None:
        import io

        buffer = io.BytesIO()
        self._polars(frame).write_ndjson(buffer)
        text = buffer.getvalue()
        if self.fmt == "jsonl":
            self.stream.write(text)
            return
        lines = text.rstrip(b"\n").split(b"\n")
        self.stream.write((b"[\n" if self.count == 0 else b",\n") + b",\n".join(lines))

    def _write_binary(self) -> None:
        """Parquet or Arrow IPC: typed columns (float32 stays float32), one file."""
        import io

        import polars as pl

        frames = [self._polars(f) for f in self._held]
        table = pl.concat(frames) if frames else pl.DataFrame()
        # Made in memory, then written by Python: polars writing to the stream itself reports a full
        # disk as its ComputeError (parquet) or an OSError without errno (arrow), never naming the file.
        buffer = io.BytesIO()
        if self.fmt == "parquet":
            table.write_parquet(buffer)
        else:
            table.write_ipc(buffer)
        self.stream.write(buffer.getbuffer())

    def _hold(self, frame: Frame) -> None:
        """Keep every frame, or with an edge only the first and last `edge` rows: memory stays bounded."""
        held = sum(_height(f) for f in self._held)
        if self.edge is None or held < self.edge:
            self._held.append(frame)
            return
        self._tail.append(frame)
        while len(self._tail) > 1 and sum(_height(f) for f in self._tail[1:]) >= self.edge:
            self._tail.pop(0)

    def _write_table(self) -> None:
        from rich.text import Text

        frames, note = self._held + self._tail, ""
        if self.edge is not None and self.count > 2 * self.edge:
            head = _rows_of(self._held, 0, self.edge)
            tail = _rows_of(frames, -self.edge, None)  # held + tail end with the last rows, contiguous
            frames = [head, Frame(head.names, [["…"] for _ in head.names]), tail]
            left = self.count - 2 * self.edge
            note = f"{left:,} rows left out between the first and last {self.edge} (--all shows every row)"
        items = [frame_table(frames, self.precision, self.keys)] if frames else []
        captions = [c for c in (note, self.caption) if c]
        from nncli.errors import printable

        show(
            self.stream, items + [Text(printable(c), style="dim") for c in captions]
        )  # the spec's name is the user's text


def write_onehot(stream: BinaryIO, fmt: str, labels, classes: int) -> None:
    """One-hot rows written one at a time from pieces of at most a mebibyte: memory stays bounded
    however many classes there are (10^7 classes are 20 MB a row)."""
    sep = {"csv": b",", "tsv": b"\t"}.get(fmt)
    if sep is not None:
        _onehot_delimited(stream, sep, labels, classes)
    else:
        _onehot_json(stream, fmt, labels, classes)
    stream.flush()


ONEHOT_PIECE = 1 << 19  # cells per write


def _pieces(classes: int, hot: int | None, texts):
    """Yield the row's pieces: `texts(start, stop, hot)` renders cells start..stop-1."""
    for start in range(0, classes, ONEHOT_PIECE):
        yield texts(start, min(start + ONEHOT_PIECE, classes), hot)


def _onehot_delimited(stream: BinaryIO, sep: bytes, labels, classes: int) -> None:
    def header(start, stop, _):
        return (sep if start else b"") + sep.join(b"class_%d" % i for i in range(start, stop))

    def row(start, stop, hot):
        n = stop - start
        cells_ = [b"0"] * n
        if hot is not None and start <= hot < stop:
            cells_[hot - start] = b"1"
        return (sep if start else b"") + sep.join(cells_)

    for part in _pieces(classes, None, header):
        stream.write(part)
    stream.write(b"\n")
    if classes <= 4096:  # narrow rows: each class's line made once, lines joined a block at a time
        lines = [row(0, classes, c) + b"\n" for c in range(classes)]
        for start in range(0, len(labels), 65536):
            stream.write(b"".join([lines[c] for c in labels[start : start + 65536].tolist()]))
        return
    for hot in labels.tolist():
        for part in _pieces(classes, hot, row):
            stream.write(part)
        stream.write(b"\n")


def _onehot_json(stream: BinaryIO, fmt: str, labels, classes: int) -> None:
    def record(start, stop, hot):
        body = b",".join(b'"class_%d":%d' % (i, 1 if i == hot else 0) for i in range(start, stop))
        return (b"," if start else b"{") + body + (b"}" if stop == classes else b"")

    if fmt == "json":
        stream.write(b"[\n" if len(labels) else b"[]\n")
    for n, hot in enumerate(labels.tolist()):
        if fmt == "json" and n:
            stream.write(b",\n")
        for part in _pieces(classes, hot, record):
            stream.write(part)
        if fmt == "jsonl":
            stream.write(b"\n")
    if fmt == "json" and len(labels):
        stream.write(b"\n]\n")


def _height(frame: Frame) -> int:
    return len(frame.columns[0]) if frame.columns else 0


def _rows_of(frames: list[Frame], start: int, stop: int | None) -> Frame:
    """Rows start:stop of consecutive frames, as one frame."""
    import numpy as np

    columns = []
    for i in range(len(frames[0].names)):
        parts = [f.columns[i] for f in frames]
        if all(isinstance(p, np.ndarray) for p in parts):
            columns.append(np.concatenate(parts)[start:stop])
        else:
            columns.append([v for p in parts for v in (p.tolist() if isinstance(p, np.ndarray) else p)][start:stop])
    return Frame(frames[0].names, columns)


def _cells(col, precision: int | None) -> list[str]:
    import numpy as np

    if isinstance(col, np.ndarray) and col.dtype.kind == "f":
        return [fmt(v, precision) for v in col.tolist()]
    from rich.text import Text

    # a Text cell (explain's signed bars) keeps its style; anything else is shown as its text
    return [v if isinstance(v, Text) else str(v) for v in (col.tolist() if isinstance(col, np.ndarray) else col)]


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


# -- documents (loss, grads, step, params) --------------------------------------------------------


@dataclass
class Report:
    """One result in every shape a format needs: a JSON document, long-form rows, and Rich renderables."""

    doc: dict | list | None  # None: JSON is the frame's records
    frame: Frame
    tables: list | Callable[[], list] = field(default_factory=list)  # a callable: built only for a table


def write_report(report: Report, fmt: str, stream: BinaryIO, precision: int | None) -> None:
    if fmt in BINARY_FORMATS and report.frame is None:
        from nncli.errors import UsageError

        raise UsageError(f"this command's result has no {fmt} form; use csv, json or jsonl")
    if fmt == "json" and report.doc is None:  # rows without a document: a JSON list of records, as forward's
        writer = RowWriter("json", stream, precision)
        writer.write(report.frame)
        writer.close()
    elif fmt == "json":
        stream.write(dump_json(report.doc).encode() + b"\n")
    elif fmt == "table":
        show(stream, report.tables() if callable(report.tables) else report.tables)
    else:
        writer = RowWriter(fmt, stream, precision)
        writer.write(report.frame)
        writer.close()


def dump_json(doc) -> str:
    """One JSON style for every command: compact, as the records of forward and jsonl are."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def show(stream, items: list) -> None:
    """Print Rich renderables. Lines of text (captions) are not wrapped: the terminal wraps them.
    Off a terminal, lines lose the trailing spaces that Rich pads titles and plots with."""
    from rich.text import Text

    wrapper = None if stream is None or stream is sys.stdout.buffer else text_stream(stream)
    out = console(stream) if wrapper is None else console(wrapper)

    def print_all() -> None:
        for item in items:
            out.print(item, soft_wrap=isinstance(item, Text))

    try:
        with out.capture() as captured:
            print_all()
        text = captured.get()
        if not out.is_terminal:
            text = "".join(line.rstrip() + "\n" for line in text.splitlines())
        out.file.write(encodable(text, getattr(out.file, "encoding", None)))
        out.file.flush()
    finally:
        if wrapper is not None:
            wrapper.flush()
            wrapper.detach()  # the file stays open for its owner (an atomic write still to be renamed)


def frame_table(frames: Frame | list[Frame], precision: int | None, keys: int = 0) -> FoldingTable:
    """The rows of one or more frames with the same columns, as a table that folds to fit; the first
    `keys` columns (an id) lead every piece."""
    frames = [frames] if isinstance(frames, Frame) else frames
    columns = [[] for _ in frames[0].names]
    for frame in frames:
        for cells, col in zip(columns, frame.columns):
            cells += _cells(col, precision)
    return FoldingTable(frames[0].names, columns, keys=keys)


class FoldingTable:
    """Columns of cells as one Rich table or, where that would not fit the width, as several tables
    of consecutive columns, each led by the key columns that say which row a cell is in (the row
    number, if there are none). Rich alone would squeeze every column down to `…`."""

    def __init__(
        self,
        names: list[str],
        columns: list[list],
        title: str = "",
        keys: int = 0,
        uniform: bool = False,
        total: bool = False,
        justify: list[str] | None = None,
    ) -> None:
        """uniform: every value column as wide as the widest (a matrix); total: a line sets the last
        row apart; justify: per column (default: right, for numbers)."""
        from rich.text import Text

        from nncli.errors import printable

        # Column names, class labels and id cells are the user's text: a terminal must not act on their
        # control characters (ESC[2J clears it); they are shown as a repr shows them (`\x1b[2J`).
        self.names, self.title, self.keys, self.uniform, self.total = (
            [printable(n) for n in names],
            printable(title),
            keys,
            uniform,
            total,
        )
        self.justify = justify or ["right"] * len(names)
        self.columns = [[c if isinstance(c, Text) else Text(printable(str(c))) for c in col] for col in columns]

    def __rich_console__(self, console, options):
        from rich.cells import cell_len
        from rich.text import Text

        names, columns, keys, justify = self.names, self.columns, self.keys, self.justify
        widths = [max([cell_len(n)] + [c.cell_len for c in col]) for n, col in zip(names, columns)]
        if self.uniform and len(widths) > keys:
            widths[keys:] = [max(widths[keys:])] * (len(widths) - keys)
        if 1 + sum(w + 3 for w in widths) <= options.max_width:  # 3: padding and a border per column
            yield self._table(names, columns, widths, justify, range(len(names)), self.title, options.max_width)
            return
        if keys == 0:
            rows = len(columns[0]) if columns else 0
            names, columns, keys = ["row"] + names, [[Text(str(r), style="dim") for r in range(rows)]] + columns, 1
            justify = ["right"] + justify
            widths = [max(3, len(str(rows - 1)))] + widths
        base = 1 + sum(w + 3 for w in widths[:keys])
        pieces, piece, used = [], [], base
        for i in range(keys, len(names)):
            if piece and used + widths[i] + 3 > options.max_width:
                pieces.append(piece)
                piece, used = [], base
            piece.append(i)
            used += widths[i] + 3
        pieces.append(piece)
        for piece in pieces:
            span = (
                (f"columns {names[piece[0]]}–{names[piece[-1]]}" if len(piece) > 1 else f"column {names[piece[0]]}")
                if piece
                else ""
            )
            title = " · ".join(t for t in (self.title, span) if t)
            yield self._table(names, columns, widths, justify, list(range(keys)) + piece, title, options.max_width)

    def _table(self, names, columns, widths, justify, shown, title, max_width):
        from rich.cells import cell_len
        from rich.table import Table
        from rich.text import Text

        # Headers and titles hold user text (column names, spec names): Text, never markup, so `[/]` is
        # shown as written.
        table = Table(
            title=Text(title) if title else None,
            title_justify="left",
            header_style="bold",
            min_width=min(cell_len(title), max_width) if title else None,
        )
        for i in shown:
            table.add_column(Text(names[i]), justify=justify[i], no_wrap=True, min_width=widths[i])
        rows = list(zip(*[columns[i] for i in shown]))
        for n, row in enumerate(rows):
            table.add_row(*row, end_section=self.total and n == len(rows) - 2)
        return table


def key_value_table(pairs: dict):
    """A two-column table of named results (the loss, its function, the row count)."""
    from rich.table import Table

    from nncli.errors import printable

    table = Table(show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    for key, value in pairs.items():
        table.add_row(escape(printable(key)), escape(printable(value)))
    return table


def caption(text: str):
    """The dim line under a command's tables."""
    from rich.text import Text

    from nncli.errors import printable

    return Text(printable(text), style="dim")  # it may name the user's spec, file or columns


def rows_text(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")
