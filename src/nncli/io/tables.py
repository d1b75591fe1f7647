"""Typed table files (Parquet, Arrow IPC/Feather, NDJSON) read in batches, with the CSV reader's
interface: `names`, `read(numeric, text)` yielding Blocks of float64 rows and text columns.

Column types are used as they are: a float64 Parquet column is not re-parsed from text, a float32
one widens to float64 exactly (and rounds back to the same float32 in a float32 model). Batches
come from polars' streaming engine (`collect_batches`), or for an NDJSON file from blocks of its
lines, so memory stays bounded (an Arrow file is read whole: see TableFile._scan).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Sequence

from nncli.errors import NncliError, UsageError
from nncli.io.cells import Block, is_missing_text, parse_number
from nncli.io.compression import decompress, open_compressed

BATCH_ROWS = 65536
TABLE_FORMATS = ("parquet", "arrow", "ndjson")
# NDJSON read from a file is cut into blocks of whole lines, each parsed by polars on its own
# (see TableFile._scan). Measured (2M rows x 6 float64, 286 MiB): 1 MiB blocks 2.3 s, CPU 1.7-2.1 s,
# 89 MiB at the peak; polars' scan of the path 2.4-3.8 s, CPU 1.45 s, 382 MiB (the mapped file).
NDJSON_BLOCK_BYTES = 1 << 20
NDJSON_INFER_ROWS = 10000


class TableFile:
    """An open Parquet, Arrow IPC or NDJSON file (or standard input in one of those formats)."""

    has_header = True

    def __init__(self, path: str, fmt: str, name: str | None = None, compression: str | None = None) -> None:
        import polars as pl

        self.path, self.fmt = path, fmt
        self.name = name or ("<stdin>" if path == "-" else path)
        self.warnings: list[str] = []
        self.bytes_read = 0
        self.total_bytes = None if path == "-" else _size(path)
        self._lines = None  # an NDJSON file read by blocks of lines (_line_frames): its schema
        try:
            self._frame = self._scan(pl, compression)
            schema = self._frame.collect_schema()
        except NncliError:
            raise
        except FileNotFoundError:
            raise NncliError("no such file", self.name) from None
        except Exception as e:  # polars' and the decompressors' errors: a bad file, never a crash
            raise NncliError(f"cannot read the {fmt} file: {_first_line(e)}", self.name) from None
        self.names = list(schema.names())
        self.types = list(schema.dtypes())
        self.ncols = len(self.names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.duplicates: dict = {}  # Parquet, Arrow and JSON names are unique
        if not self.ncols:
            raise NncliError("the file has no columns", self.name)

    def _scan(self, pl, compression: str | None):
        """Arrow and NDJSON files are read with read calls, not given to polars by path: polars
        maps a path into memory (mmap), and a file truncated while it was read (a writer still at
        work, a log rotated) killed nncli with SIGBUS: no error line, temporary files left. Read,
        a short file is one error line. An Arrow file is read whole (its footer says where every
        batch is); NDJSON by blocks of lines (see NDJSON_BLOCK_BYTES). Parquet is left to polars,
        which reads it with read calls already (truncated: "failed to fill whole buffer")."""
        source: str | io.BytesIO = self.path
        kind = _kind(self.path)
        if self.fmt == "ndjson" and kind == "file" and not compression:
            return self._scan_lines(pl)
        # a pipe (`<(...)`, a FIFO) can be read once: whole, as standard input (polars refused it)
        if self.path == "-" or compression or self.fmt == "arrow" or (self.fmt == "ndjson" and kind == "pipe"):
            source = io.BytesIO(_read_all(self.path, compression, self.name))  # Parquet and Arrow need to seek
            self.bytes_read = source.getbuffer().nbytes
        if self.fmt == "parquet":
            return pl.scan_parquet(source)
        if self.fmt == "arrow":
            return pl.scan_ipc(source) if isinstance(source, str) else pl.read_ipc(source).lazy()
        return (
            pl.scan_ndjson(source, infer_schema_length=10000)
            if isinstance(source, str)
            else pl.read_ndjson(source).lazy()
        )

    def _scan_lines(self, pl):
        """The schema of an NDJSON file, inferred from its first NDJSON_INFER_ROWS lines as
        scan_ndjson infers it; the rows are read by blocks in _line_frames."""
        with _named_errors(self.name), open(self.path, "rb") as stream:
            head = _first_lines(stream, NDJSON_INFER_ROWS)
        schema = pl.read_ndjson(head, infer_schema_length=NDJSON_INFER_ROWS).schema if head.strip() else pl.Schema()
        self._lines = schema
        return pl.LazyFrame(schema=schema)

    def _line_frames(self, columns: list[str]):
        """The NDJSON file's rows, a block of whole lines at a time, each parsed with the file's
        schema; a file shorter at the end than at the start is an error, not fewer rows."""
        import polars as pl

        self.bytes_read = 0
        with _named_errors(self.name), open(self.path, "rb") as stream:
            expected = os.fstat(stream.fileno()).st_size
            rest = b""
            while True:
                block, rest = _next_lines(stream, rest)
                if not block.endswith(b"\n") and self.bytes_read + len(block) < expected:
                    break  # the last line, cut: the file was truncated (not a line to parse)
                if not block:
                    break
                self.bytes_read += len(block)
                if block.strip():
                    yield pl.read_ndjson(block, schema=self._lines).select(columns)
            if self.bytes_read < expected:
                raise NncliError(
                    f"the file was cut short while it was read ({self.bytes_read + len(block)} of {expected} bytes)",
                    self.name,
                )

    def column_label(self, index: int) -> str:
        return f"column {index} ({self.names[index]!r})"

    def read(self, numeric: list[int], text: Sequence[int] = (), missing: bool = False):
        """Blocks of float64 values (numeric columns, row-major) and strings (text columns).

        `missing`: a missing numeric cell is NaN instead of an error: a null (a column of nulls
        only, too), NaN in a float column (NaN either way), or in a text column what the CSV reader
        takes as missing (cells.MISSING_TEXTS). Text columns are as they are either way."""
        import numpy as np
        import polars as pl

        for i in numeric:
            kind = self.types[i]
            if not (kind.is_numeric() or kind in (pl.Boolean, pl.String) or (missing and kind == pl.Null)):
                raise NncliError(f"{self.column_label(i)} holds {self.types[i]}, not numbers", self.name)
        wanted = sorted(set(numeric) | set(text))
        rows = 0
        try:
            if self._lines is not None:
                batches = self._line_frames([self.names[i] for i in wanted])
            else:
                batches = self._frame.select([pl.col(self.names[i]) for i in wanted]).collect_batches(
                    chunk_size=BATCH_ROWS
                )
            for frame in batches:
                values = np.empty((frame.height, len(numeric)), dtype=np.float64)  # row-major, as the CSV reader's
                for j, i in enumerate(numeric):
                    values[:, j] = self._numbers(frame.get_column(self.names[i]), i, rows, missing)
                texts = [frame.get_column(self.names[i]).cast(pl.String).fill_null("").to_list() for i in text]
                if frame.height:
                    yield Block(values, texts, rows)
                rows += frame.height
        except NncliError:
            raise
        except Exception as e:
            raise NncliError(f"cannot read the {self.fmt} file: {_first_line(e)}", self.name) from None
        if rows == 0:
            raise NncliError("the file has no rows", self.name)

    def _numbers(self, series, i: int, first_row: int, missing: bool = False):
        """A column as float64: numbers as they are typed; text parsed as the CSV reader parses a cell.
        `missing`: a missing cell (see read) is NaN."""
        import numpy as np
        import polars as pl

        if series.dtype == pl.String:
            out = np.empty(len(series), dtype=np.float64)
            for r, cell in enumerate(series.to_list()):
                if missing and (cell is None or is_missing_text(cell)):
                    out[r] = np.nan
                    continue
                value = None if cell is None else parse_number(cell)
                if value is None:
                    problem = "the cell is empty" if not cell else repr(cell) + " is not a number"
                    raise NncliError(
                        f"{self.column_label(i)}: {problem}",
                        f"{self.name}, row {first_row + r}",
                    )
                out[r] = value
            return out
        if series.null_count() and missing:
            return series.cast(pl.Float64).fill_null(np.nan).to_numpy()
        if series.null_count():
            r = int(series.is_null().arg_max())
            raise NncliError(f"{self.column_label(i)}: the cell is empty (null)", f"{self.name}, row {first_row + r}")
        return series.cast(pl.Float64).to_numpy()

    def close(self) -> None:
        pass


def _kind(path: str) -> str | None:
    """ "file" (a regular file), "pipe" (a FIFO or socket), or None (anything else, or no such path)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return "file" if stat.S_ISREG(mode) else "pipe" if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else None


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


