"""Stream a CSV file (or standard input) as blocks of float64 rows, in bounded memory.

Two parsers share one contract. The fast one hands each block of whole lines to polars; the
exact one is Python's csv module, and it is the authority: whenever polars refuses a block or
anything about it is in doubt (an empty cell, a short row, a quote), the block is parsed again
exactly, which either yields the same numbers or names the line, column and text at fault.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass

from nncli.errors import NncliError, UsageError

BLOCK_BYTES = 4 << 20
MAX_LINE_BYTES = 32 << 20
DELIMITERS = (",", "\t", ";")


def parse_number(cell: str) -> float | None:
    """The number a cell holds, or None: Python's float() grammar, without digit separators."""
    if "_" in cell:
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def display_name(path: str) -> str:
    return "<stdin>" if path == "-" else path


@dataclass
class Block:
    """Parsed rows of one block: selected numeric columns, text columns, and the row count before it."""

    values: object  # numpy float64 array (rows, len(numeric))
    texts: list  # one list of strings per text column
    first_row: int


class CsvFile:
    """An open CSV: its delimiter, header and column names are known as soon as it is opened."""

    def __init__(self, path: str, delimiter: str | None = None, header: bool | None = None, name: str | None = None) -> None:
        self.path = path
        self.name = name or display_name(path)
        self.stream = _open(path)
        try:
            self.total_bytes = os.fstat(self.stream.fileno()).st_size if path != "-" else None
        except (OSError, io.UnsupportedOperation):
            self.total_bytes = None
        self.bytes_read = 0
        self._pending = b""
        self._line = 0  # lines consumed so far
        self._eof = False
        first = self._first_row()
        if first is None:
            raise NncliError("the file is empty (no rows)", self.name)
        line_no, raw_line = first
        self.delimiter = _delimiter(delimiter) if delimiter else _detect_delimiter(raw_line)
        cells = _split(raw_line, self.delimiter, self.name, line_no)
        self.has_header = header if header is not None else any(parse_number(c) is None for c in cells)
        self.ncols = len(cells)
        if self.has_header:
            self.names = [c.strip() for c in cells]
        else:
            self.names = None
            self._pending = raw_line.encode("utf-8") + self._pending  # the first row is data
            self._line = line_no - 1

    # -- reading raw lines -------------------------------------------------------------------------

    def _read(self) -> bytes:
        chunk = self.stream.read1(BLOCK_BYTES)  # what is there now: a slow pipe still streams
        if not chunk:
            self._eof = True
        self.bytes_read += len(chunk)
        return chunk

    def _more_ready(self) -> bool:
        """Whether a read would return at once (always, for a file; for a pipe, if data is waiting)."""
        import select

        try:
            return bool(select.select([self.stream], [], [], 0)[0])
        except (OSError, ValueError, io.UnsupportedOperation):
            return True

    def _first_row(self):
        """The first non-blank line (decoded, BOM removed) and its line number."""
        while True:
            cut = self._pending.find(b"\n")
            while cut < 0 and not self._eof:
                if len(self._pending) > MAX_LINE_BYTES:
                    raise NncliError(f"line {self._line + 1} is longer than {MAX_LINE_BYTES >> 20} MiB", self.name)
                self._pending += self._read()
                if self._line == 0 and self._pending.startswith(b"\xef\xbb\xbf"):
                    self._pending = self._pending[3:]
                cut = self._pending.find(b"\n")
            if cut < 0:
                cut = len(self._pending)
                if cut == 0:
                    return None
            raw, self._pending = self._pending[: cut + 1], self._pending[cut + 1 :]
            self._line += 1
            text = _decode(raw, self.name, self._line)
            if text.strip():
                return self._line, text

    def blocks(self):
        """Yield (first line number, bytes, line count) of whole lines, a block at a time; quoted fields stay whole."""
        while True:
            first = True
            while not self._eof and len(self._pending) < BLOCK_BYTES and (first or self._more_ready()):
                self._pending += self._read()
                first = False
            if not self._pending:
                return
            cut = len(self._pending) if self._eof else self._pending.rfind(b"\n") + 1
            while cut == 0 or (self._pending.find(b'"', 0, cut) >= 0 and self._pending.count(b'"', 0, cut) % 2):
                # a line, or a quoted field, runs on past the block: read more
                if self._eof:
                    cut = len(self._pending)
                    break
                if len(self._pending) > MAX_LINE_BYTES:
                    raise NncliError(
                        f"a line (or a quoted field) from line {self._line + 1} on is longer than "
                        f"{MAX_LINE_BYTES >> 20} MiB",
                        self.name,
                    )
                self._pending += self._read()
                cut = len(self._pending) if self._eof else self._pending.rfind(b"\n") + 1
            block, self._pending = self._pending[:cut], self._pending[cut:]
            start = self._line + 1
            lines = block.count(b"\n")
            self._line += lines
            yield start, block, lines + (not block.endswith(b"\n"))

    def close(self) -> None:
        if self.stream is not sys.stdin.buffer:
            self.stream.close()

    # -- parsing -----------------------------------------------------------------------------------

    def column_label(self, index: int) -> str:
        return f"column {index} ({self.names[index]!r})" if self.names else f"column {index}"

    def read(self, numeric: list[int], text: list[int] = ()):
        """Yield a Block per block of input: float64 values of the numeric columns, strings of the text ones."""
        rows = 0
        for line_no, block, lines in self.blocks():
            parsed = _fast_parse(block, lines, self.ncols, self.delimiter, numeric, text)
            if parsed is None:
                parsed = self._exact_parse(block, line_no, numeric, text)
            values, texts = parsed
            if len(values):
                yield Block(values, texts, rows)
                rows += len(values)
        if rows == 0:
            raise NncliError("the file has a header but no data rows" if self.has_header else "the file is empty (no rows)", self.name)

    def _exact_parse(self, block: bytes, line_no: int, numeric: list[int], text: list[int]):
        import numpy as np

        content = _decode(block, self.name, line_no)
        reader = csv.reader(io.StringIO(content, newline=""), delimiter=self.delimiter, strict=True)
        values: list[list[float]] = []
        texts: list[list[str]] = [[] for _ in text]
        previous = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise NncliError(f"malformed CSV: {e}", f"{self.name}:{line_no + reader.line_num - 1}") from None
            where = f"{self.name}:{line_no + previous}"
            previous = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != self.ncols:
                raise NncliError(f"the row has {len(row)} cells, expected {self.ncols}", where)
            numbers = []
            for i in numeric:
                value = parse_number(row[i])
                if value is None:
                    shown = row[i] if len(row[i]) <= 40 else row[i][:37] + "..."
                    problem = "the cell is empty" if not row[i].strip() else f"{shown!r} is not a number"
                    raise NncliError(f"{self.column_label(i)}: {problem}", where)
                numbers.append(value)
            values.append(numbers)
            for out, i in zip(texts, text):
                out.append(row[i])
        return np.array(values, dtype=np.float64).reshape(len(values), len(numeric)), texts


