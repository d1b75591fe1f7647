"""Results -> Rich tables for people; CSV, TSV, JSON and JSON Lines for programs.

Floats are printed as the shortest text that reads back as the same value of their dtype (a
float32 0.4647 prints as 0.4647), unless --precision asks for fixed decimals. CSV and JSON never
pass through Rich, which would shrink or cut cells to fit 80 columns.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

FORMATS = ("table", "csv", "tsv", "json", "jsonl")
TABLE_PRECISION = 4
WIDE = 256  # columns beyond which CSV is written without polars
_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def resolve_format(fmt: str | None, output: str | None) -> str:
    """--format, else the -o file's suffix, else a table on a terminal and CSV anywhere else."""
    if fmt:
        return fmt
    if output and output != "-":
        return _SUFFIX_FORMATS.get(os.path.splitext(output)[1].lower(), "csv")
    return "table" if sys.stdout.isatty() else "csv"


def console(stream=None, stderr: bool = False):
    """A Rich console made on demand, so COLUMNS, NO_COLOR and test runners' streams take effect."""
    from rich.console import Console

    if stderr:
        return Console(stderr=True, highlight=False)
    if stream is None or stream is sys.stdout.buffer:
        return Console(file=sys.stdout, highlight=False)
    import io

    text = io.TextIOWrapper(stream, encoding="utf-8", write_through=True)
    return Console(file=text, highlight=False, width=int(os.environ.get("COLUMNS", 120)), force_terminal=False)


# -- numbers ---------------------------------------------------------------------------------------


def number_texts(values, precision: int | None):
    """Numpy values -> strings: the shortest round-trip text of their dtype, or fixed decimals."""
    import numpy as np

    values = np.asarray(values)
    if values.dtype.kind != "f":
        return values.astype(str)
    if precision is None:
        return values.astype(str)
    return np.char.mod(f"%.{precision}f", values)


def jsonable(values, precision: int | None = None) -> Any:
    """A tensor or array -> nested Python lists whose floats print shortest for their dtype.

    NaN and infinities have no JSON spelling: they become null (and a warning says where).
    """
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.dtype.kind != "f":
        return values.tolist()
    texts = number_texts(values, precision)
    finite = np.isfinite(values)
    flat = [float(t) if ok else None for t, ok in zip(texts.reshape(-1).tolist(), finite.reshape(-1).tolist())]
    if values.ndim == 0:
        return flat[0]
    return np.array(flat, dtype=object).reshape(values.shape).tolist()


def fmt(value: float, precision: int | None) -> str:
    """A number for a table: fixed decimals, or scientific where those decimals would show only zeros."""
    p = TABLE_PRECISION if precision is None else precision
    if value == 0:
        value = 0.0  # -0.0 prints as 0
    elif abs(value) < 0.5 * 10**-p and value == value:
        return f"{value:.{p}e}"
    return f"{value:.{p}f}"


# -- rows ------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """A block of result rows: column names and one numpy array (or list of strings) per column."""

    names: list[str]
    columns: list


class RowWriter:
    """Writes frames one after another, so output streams as it is produced."""

    def __init__(self, fmt: str, stream: BinaryIO, precision: int | None = None, caption: str = "", keys: int = 0) -> None:
        self.fmt, self.stream, self.precision, self.caption, self.keys = fmt, stream, precision, caption, keys
        self.count = 0
        self._held: list[Frame] = []

    def write(self, frame: Frame) -> None:
        if self.fmt == "table":
            self._held.append(frame)
        elif self.fmt in ("csv", "tsv"):
            self._write_csv(frame)
        else:
            self._write_json(frame)
        self.count += len(frame.columns[0]) if frame.columns else 0

    def close(self) -> None:
        if self.fmt == "table":
            self._write_table()
        elif self.fmt == "json":
            self.stream.write(b"[]\n" if self.count == 0 else b"\n]\n")
        self.stream.flush()

    def _polars(self, frame: Frame):
        import numpy as np
        import polars as pl

        columns = {}
        for name, col in zip(frame.names, frame.columns):
            if self.precision is not None and isinstance(col, np.ndarray) and col.dtype.kind == "f" and self.fmt.startswith("json"):
                col = np.round(col, self.precision)
            columns[name] = pl.Series(name, col, strict=False)
        return pl.DataFrame(columns)

    def _write_csv(self, frame: Frame) -> None:
        if len(frame.names) > WIDE:
            self._write_wide_csv(frame)
            return
        self._polars(frame).write_csv(
            self.stream,
            include_header=self.count == 0,
            separator="\t" if self.fmt == "tsv" else ",",
            float_precision=self.precision,
        )

    def _write_wide_csv(self, frame: Frame) -> None:
        """Thousands of columns (a one-hot of many classes): polars is slow there, the csv module is not."""
        import csv
        import io

        text = io.StringIO()
        writer = csv.writer(text, delimiter="\t" if self.fmt == "tsv" else ",", lineterminator="\n")
        if self.count == 0:
            writer.writerow(frame.names)
        writer.writerows(zip(*[number_texts(col, self.precision).tolist() if hasattr(col, "dtype") else col for col in frame.columns]))
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

    def _write_table(self) -> None:
        from rich.text import Text

        items = [frame_table(self._held, self.precision, self.keys)] if self._held else []
        show(self.stream, items + ([Text(self.caption, style="dim")] if self.caption else []))


