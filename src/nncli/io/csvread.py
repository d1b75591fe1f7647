"""Stream a CSV file (or standard input) as blocks of float64 rows, in bounded memory.

Two parsers share one contract. The fast one hands each block of whole lines to polars; the
exact one is Python's csv module, and it is the authority: whenever polars refuses a block or
anything about it is in doubt (an empty cell, a short row, a quote), the block is parsed again
exactly, which either yields the same numbers or names the line, column and text at fault.

Every step over the columns is a set or dict lookup: a file of two lines and 10^6 columns is read in
seconds, where list membership tests made it hours.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nncli.errors import NncliError, UsageError
from nncli.io.cells import MISSING_TEXTS, Block, is_missing_text, number_problem, parse_number
from nncli.io.compression import decompressing, open_compressed

BLOCK_BYTES = 4 << 20
MAX_LINE_BYTES = 32 << 20
PARSE_AHEAD = 1  # blocks being parsed while the next is cut (two: +25 MiB peak memory, no faster)
DELIMITERS = (",", "\t", ";")
# A block this wide with fewer rows goes straight to the exact parser: polars is slow on very wide,
# short blocks (benchmarks/results.md, "the reader's sizes").
WIDE_COLUMNS = 1024
WIDE_ROWS = 64


# A cell that may be a column name made of digits (`0`, `2024`): see CsvFile._warn_numeric_header.
_DIGITS = re.compile(r"^\s*[0-9]+\s*$")
_INTEGER = re.compile(r"^\s*[+-]?[0-9]+\s*$")
# Every MISSING_TEXTS word polars does not read by itself (`NA`, `null`, `None`, `?`; it reads an empty
# cell as null and `NaN` as NaN) holds one of these bytes. Only a block holding one (a find each, at memchr
# speed) is read with null_values, which makes polars ~40% slower (16 -> 23 ms a 4 MiB block of numbers).
_MISSING_BYTES = (b"N", b"u", b"?")
# bytes.strip's whitespace but the newline: a line of these is blank (the exact parser skips it, polars
# reads it as a row of nulls).
_SPACES = b" \t\r\x0b\x0c"


def display_name(path: str) -> str:
    return "<stdin>" if path == "-" else path


@dataclass(frozen=True)
class Pace:
    """How a CsvFile cuts its blocks and when it parses two at once. A thread reads with the defaults;
    the reader process gives its own copy of each open file one of its own (readers._child)."""

    block_bytes: int | None = None  # None: BLOCK_BYTES
    # Whether whoever takes the rows is waiting for them (the reader process's ring). Then a second
    # block is parsed at the same time, in a second thread: polars keeps ~1.4 of 2 cores busy on one
    # 2 MiB block, and the main process, done importing torch, leaves the rest idle. Only then: two
    # blocks being parsed take ~10 MiB more, and while the rows pile up unread they buy nothing.
    starved: Callable[[], bool] | None = None


class CsvFile:
    """An open CSV: its delimiter, header and column names are known as soon as it is opened.

    `warnings` collects what the reader noticed but did not refuse (a header of numbers read as
    data): library code never prints, the CLI shows them.
    """

    pace = Pace()

    def __init__(
        self,
        path: str,
        delimiter: str | None = None,
        header: bool | None = None,
        name: str | None = None,
        decimal_comma: bool = False,
        compression: str | None = None,
    ) -> None:
        self.path = path
        self.name = name or display_name(path)
        self.decimal_comma = decimal_comma
        self.warnings: list[str] = []
        self.stream = _open(path, compression)
        self._owned = path != "-"  # standard input is not ours to close (and sys.stdin may be None)
        try:
            status = os.fstat(self.stream.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            status = None
        self.total_bytes = status.st_size if status and path != "-" and not compression else None
        self._regular = status is not None and stat.S_ISREG(status.st_mode)  # always more to read at once: no select()
        self.bytes_read = 0
        self._pending = b""
        self._line = 0  # lines consumed so far
        self._eof = False
        self._cr: bool | None = None  # lines end in a bare CR (old Mac): decided on line 1
        self._carry = b""  # a CR at the end of a read, whose LF (if any) is in the next one
        try:
            self._read_header(delimiter, header)
        except BaseException:
            self.close()
            raise

    def _read_header(self, delimiter: str | None, header: bool | None) -> None:
        self._strip_bom()
        self._decide_line_ends()
        first = self._first_row()
        if first is None:
            raise NncliError("the file is empty (no rows)", self.name)
        line_no, raw_line = first
        if delimiter:
            self.delimiter = _delimiter(delimiter)
            if self.decimal_comma and self.delimiter == ",":
                raise UsageError(
                    "with --decimal-comma the delimiter can't be a comma (it is the decimal point)", "--delimiter"
                )
        else:
            self.delimiter = _detect_delimiter(raw_line, self.decimal_comma)
        cells = _split(raw_line, self.delimiter, self.name, line_no)
        self.names: list[str] | None
        self.has_header = (
            header if header is not None else any(parse_number(c, self.decimal_comma) is None for c in cells)
        )
        self.ncols = len(cells)
        # name -> its 0-based column, and the names given to several columns: one dict lookup per name
        self.index: dict[str, int] = {}
        self.duplicates: dict[str, list[int]] = {}
        if self.has_header:
            self.names = [c.strip() for c in cells]
            self.index = dict(zip(reversed(self.names), range(self.ncols - 1, -1, -1)))  # the first of equal names
            if len(self.index) < self.ncols:
                for i, n in enumerate(self.names):
                    if self.index[n] != i:
                        self.duplicates.setdefault(n, [self.index[n]]).append(i)
        else:
            self.names = None
            if header is None:
                self._warn_numeric_header(cells, line_no)
            self._pending = raw_line.encode("utf-8") + self._pending  # the first row is data
            self._line = line_no - 1

    def _warn_numeric_header(self, cells: list[str], line_no: int) -> None:
        """Warn when a first row read as data looks like column names made of digits.

        The rule: at least 2 cells, every cell a non-negative integer in plain digits (`0`, `2024`),
        no two of them equal, and the next non-blank row has a cell that is not an integer (a
        fraction, an exponent, text, an empty cell). `0,1,2,3` over rows of measurements is a
        header pandas wrote; over rows of integers it may be data, and nothing is said.
        """
        if len(cells) < 2 or not all(_DIGITS.match(c) for c in cells):
            return
        keys = {c.strip().lstrip("0") for c in cells}  # not int(): 10^4 digits would raise
        if len(keys) != len(cells):
            return
        following = self._peek_row()
        if following is None or all(_INTEGER.match(c) for c in following):
            return
        self.warnings.append(
            f"line {line_no} looks like a header of numbers; it was read as data "
            f"(add --header to read it as column names) ({self.name})"
        )

    # -- reading raw lines -------------------------------------------------------------------------

    def _read(self) -> bytes:
        """The next bytes there are now (a slow pipe still streams); bare CRs as LF in a CR file."""
        while True:
            try:
                chunk = self.stream.read1(self.pace.block_bytes or BLOCK_BYTES)
            except (OSError, EOFError) as e:  # EIO (/proc/self/mem, a failing disk), a corrupt or cut .gz
                raise NncliError(
                    f"cannot read: {e.strerror or e}" if isinstance(e, OSError) else f"cannot read: {e}", self.name
                ) from None
            except Exception as e:  # the decompressors' own errors (LZMAError, ZstdError): a corrupt file, not a bug
                if type(e).__module__.lstrip("_").split(".")[0] not in (
                    "lzma",
                    "bz2",
                    "zstandard",
                    "zstd",
                    "compression",
                ):
                    raise
                raise NncliError(f"cannot decompress: {e}", self.name) from None
            if not chunk:
                self._eof = True
                self._check_not_cut_short()
            self.bytes_read += len(chunk)
            if not self._cr:
                return chunk
            chunk, self._carry = _cr_to_lf(self._carry + chunk, self._eof)
            if chunk or self._eof:  # a read of a lone CR waits for the next byte
                return chunk

    def _check_not_cut_short(self) -> None:
        """At the end of a regular file: if it is now shorter than when it was opened and than what
        was read (a writer truncated it, a log was rotated), the rows are not all there: an error,
        not fewer rows. A size that stays (sysfs says 4096 for any file) or grows is no such sign."""
        if not self._regular or self.total_bytes is None or self.bytes_read >= self.total_bytes:
            return
        try:
            now = os.fstat(self.stream.fileno()).st_size
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return
        if now < self.total_bytes:
            raise NncliError(
                f"the file was cut short while it was read ({self.bytes_read:,} of {self.total_bytes:,} bytes)",
                self.name,
            )

    def _more_ready(self) -> bool:
        """Whether a read would return at once (always, for a file; for a pipe, if data is waiting)."""
        if self._regular:
            return True
        import select

        try:
            return bool(select.select([self.stream], [], [], 0)[0])
        except (OSError, ValueError, io.UnsupportedOperation):
            return True

    def _strip_bom(self) -> None:
        while len(self._pending) < 3 and not self._eof:
            self._pending += self._read()
        if self._pending.startswith(b"\xef\xbb\xbf"):
            self._pending = self._pending[3:]

    def _decide_line_ends(self) -> None:
        """Lines that end in a bare CR (`a,b\r1,2\r`, old Mac files) are read as if they ended in LF.

        Decided by the first line ending of the file: a CR not followed by LF, outside quotes.
        From then on CRLF and CR both end a line; a file whose first line ends in LF or CRLF is
        read as it is.
        """
        searched = 0
        while self._cr is None:
            data = self._pending
            r, n = data.find(b"\r", searched), data.find(b"\n", searched)
            if n >= 0 and (r < 0 or n < r):
                self._cr = False
            elif r >= 0 and (r + 1 < len(data) or self._eof):
                self._cr = data[r + 1 : r + 2] != b"\n" and data.count(b'"', 0, r) % 2 == 0
            elif self._eof:
                self._cr = False
            else:
                if len(data) > MAX_LINE_BYTES:
                    raise NncliError(f"line 1 is longer than {MAX_LINE_BYTES >> 20} MiB", self.name)
                searched = r if r >= 0 else len(data)
                self._pending += self._read()
        if self._cr:
            self._pending, self._carry = _cr_to_lf(self._pending, self._eof)

    def _first_row(self):
        """The first non-blank line (decoded) and its line number; a quoted newline (`"a\nb",y`, which
        Python's csv reads as one name) does not end it: the row ends at a newline outside quotes."""
        pos = 0  # blank lines before it are stepped over, not cut off one by one (a copy each)
        while True:
            cut = self._pending.find(b"\n", pos)
            while cut < 0 and not self._eof:
                if len(self._pending) - pos > MAX_LINE_BYTES:
                    raise NncliError(f"line {self._line + 1} is longer than {MAX_LINE_BYTES >> 20} MiB", self.name)
                if pos:
                    self._pending, pos = self._pending[pos:], 0
                searched = len(self._pending)
                self._pending += self._read()
                cut = self._pending.find(b"\n", searched)
            quotes = self._pending.count(b'"', pos, cut) if cut >= 0 else 0
            while quotes % 2:  # inside a quoted cell: the row goes on past this newline (each byte looked at once)
                close = self._wait_for(b'"', cut, pos)  # the quote that may close it
                following = -1 if close < 0 else self._wait_for(b"\n", close, pos)
                end = len(self._pending) if following < 0 else following
                quotes += self._pending.count(b'"', cut, end)
                if following < 0 and quotes % 2:
                    raise self._unclosed_quote(self._pending[pos:], self._line + 1)
                cut = end - 1 if following < 0 else following
            if cut < 0:
                cut = len(self._pending) - 1
                if cut < pos:
                    self._pending = b""
                    return None
            raw, pos = self._pending[pos : cut + 1], cut + 1
            first_line = self._line + 1
            self._line += max(1, raw.count(b"\n") + (not raw.endswith(b"\n")))
            text = _decode(raw, self.name, first_line)
            if text.strip():
                self._pending = self._pending[pos:]
                return first_line, text

    def _wait_for(self, byte: bytes, start: int, pos: int) -> int:
        """Where `byte` is in the pending bytes from `start`, reading on as needed; -1 at the end. A
        row (from `pos`) longer than MAX_LINE_BYTES is a quote never closed: the header row, quoted."""
        found, searched = self._pending.find(byte, start), start
        while found < 0 and not self._eof:
            if len(self._pending) - pos > MAX_LINE_BYTES:
                raise self._unclosed_quote(
                    self._pending[pos:], self._line + 1, f" (no closing quote within {MAX_LINE_BYTES >> 20} MiB)"
                )
            searched = len(self._pending)
            self._pending += self._read()
            found = self._pending.find(byte, searched)
        if found - pos > MAX_LINE_BYTES:
            raise self._unclosed_quote(
                self._pending[pos:found], self._line + 1, f" (no closing quote within {MAX_LINE_BYTES >> 20} MiB)"
            )
        return found

    def _peek_row(self) -> list[str] | None:
        """The cells of the next non-blank line, left unread; None if there is none, or it is odd."""
        start = searched = 0
        while start <= MAX_LINE_BYTES:
            cut = self._pending.find(b"\n", searched)
            while cut < 0 and not self._eof:
                if len(self._pending) - start > MAX_LINE_BYTES:
                    return None
                searched = len(self._pending)
                self._pending += self._read()
                cut = self._pending.find(b"\n", searched)
            end = len(self._pending) if cut < 0 else cut + 1
            raw = self._pending[start:end]
            if not raw:
                return None
            try:
                text = raw.decode("utf-8")
                if text.strip():
                    return _split(text, self.delimiter, self.name, 0)
            except (UnicodeDecodeError, NncliError):  # the reading proper names it
                return None
            start = searched = end
        return None

    def blocks(self):
        """Yield (first line number, bytes, line count) of whole lines, a block at a time; quoted fields stay whole."""
        block_bytes = self.pace.block_bytes or BLOCK_BYTES
        while True:
            first = True
            while not self._eof and len(self._pending) < block_bytes and (first or self._more_ready()):
                self._pending += self._read()
                first = False
            if not self._pending:
                return
            # Cut after the last newline outside quotes. Newlines and quotes are looked for only in
            # what is new since the last look, so a line that runs on for many reads costs linear time.
            searched = cut = quotes = 0  # quotes: how many in self._pending[:cut]
            while True:
                if self._eof:
                    cut = len(self._pending)
                    break
                last = self._pending.rfind(b"\n", searched)
                searched = len(self._pending)
                if last >= 0:
                    quotes += count_byte(self._pending, b'"', cut, last + 1)
                    cut = last + 1
                if cut and quotes % 2 == 0:
                    break
                # a line, or a quoted field, runs on past the block: read more
                if len(self._pending) > MAX_LINE_BYTES:
                    raise self._runaway(quotes + self._pending.count(b'"', cut))
                self._pending += self._read()
            block, self._pending = self._pending[:cut], self._pending[cut:]
            start = self._line + 1
            lines = count_byte(block, b"\n")
            self._line += lines
            yield start, block, lines + (not block.endswith(b"\n"))

    def _runaway(self, quotes: int) -> NncliError:
        """The error for more than MAX_LINE_BYTES without a line end: a stray quote, or a line that long."""
        if quotes % 2:
            return self._unclosed_quote(
                self._pending, self._line + 1, f" (no closing quote within {MAX_LINE_BYTES >> 20} MiB)"
            )
        return NncliError(
            f"a line (or a quoted field) from line {self._line + 1} on is longer than {MAX_LINE_BYTES >> 20} MiB",
            self.name,
        )

    def _unclosed_quote(self, lines: bytes, line_no: int, detail: str = "") -> NncliError:
        """The error for lines (from line `line_no`) holding an odd number of quotes.

        Quotes pair up from the start of whole lines, `""` inside a field included: with an odd
        count, the last one opens a field that nothing closes (a stray quote, most often).
        """
        line = line_no + lines.count(b"\n", 0, lines.rfind(b'"'))
        return NncliError(f"malformed CSV: an opening quote on line {line} is never closed{detail}", self.name)

    def close(self) -> None:
        if self._owned and not self.stream.closed:
            self.stream.close()

    # -- parsing -----------------------------------------------------------------------------------

    def column_label(self, index: int) -> str:
        return f"column {index} ({self.names[index]!r})" if self.names else f"column {index}"

    def read(self, numeric: list[int], text: Sequence[int] = (), missing: bool = False):
        """Yield a Block per block of input: float64 values of the numeric columns, strings of the text ones.

        `missing`: a numeric cell that is missing (cells.MISSING_TEXTS, spaces and tabs around it
        ignored) is NaN instead of an error; any other cell that is not a number is still one.
        Text columns are as they are either way. A blank line is skipped, not a row of missing
        cells (so in a file of one column, an empty line is no row, as pandas reads it too).

        A file that cannot be read is closed before the error goes up: callers that stop on it
        need not.
        """
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        from nncli.timing import phase, timed

        def fast(block: bytes, lines: int):
            with phase("parse"):
                return _fast_parse(
                    block,
                    lines,
                    self.ncols,
                    self.delimiter,
                    numeric,
                    text,
                    decimal_comma=self.decimal_comma,
                    missing=missing,
                )

        # Blocks are cut here and parsed by polars in a helper thread, up to PARSE_AHEAD blocks ahead:
        # cutting the next block (Python, holding the GIL) overlaps parsing this one (native, without it).
        parser = ThreadPoolExecutor(1, thread_name_prefix="nncli-parser")
        helper, helping = None, None  # the second parser (see Pace.starved), and its block's future
        starved = self.pace.starved
        rows = 0
        try:
            pending: deque = deque()

            def finish():
                line_no, block, future = pending.popleft()
                with phase("parse"):  # waiting for the parser thread is parsing too
                    parsed = future.result()
                if parsed is None:
                    with phase("parse"):
                        parsed = self._exact_parse(block, line_no, numeric, text, missing)
                return parsed

            for line_no, block, lines in timed("parse", self.blocks()):
                if pending and (helping is None or helping.done()) and starved is not None and starved():
                    helper = helper or ThreadPoolExecutor(1, thread_name_prefix="nncli-parser-2")
                    helping = helper.submit(fast, block, lines)
                    pending.append((line_no, block, helping))
                else:
                    pending.append((line_no, block, parser.submit(fast, block, lines)))
                # a slow pipe still streams: with nothing more to read yet, this block goes out now
                ahead = PARSE_AHEAD + (helping is not None and not helping.done())
                while len(pending) > ahead or (pending and not self._eof and not self._more_ready()):
                    values, texts = finish()
                    if len(values):
                        yield Block(values, texts, rows)
                        rows += len(values)
            while pending:
                values, texts = finish()
                if len(values):
                    yield Block(values, texts, rows)
                    rows += len(values)
            if rows == 0:
                raise NncliError(
                    "the file has a header but no data rows" if self.has_header else "the file is empty (no rows)",
                    self.name,
                )
        except Exception:
            self.close()
            raise
        finally:
            parser.shutdown(wait=False, cancel_futures=True)
            if helper is not None:
                helper.shutdown(wait=False, cancel_futures=True)

    def _exact_parse(self, block: bytes, line_no: int, numeric: list[int], text: Sequence[int], missing: bool = False):
        import numpy as np

        content = _decode(block, self.name, line_no)
        reader = csv.reader(io.StringIO(content, newline=""), delimiter=self.delimiter, strict=True)
        values: list[list[float]] = []
        texts: list[list[str]] = [[] for _ in text]
        previous = 0
        decimal_comma = self.decimal_comma
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                if ("unexpected end of data" in str(e) or "field larger" in str(e)) and block.count(b'"') % 2:
                    raise self._unclosed_quote(block, line_no) from None  # csv's line is where it gave up
                raise NncliError(f"malformed CSV: {e}", f"{self.name}:{line_no + reader.line_num - 1}") from None
            where = f"{self.name}:{line_no + previous}"
            previous = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != self.ncols:
                raise NncliError(f"the row has {len(row)} cells, expected {self.ncols}", where)
            numbers = []
            for i in numeric:
                value = parse_number(row[i], decimal_comma)
                if value is None:
                    if missing and is_missing_text(row[i]):
                        numbers.append(math.nan)
                        continue
                    raise NncliError(f"{self.column_label(i)}: {number_problem(row[i], decimal_comma)}", where)
                numbers.append(value)
            values.append(numbers)
            for out, i in zip(texts, text):
                out.append(row[i])
        return np.array(values, dtype=np.float64).reshape(len(values), len(numeric)), texts


def count_byte(data: bytes, byte: bytes, start: int = 0, end: int | None = None) -> int:
    """How many times `byte` occurs in data[start:end]. bytes.count walks a byte at a time holding the
    GIL (~2 ms per 4 MiB block, three counts a block): numpy compares 16-64 bytes at once without it,
    so the main thread (importing torch, computing) is not kept waiting."""
    end = len(data) if end is None else end
    if end - start < 1 << 16:
        return data.count(byte, start, end)
    if data.find(byte, start, end) < 0:  # find is fast (memchr): most blocks hold no quote at all
        return 0
    import numpy as np

    return int(np.count_nonzero(np.frombuffer(data, np.uint8, end - start, start) == byte[0]))


def _cr_to_lf(data: bytes, eof: bool) -> tuple[bytes, bytes]:
    """CRLF and bare CR as LF; a CR at the very end is held back (its LF may come next) unless at EOF."""
    carry = b""
    if data.endswith(b"\r") and not eof:
        data, carry = data[:-1], b"\r"
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), carry