@contextlib.contextmanager
def _named_errors(name: str | None):
    """An OSError while reading (EIO, a file that went away) as an error that names the file."""
    try:
        yield
    except FileNotFoundError:
        if name is None:
            raise
        raise NncliError("no such file", name) from None
    except OSError as e:
        if name is None:
            raise
        raise NncliError(f"cannot read: {e.strerror or e}", name) from None


def _first_lines(stream, n: int) -> bytes:
    """The first `n` lines of `stream` (all of it if it has fewer)."""
    parts, count = [], 0
    while chunk := stream.read(NDJSON_BLOCK_BYTES):
        found = chunk.count(b"\n")
        if count + found >= n:
            at = -1
            for _ in range(n - count):
                at = chunk.find(b"\n", at + 1)
            parts.append(chunk[: at + 1])
            break
        count += found
        parts.append(chunk)
    return b"".join(parts)


def _next_lines(stream, rest: bytes) -> tuple[bytes, bytes]:
    """(`rest` and the whole lines read after it, about NDJSON_BLOCK_BYTES; what follows them). At
    the end of the file: whatever is left (a last line without its newline), and b""."""
    parts = [rest]
    while chunk := stream.read(NDJSON_BLOCK_BYTES):
        cut = chunk.rfind(b"\n") + 1
        if cut:
            parts.append(chunk[:cut])
            return b"".join(parts), chunk[cut:]
        parts.append(chunk)  # a line longer than a block: joined once it ends, not copied each time
    return b"".join(parts), b""