def _cells(col, precision: int | None) -> list[str]:
    import numpy as np

    if isinstance(col, np.ndarray) and col.dtype.kind == "f":
        return [fmt(v, precision) for v in col.tolist()]
    return [str(v) for v in (col.tolist() if isinstance(col, np.ndarray) else col)]


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


# -- documents (loss, grads, step, params) --------------------------------------------------------


@dataclass
class Report:
    """One result in every shape a format needs: a JSON document, long-form rows, and Rich renderables."""

    doc: dict | list
    frame: Frame
    tables: list | Callable[[], list] = field(default_factory=list)  # a callable: built only for a table


def write_report(report: Report, fmt: str, stream: BinaryIO, precision: int | None) -> None:
    if fmt == "json":
        stream.write(json.dumps(report.doc, allow_nan=False).encode() + b"\n")
    elif fmt == "table":
        show(stream, report.tables() if callable(report.tables) else report.tables)
    else:
        writer = RowWriter(fmt, stream, precision)
        writer.write(report.frame)
        writer.close()


def show(stream, items: list) -> None:
    """Print Rich renderables. Lines of text (captions) are not wrapped: the terminal wraps them.
    Off a terminal, lines lose the trailing spaces that Rich pads titles and plots with."""
    from rich.text import Text

    out = console(stream)

    def print_all() -> None:
        for item in items:
            out.print(item, soft_wrap=isinstance(item, Text))

    if out.is_terminal:
        print_all()
        return
    with out.capture() as captured:
        print_all()
    out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    out.file.flush()


def frame_table(frames: Frame | list[Frame], precision: int | None, keys: int = 0) -> "FoldingTable":
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

    def __init__(self, names: list[str], columns: list[list], title: str = "", keys: int = 0, uniform: bool = False,
                 total: bool = False, justify: list[str] | None = None) -> None:
        """uniform: every value column as wide as the widest (a matrix); total: a line sets the last
        row apart; justify: per column (default: right, for numbers)."""
        from rich.text import Text

        self.names, self.title, self.keys, self.uniform, self.total = list(names), title, keys, uniform, total
        self.justify = justify or ["right"] * len(names)
        self.columns = [[c if isinstance(c, Text) else Text(str(c)) for c in col] for col in columns]

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
            span = (f"columns {names[piece[0]]}–{names[piece[-1]]}" if len(piece) > 1 else f"column {names[piece[0]]}") if piece else ""
            title = " · ".join(t for t in (self.title, span) if t)
            yield self._table(names, columns, widths, justify, list(range(keys)) + piece, title, options.max_width)

    def _table(self, names, columns, widths, justify, shown, title, max_width):
        from rich.cells import cell_len
        from rich.table import Table

        table = Table(title=title or None, title_justify="left", header_style="bold", min_width=min(cell_len(title), max_width) if title else None)
        for i in shown:
            table.add_column(names[i], justify=justify[i], no_wrap=True, min_width=widths[i])
        rows = list(zip(*[columns[i] for i in shown]))
        for n, row in enumerate(rows):
            table.add_row(*row, end_section=self.total and n == len(rows) - 2)
        return table


def key_value_table(pairs: dict):
    """A two-column table of named results (the loss, its function, the row count)."""
    from rich.table import Table

    table = Table(show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    for key, value in pairs.items():
        table.add_row(escape(key), escape(value))
    return table