def _open(path: str, compression: str | None = None):
    """The file (or standard input) as a binary stream, decompressed as it is read (.gz, .bz2, .xz, .zst)."""
    if path == "-":
        if sys.stdin is None:  # fd 0 was closed when Python started (`nncli ... <&-`)
            raise NncliError("standard input is closed", "<stdin>")
        if compression:
            return decompressing(sys.stdin.buffer, compression)
        return sys.stdin.buffer
    if os.path.isdir(path):
        raise NncliError("is a directory, not a CSV file", path)
    return open_compressed(path, compression)  # plain or compressed, its errors named as one line


def _decode(raw: bytes, name: str, line_no: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = line_no + raw.count(b"\n", 0, e.start)
        raise NncliError("the text is not UTF-8", f"{name}:{line}") from None


def _delimiter(given: str) -> str:
    """The delimiter the user asked for; `\\t` and `tab` spell a tab, as a shell makes typing one hard."""
    value = {"\\t": "\t", "tab": "\t"}.get(given, given)
    if len(value) != 1 or value in '\r\n"':
        raise UsageError(f"the delimiter must be one character (not a quote or newline), got {given!r}", "--delimiter")
    return value


def _detect_delimiter(line: str, decimal_comma: bool = False) -> str:
    """The most frequent of comma, tab and semicolon in the first row; with decimal commas, tab or semicolon."""
    candidates = [d for d in DELIMITERS if not (decimal_comma and d == ",")]
    counts = {d: line.count(d) for d in candidates}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ("," if not decimal_comma else ";")


def _split(line: str, delimiter: str, name: str, line_no: int) -> list[str]:
    try:
        rows = list(csv.reader(io.StringIO(line, newline=""), delimiter=delimiter, strict=True))
    except csv.Error as e:
        raise NncliError(f"malformed CSV: {e}", f"{name}:{line_no}") from None
    return rows[0] if rows else [""]


def _fast_parse(
    block: bytes,
    rows: int,
    ncols: int,
    delimiter: str,
    numeric: list[int],
    text: Sequence[int],
    retry: bool = True,
    decimal_comma: bool = False,
    missing: bool = False,
):
    """Parse a block of `rows` lines with polars, or return None where only the exact parser can be trusted.

    `missing`: polars reads MISSING_TEXTS in a number column as null (an empty cell by itself, the
    words with null_values when the block may hold one: _MISSING_BYTES), which becomes NaN once
    every null is known to be a cell (_whole_rows); a missing text with spaces around it (` NA`)
    is a cell polars refuses, and the block goes to the exact parser."""
    import numpy as np
    import polars as pl

    if block.find(b'"') >= 0:
        return None  # quoting is the exact parser's: polars panics on an unbalanced quote (and prints so)
    if ncols >= WIDE_COLUMNS and rows < WIDE_ROWS:
        return None  # polars spends ~20 us per column, the exact parser ~0.3 us per cell: few rows are its
    if decimal_comma and block.find(b".") >= 0:
        return None  # polars would read `1.5` as 1.5; the exact parser refuses a '.' in a number and names it
    is_numeric, is_text = set(numeric), set(text)  # sets: one lookup per column, 10^6 columns or not
    wanted = sorted(is_numeric | is_text)
    if len(wanted) < ncols and count_byte(block, delimiter.encode()) != rows * (ncols - 1):
        return None  # a short row could hide in a column polars does not read
    names = [f"c{i}" for i in range(ncols)]
    nulls = list(MISSING_TEXTS) if missing and any(block.find(b) >= 0 for b in _MISSING_BYTES) else None
    schema = {n: (pl.Float64 if i in is_numeric and i not in is_text else pl.String) for i, n in enumerate(names)}
    try:
        frame = pl.read_csv(
            block,
            has_header=False,
            separator=delimiter,
            schema=schema,
            columns=wanted or [0],
            quote_char=None,
            decimal_comma=decimal_comma,
            null_values=nulls,
        )
        if numeric == wanted and not is_text:
            selected = frame  # the features in file order, all read as numbers: nothing to select
            has_nulls = any(selected.null_count().row(0))
        elif numeric:
            # an id may be a number too: its text column is cast (strictly: a refusal goes to the exact parser)
            selected = frame.select(
                [_as_number(names[i], decimal_comma) if i in is_text else names[i] for i in numeric]
            )
            has_nulls = any(selected.null_count().row(0))
        else:
            selected, has_nulls = None, False
    except pl.exceptions.PolarsError:  # a refusal sends the block to the exact parser, which names the cell
        return None
    except BaseException as e:  # a polars panic (pyo3's PanicException is a BaseException): same
        if type(e).__name__ != "PanicException":
            raise
        return None
    if frame.height != rows or (has_nulls and not (missing and _whole_rows(block, rows, ncols, delimiter))):
        if not retry:
            return None
        return _again_without_blank_lines(block, ncols, delimiter, numeric, text, decimal_comma, missing)
    # row-major, as torch.tensor(rows) is; one conversion for all columns, not one per column
    if numeric and selected is not None:  # (numeric columns are always selected)
        values = selected.to_numpy(order="c", writable=True)
    else:
        values = np.empty((rows, 0), dtype=np.float64)
    if nulls and any(frame.get_column(names[i]).null_count() for i in text):
        frame = _texts_as_they_are(block, delimiter, sorted(is_text), names)  # null_values made `NA` null there too
        if frame is None:
            return None
    texts = [frame.get_column(names[i]).fill_null("").to_list() for i in text]
    return values, texts


def _again_without_blank_lines(
    block: bytes,
    ncols: int,
    delimiter: str,
    numeric: list[int],
    text: Sequence[int],
    decimal_comma: bool,
    missing: bool,
):
    """_fast_parse of the block without its blank lines, as the exact parser skips them (a line of
    delimiters is a row of empty cells, not a blank line); None if it has none (then a null is a
    short row, or an empty cell without `missing`: the exact parser's)."""
    if not (missing or b"\n\n" in block or b"\n\r\n" in block or block[:1] in (b"\n", b"\r")):
        return None  # (with `missing`, a line of spaces is read as nulls too: looked for below)
    sep = delimiter.encode()
    kept = b"".join(line for line in block.splitlines(keepends=True) if line.strip() or sep in line)
    if len(kept) == len(block):
        return None
    if not kept:
        return _empty(numeric, text)
    rows = kept.count(b"\n") + (not kept.endswith(b"\n"))
    return _fast_parse(kept, rows, ncols, delimiter, numeric, text, False, decimal_comma, missing)


def _texts_as_they_are(block: bytes, delimiter: str, columns: list[int], names: list[str]):
    """The block's text columns read without null_values (a text cell `NA` is the text NA), or None."""
    import polars as pl

    try:
        return pl.read_csv(
            block,
            has_header=False,
            separator=delimiter,
            schema=dict.fromkeys(names, pl.String),
            columns=columns,
            quote_char=None,
        )
    except pl.exceptions.PolarsError:
        return None


def _whole_rows(block: bytes, rows: int, ncols: int, delimiter: str) -> bool:
    """Whether each of the block's `rows` lines is a row of `ncols` cells, so that every null polars
    read is a missing cell: polars reads a short row's absent cells, a blank line and a lone CR as
    nulls too, where the exact parser refuses the first, skips the second and ends a line at the
    third. (A row with too many cells polars refuses itself.)"""
    if count_byte(block, b"\r") and block.count(b"\r") != block.count(b"\r\n"):
        return False
    if ncols > 1:  # then every row has ncols - 1 delimiters, no more (polars refuses more), so no fewer
        return count_byte(block, delimiter.encode()) == rows * (ncols - 1)
    # one column: no blank line. Deleting the spaces and finding an empty line takes ~10 ms a 4 MiB
    # block, a regex for a line of spaces ~30 ms (polars parses the block in ~16)
    squeezed = (block if block.endswith(b"\n") else block + b"\n").translate(None, _SPACES)
    return not squeezed.startswith(b"\n") and b"\n\n" not in squeezed


def _as_number(name: str, decimal_comma: bool):
    import polars as pl

    column = pl.col(name)
    if decimal_comma:
        column = column.str.replace(",", ".", literal=True)
    return column.cast(pl.Float64)


def _empty(numeric, text):
    import numpy as np

    return np.zeros((0, len(numeric))), [[] for _ in text]