def _open(path: str):
    if path == "-":
        return sys.stdin.buffer
    try:
        if os.path.isdir(path):
            raise NncliError("is a directory, not a CSV file", path)
        return open(path, "rb")
    except FileNotFoundError:
        raise NncliError("no such file", path) from None
    except OSError as e:
        raise NncliError(f"cannot read: {e.strerror}", path) from None


def _decode(raw: bytes, name: str, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = line_no + raw.count(b"\n", 0, e.start)
        raise NncliError("the text is not UTF-8", f"{name}:{line}") from None


def _delimiter(given: str) -> str:
    """The delimiter the user asked for; `\\t` and `tab` spell a tab, as a shell makes typing one hard."""
    value = {"\\t": "\t", "tab": "\t"}.get(given, given)
    if len(value) != 1 or value in "\r\n\"":
        raise UsageError(f"the delimiter must be one character (not a quote or newline), got {given!r}", "--delimiter")
    return value


def _detect_delimiter(line: str) -> str:
    counts = {d: line.count(d) for d in DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _split(line: str, delimiter: str, name: str, line_no: int) -> list[str]:
    try:
        rows = list(csv.reader(io.StringIO(line, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as e:
        raise NncliError(f"malformed CSV: {e}", f"{name}:{line_no}") from None
    return rows[0] if rows else [""]


def _fast_parse(block: bytes, rows: int, ncols: int, delimiter: str, numeric: list[int], text: list[int], retry: bool = True):
    """Parse a block of `rows` lines with polars, or return None where only the exact parser can be trusted."""
    import numpy as np
    import polars as pl

    if block.find(b'"') >= 0:
        return None  # quoting is the exact parser's: polars panics on an unbalanced quote (and prints so)
    wanted = sorted(set(numeric) | set(text))
    if len(wanted) < ncols and block.count(delimiter.encode()) != rows * (ncols - 1):
        return None  # a short row could hide in a column polars does not read
    names = [f"c{i}" for i in range(ncols)]
    schema = {n: (pl.Float64 if i in numeric and i not in text else pl.String) for i, n in enumerate(names)}
    try:
        frame = pl.read_csv(
            block,
            has_header=False,
            separator=delimiter,
            schema=schema,
            columns=wanted or [0],
            quote_char=None,
        )
        series = [frame.get_column(names[i]) for i in numeric]
        series = [s.cast(pl.Float64) if i in text else s for s, i in zip(series, numeric)]  # an id may be a number too
    except pl.exceptions.PolarsError:  # a refusal sends the block to the exact parser, which names the cell
        return None
    except BaseException as e:  # a polars panic (pyo3's PanicException is a BaseException): same
        if type(e).__name__ != "PanicException":
            raise
        return None
    if frame.height != rows or any(s.null_count() for s in series):
        if retry and (b"\n\n" in block or b"\n\r\n" in block or block[:1] in (b"\n", b"\r")):
            kept = b"".join(line for line in block.splitlines(keepends=True) if line.strip())  # blank lines
            if not kept:
                return _empty(numeric, text)
            return _fast_parse(kept, kept.count(b"\n") + (not kept.endswith(b"\n")), ncols, delimiter, numeric, text, False)
        return None
    values = np.empty((rows, len(numeric)), dtype=np.float64)  # row-major, as torch.tensor(rows) is
    for j, s in enumerate(series):
        values[:, j] = s.to_numpy()
    texts = [frame.get_column(names[i]).fill_null("").to_list() for i in text]
    return values, texts


def _empty(numeric, text):
    import numpy as np

    return np.zeros((0, len(numeric))), [[] for _ in text]