def _read_all(path: str, compression: str | None, name: str) -> bytes:
    """The whole (decompressed) content: standard input, a compressed file, or an Arrow file (a
    file shorter at the end than at the start is an error, not fewer rows)."""
    if path == "-":
        if sys.stdin is None:
            raise NncliError("standard input is closed", "<stdin>")
        raw = sys.stdin.buffer.read()
    else:
        with open_compressed(path, compression) as f, _named_errors(name if not compression else None):
            data = f.read()
            if not compression:
                expected = os.fstat(f.fileno()).st_size
                if len(data) < expected:
                    raise NncliError(
                        f"the file was cut short while it was read ({len(data)} of {expected} bytes)", name
                    )
            return data
    return decompress(raw, compression) if compression else raw


SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}
COMPRESSIONS = {".gz": "gz", ".bz2": "bz2", ".xz": "xz", ".zst": "zst"}
INPUT_FORMATS = ("csv", "tsv", "parquet", "arrow", "ndjson")


def detect_format(path: str, forced: str | None = None) -> tuple[str, str | None]:
    """(format, compression) from --input-format (`csv`, `ndjson.gz`, ...) or the file's suffixes;
    anything unrecognised is read as CSV, as before."""
    compression: str | None
    if forced:
        base, _, compression = forced.lower().partition(".")
        if base not in INPUT_FORMATS or (compression and "." + compression not in COMPRESSIONS):
            raise UsageError(
                f"--input-format must be one of {', '.join(INPUT_FORMATS)}, "
                f"optionally with .gz, .bz2, .xz or .zst; got {forced!r}"
            )
        return base, compression or None
    if path == "-":
        return "csv", None
    stem, suffix = os.path.splitext(path.lower())
    compression = COMPRESSIONS.get(suffix)
    if compression:
        stem, suffix = os.path.splitext(stem)
    fmt = SUFFIX_FORMATS.get(suffix, "csv")
    if compression and fmt in ("parquet", "arrow"):
        return fmt, compression  # read whole, decompressed in memory (they compress inside already)
    return fmt, compression
