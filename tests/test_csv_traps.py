"""CSV traps: very wide files, tiny batches with ids, closed standard input, CR line endings,
stray quotes, Unicode digits, headers of numbers, duplicate names, decimal commas, and missing
cells read as NaN when asked.

Each test failed before the fix it guards. Expected numbers come from Python's float() and from
PyTorch in the test, never from nncli.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time

import hypothesis
import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from torch import nn

from nncli.errors import NncliError, UsageError
from nncli.io import csvread
from nncli.io.csvread import parse_number
from nncli.io.reading import Dataset, ReadOptions
from tests.helpers import CONFIGS, assert_error, parse_csv, write

HAND = CONFIGS / "hand-checkable.yaml"  # Linear(2, 1), weight [[0.5, -0.5]], bias [0.1]


def hand_model(rows: list[list[float]]) -> np.ndarray:
    """What hand-checkable.yaml computes, written as a user writes it in PyTorch."""
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.5]]))
        layer.bias.copy_(torch.tensor([0.1]))
        return layer(torch.tensor(rows, dtype=torch.float32))[:, 0].numpy()


def outputs(result) -> np.ndarray:
    assert result.exit_code == 0, result.stderr
    return np.array([np.float32(r["output"]) for r in csv.DictReader(io.StringIO(result.stdout))])


def all_values(data: Dataset, rows=None):
    x, y, ids = [], [], []
    for batch in data.batches(rows):
        x.append(batch.x)
        if batch.y is not None:
            y.append(batch.y)
        ids += batch.ids or []
    data.close()
    return np.concatenate(x), (np.concatenate(y) if y else None), ids


# -- 1. 10^5 columns: every per-column step is a dict or set lookup ---------------------------------


@pytest.mark.slow
def test_a_hundred_thousand_columns_are_read_in_linear_time(tmp_path):
    """Two lines of 10^5 columns took 75 s per command (`i in numeric` over a list, per column);
    10^6 columns took hours. Real processes, so that a regression is cut off by the guard."""
    n = 100_000
    rng = random.Random(5)
    features = [rng.uniform(-3, 3) for _ in range(n - 1)]
    label = 12_345
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{i}" for i in range(n)) + "\n" + ",".join(map(repr, features)) + f",{label}\n")
    spec = write(tmp_path, "identity.yaml", "layers: []\n")
    nncli = shutil.which("nncli")
    start = time.monotonic()

    out = tmp_path / "out.csv"
    done = subprocess.run(
        [nncli, "forward", spec, path, "--features", f"c{n // 2}", "-o", out],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr  # a feature named in a header of 10^5 names
    assert np.float32(out.read_text().splitlines()[1]) == np.float32(features[n // 2])

    done = subprocess.run(
        [nncli, "forward", spec, path, "--target", str(n - 1), "-o", out], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    header, row = list(csv.reader(io.StringIO(out.read_text())))
    assert header == [f"output_{i}" for i in range(n - 1)]
    np.testing.assert_array_equal(np.array(row, dtype=np.float32), np.array(features, dtype=np.float32))

    done = subprocess.run(
        [nncli, "loss", spec, path, "--target", "-1", "--loss", "cross_entropy", "--dtype", "float64", "-f", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    expected = nn.CrossEntropyLoss()(torch.tensor([features], dtype=torch.float64), torch.tensor([label])).item()
    assert json.loads(done.stdout)["loss"] == pytest.approx(expected, rel=1e-12)  # summation order may differ
    assert time.monotonic() - start < 60


def test_many_named_features_in_a_wide_header(tmp_path):
    """--features with 30,000 names: each is one dict lookup (list.index made it quadratic: 60 s)."""
    n = 60_000
    names = [f"c{i}" for i in range(n)]
    path = tmp_path / "wide.csv"
    path.write_text(",".join(names) + "\n" + ",".join(str(i % 10) for i in range(n)) + "\n")
    chosen = names[::-2]  # every other column, last first
    start = time.monotonic()
    data = Dataset(ReadOptions(str(path), features=chosen))
    assert data.feature_cols == [int(c[1:]) for c in chosen]
    x, _, _ = all_values(data)
    np.testing.assert_array_equal(x[0], [int(c[1:]) % 10 for c in chosen])
    assert time.monotonic() - start < 20


# -- 2. --id-column with -b 1: regrouping is linear ------------------------------------------------


def test_batches_of_one_row_with_ids_cost_what_they_cost_without(tmp_path):
    """`_rebatch` sliced off the rest of each block's id list for every batch: 80k rows with
    `-b 1 --id-column` took 6 s more than without ids, and grew with the square of the rows."""
    rows = 160_000
    rng = random.Random(3)
    values = [(rng.uniform(-1, 1), rng.uniform(-1, 1)) for _ in range(rows)]
    path = tmp_path / "d.csv"
    path.write_text("id,a,b\n" + "".join(f"r{i},{a!r},{b!r}\n" for i, (a, b) in enumerate(values)))

    def read(id_column):
        start = time.monotonic()
        data = Dataset(ReadOptions(str(path), features=["a", "b"], id_column=id_column))
        count, ids, first, last = 0, [], None, None
        for batch in data.batches(1):
            assert len(batch) == 1 and batch.first_row == count
            if batch.ids is not None:
                ids += batch.ids
            first = batch.x if first is None else first
            last = batch.x
            count += 1
        data.close()
        return time.monotonic() - start, count, ids, first, last

    without, count, _, first, last = read(None)
    with_ids, count_ids, ids, _, _ = read("id")
    assert count == count_ids == rows
    assert ids == [f"r{i}" for i in range(rows)]
    np.testing.assert_array_equal(first, [values[0]])
    np.testing.assert_array_equal(last, [values[-1]])
    assert with_ids < 2 * without + 3, (with_ids, without)  # a guard: before, 25 s against 0.7 s


# Not a regression test: the rewritten regrouping keeps every rule of the old one (DataLoader's
# batches, a short last one, with or without the old `exact`).
@pytest.mark.parametrize(
    "rows, exact, sizes",
    [(3, False, [3, 3, 3, 1]), (3, True, [3, 3, 3, 1]), (None, False, [10]), (5, False, [5, 5]), (20, False, [10])],
)
def test_regrouping_keeps_rows_ids_and_batch_sizes(tmp_path, monkeypatch, rows, exact, sizes):
    """Blocks of about two rows regrouped into batches: every row once, in order, with its id."""
    path = tmp_path / "d.csv"
    path.write_text("id,a,b\n" + "".join(f"r{i},{i},{-i / 4}\n" for i in range(10)))
    monkeypatch.setattr(csvread, "BLOCK_BYTES", 16)
    data = Dataset(ReadOptions(str(path), id_column="id"))
    batches = list(data.batches(rows, exact=exact))
    data.close()
    assert [len(b) for b in batches] == sizes
    assert [b.first_row for b in batches] == [sum(sizes[:i]) for i in range(len(sizes))]
    assert sum((b.ids for b in batches), []) == [f"r{i}" for i in range(10)]
    np.testing.assert_array_equal(np.concatenate([b.x for b in batches]), [[i, -i / 4] for i in range(10)])


# -- 3. closed standard input ----------------------------------------------------------------------


def test_closed_standard_input(tmp_path):
    """`<&-` leaves sys.stdin None: closing the data file compared it with sys.stdin.buffer."""
    data = write(tmp_path, "d.csv", "a,b\n1,2\n0.5,0.25\n")
    out = tmp_path / "out.csv"
    nncli = shutil.which("nncli")
    done = subprocess.run(
        ["sh", "-c", f'"{nncli}" forward "{HAND}" "{data}" -o "{out}" <&-'], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr
    got = np.array([np.float32(r["output"]) for r in csv.DictReader(io.StringIO(out.read_text()))])
    np.testing.assert_array_equal(got, hand_model([[1, 2], [0.5, 0.25]]))

    for command in ("forward", "train"):  # train copies standard input to a file first
        extra = "-t b --epochs 1 --lr 0.1" if command == "train" else ""
        done = subprocess.run(
            ["sh", "-c", f'"{nncli}" {command} "{HAND}" - {extra} -o "{tmp_path}/out-{command}.csv" <&-'],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr.strip().splitlines() == ["error: standard input is closed (<stdin>)"], (command, done.stderr)


def test_closed_standard_input_in_the_library(tmp_path, monkeypatch):
    """The same, below the CLI edge: sys.stdin is None, as Python leaves it when fd 0 is closed."""
    import contextlib

    from nncli.io.reading import spooled

    monkeypatch.setattr(sys, "stdin", None)
    data = Dataset(ReadOptions(str(write(tmp_path, "d.csv", "a,b\n1,2\n"))))
    x, _, _ = all_values(data)  # closes the file: `stream is not sys.stdin.buffer` raised here
    np.testing.assert_array_equal(x, [[1, 2]])
    for opts, want_targets in (
        (ReadOptions("-"), False),
        (ReadOptions(str(tmp_path / "d.csv"), targets_file="-"), True),
    ):
        with pytest.raises(NncliError) as raised:
            Dataset(opts, want_targets)
        assert raised.value.message == "standard input is closed (<stdin>)"
    with contextlib.ExitStack() as stack, pytest.raises(NncliError, match=r"standard input is closed"):
        spooled(ReadOptions("-"), stack)


# -- 4. CR line endings ----------------------------------------------------------------------------


@pytest.mark.parametrize("block", [csvread.BLOCK_BYTES, 3, 16])
def test_bare_cr_line_endings_are_read_as_lines(nncli, tmp_path, monkeypatch, block):
    """`a,b\\r1,2\\r` (old Mac files) read as a header and no data rows; now CR ends a line."""
    monkeypatch.setattr(csvread, "BLOCK_BYTES", block)
    rows = [[1, 2], [0.5, 0.25], [-3, 4e-3], [7, 8]]
    lines = ["a,b"] + [f"{x!r},{y!r}" for x, y in rows]
    for name, ending in (("cr.csv", "\r"), ("crlf.csv", "\r\n"), ("lf.csv", "\n")):
        path = tmp_path / name
        path.write_bytes(("\ufeff" + ending.join(lines) + ending).encode())
        np.testing.assert_array_equal(outputs(nncli("forward", HAND, path)), hand_model(rows), err_msg=name)
    # blank lines, a quoted name, a file without a final line end and a CRLF after the first CR
    path = tmp_path / "mixed.csv"
    path.write_bytes(b'"a",b\r\r1,2\r\n0.5,0.25\r  \r-3,0.004\r7,8')
    np.testing.assert_array_equal(outputs(nncli("forward", HAND, path)), hand_model(rows))


def test_errors_in_a_cr_file_name_the_right_line(nncli, tmp_path):
    path = tmp_path / "cr.csv"
    path.write_bytes(b"a,b\r1,2\r\rx,4\r")
    assert_error(nncli("forward", HAND, path), 1, "column 0 ('a'): 'x' is not a number (", "cr.csv:4)")


def test_cr_files_from_standard_input(nncli):
    np.testing.assert_array_equal(
        outputs(nncli("forward", HAND, "-", input="a,b\r1,2\r0.5,0.25\r")), hand_model([[1, 2], [0.5, 0.25]])
    )


@pytest.mark.parametrize("block", [csvread.BLOCK_BYTES, 3, 16])
def test_a_quoted_newline_in_a_header_name_is_read_as_python_s_csv_reads_it(nncli, tmp_path, monkeypatch, block):
    """`"a\nb",c`: the header was cut at the quoted newline and refused (`unexpected end of data`)."""
    monkeypatch.setattr(csvread, "BLOCK_BYTES", block)
    text = '"i\nd","a\nb","c\r\nd"\n7,1,2\n8,0.5,0.25\n'
    names = next(csv.reader(io.StringIO(text, newline="")))
    path = tmp_path / "nl.csv"
    path.write_bytes(text.encode())
    for given, stdin in ((path, None), ("-", text)):
        result = nncli("forward", HAND, given, "--id-column", "0", "-f", "csv", input=stdin)
        assert result.exit_code == 0, result.stderr
        assert [r[names[0]] for r in parse_csv(result.stdout)] == [
            "7",
            "8",
        ]  # the name, newline and all, as Python's csv reads it
        np.testing.assert_array_equal(
            outputs(nncli("forward", HAND, given, "--id-column", "0", input=stdin)), hand_model([[1, 2], [0.5, 0.25]])
        )
    path.write_bytes((text + "9,x,4\n").encode())  # lines are still counted as lines
    assert_error(
        nncli("forward", HAND, path, "--id-column", "0"), 1, "column 1 ('a\\nb'): 'x' is not a number (", "nl.csv:7)"
    )
    path.write_bytes(b'"a,b\n' + b"1,2\n" * 1000)  # a stray quote in the header is still named, not read to the end
    assert_error(nncli("forward", HAND, path), 1, "an opening quote on line 1 is never closed (", "nl.csv)")


# -- 5. a stray quote in a large file --------------------------------------------------------------


def test_a_lone_quote_in_a_large_file_is_named_with_its_line(nncli, tmp_path):
    """It was reported as `a line from line 2 on is longer than 32 MiB`."""
    path = tmp_path / "quote.csv"
    with open(path, "wb") as f:
        f.write(b'a,b\n1,2\n"3,4\n')
        f.write(b"1,2\n" * (10 << 20))  # 40 MiB of ordinary lines after it
    assert_error(nncli("forward", HAND, path), 1, "an opening quote on line 3 is never closed", "quote.csv")


@pytest.mark.parametrize(
    "block", [1 << 12, csvread.BLOCK_BYTES]
)  # lines that run over the limit, or the whole file at once
def test_a_lone_quote_after_closed_ones_is_the_one_named(nncli, tmp_path, monkeypatch, block):
    monkeypatch.setattr(csvread, "MAX_LINE_BYTES", 1 << 16)
    monkeypatch.setattr(csvread, "BLOCK_BYTES", block)
    path = tmp_path / "quote.csv"
    path.write_bytes(b'id,a,b\n"x""y",1,2\n\n"z",3,"4"\n5,5,6\n"w,7,8\n' + b"q,1,2\n" * (1 << 15))
    assert_error(
        nncli("forward", HAND, path, "--id-column", "id"), 1, "an opening quote on line 6 is never closed", "quote.csv"
    )
    if block > 1 << 16:
        return  # a file read whole at once has no line to wait for: the limit is on what must be held
    long_line = tmp_path / "long.csv"
    long_line.write_bytes(b'a,b\n1,2\n"3",' + b"4" * (1 << 17) + b"\n")
    assert_error(nncli("forward", HAND, long_line), 1, "a line (or a quoted field) from line 3 on is longer than")


# -- 6. Unicode digits -----------------------------------------------------------------------------


def test_unicode_digits_are_not_numbers(nncli, tmp_path):
    for cell in ("٣", "１", "1٣", "\u00a02", "２.５"):
        assert float(cell) is not None  # Python's float() takes them all
        assert parse_number(cell) is None, cell
        path = write(tmp_path, "u.csv", f"a,b\n1,2\n{cell},2\n")
        assert_error(nncli("forward", HAND, path), 1, f"column 0 ('a'): {cell!r} is not a number", "u.csv:3")
    for cell in ("1e5", " 2 ", "inf", "-inf", "-0", "+.5", "5.", "1E-3", "Infinity", "\t7\n"):
        assert parse_number(cell) == float(cell), cell
    assert math.isnan(parse_number("nan")) and math.copysign(1, parse_number("-0")) == -1
    assert parse_number("1_000") is None


def test_a_column_index_in_unicode_digits_is_not_an_index(nncli, tmp_path):
    path = write(tmp_path, "d.csv", "a,b,c\n1,2,3\n")
    assert_error(nncli("forward", HAND, path, "--target", "٢"), 1, "--target '٢': no such column")


# -- 7. a header of numbers -----------------------------------------------------------------------


def test_a_header_of_numbers_is_read_as_data_with_a_warning(tmp_path):
    path = write(tmp_path, "d.csv", "\n0,1,2\n0.5,1.5,2\n3,4,5\n")
    data = Dataset(ReadOptions(str(path)))
    assert data.warnings == [
        f"line 2 looks like a header of numbers; it was read as data (add --header to read it as column names) ({path})"
    ]
    x, _, _ = all_values(data)
    np.testing.assert_array_equal(x, [[0, 1, 2], [0.5, 1.5, 2], [3, 4, 5]])  # still data


@pytest.mark.parametrize(
    "text, header",
    [
        ("0,1,2\n3,4,5\n", None),  # the next row holds integers too: it may be data
        ("0,1,1\n0.5,1.5,2\n", None),  # two equal cells: not names
        ("0,1.5,2\n0.5,1.5,2\n", None),  # not all integers
        ("-1,1\n0.5,1.5\n", None),  # a sign: a number, not a name
        ("7\n0.5\n", None),  # one column
        ("0,1,2\n", None),  # no next row
        ("0,1,2\n0.5,1.5,2\n", False),  # --no-header: the user said so
        ("a,b\n0.5,1.5\n", None),  # a real header
    ],
)
def test_no_warning_when_the_first_row_is_not_a_header_of_numbers(tmp_path, text, header):
    data = Dataset(ReadOptions(str(write(tmp_path, "d.csv", text)), header=header))
    assert data.warnings == []
    data.close()


def test_a_header_of_numbers_can_be_read_as_names(tmp_path):
    data = Dataset(
        ReadOptions(str(write(tmp_path, "d.csv", "0,1,2\n0.5,1.5,2\n")), header=True, targets=["2"]), want_targets=True
    )
    assert data.warnings == [] and data.feature_names == ["0", "1"] and data.target_names == ["2"]
    data.close()


# -- 8. duplicate column names ---------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--target", "--id-column", "--features"])
def test_a_duplicate_name_used_by_name_is_an_error(nncli, tmp_path, option):
    path = write(tmp_path, "f.csv", "a,b,a,c\n1,2,3,4\n")
    assert_error(
        nncli("forward", HAND, path, option, "a"),
        1,
        "column name 'a' is not unique (columns 0 and 2): name it by 0-based index (",
        "f.csv)",
    )
    given = {"--target": {"targets": ["a"]}, "--id-column": {"id_column": "a"}, "--features": {"features": ["a"]}}[
        option
    ]
    with pytest.raises(NncliError, match=r"column name 'a' is not unique \(columns 0 and 2\)"):
        Dataset(ReadOptions(str(path), **given))


def test_a_duplicate_name_named_by_index_works_and_unused_ones_warn(nncli, tmp_path):
    path = write(tmp_path, "f.csv", "a,b,a,b,b,c\n1,2,3,4,5,6\n")
    data = Dataset(ReadOptions(str(path), features=["2", "c"]))
    assert data.feature_cols == [2, 5]
    assert data.warnings == [
        f"column name 'a' is not unique (columns 0 and 2) ({path})",
        f"column name 'b' is not unique (columns 1, 3 and 4) ({path})",
    ]
    x, _, _ = all_values(data)
    np.testing.assert_array_equal(x, [[3, 6]])
    targets = write(tmp_path, "t.csv", "y,y\n0,1\n")
    data = Dataset(
        ReadOptions(str(write(tmp_path, "d.csv", "a,b\n1,2\n")), targets_file=str(targets)), want_targets=True
    )
    assert data.warnings == [f"column name 'y' is not unique (columns 0 and 1) ({targets})"]
    data.close()


# -- 9. decimal commas -----------------------------------------------------------------------------


def test_decimal_commas_are_read_with_the_option(tmp_path, monkeypatch):
    rng = random.Random(11)
    rows = [
        (round(rng.uniform(-100, 100), rng.randint(0, 6)), rng.randint(-5, 5), round(rng.uniform(0, 1), 3))
        for _ in range(3000)
    ]
    cells = [[repr(v).replace(".", ",").removesuffix(",0") for v in row] for row in rows]
    for delimiter in (";", "\t"):
        path = tmp_path / "dc.csv"
        path.write_text(delimiter.join(["x", "y", "id"]) + "\n" + "".join(delimiter.join(c) + "\n" for c in cells))
        expected = [[float(c.replace(",", ".")) for c in row] for row in cells]  # Python's floats
        data = Dataset(ReadOptions(str(path), decimal_comma=True, targets=["y"], id_column="id"), want_targets=True)
        x, y, ids = all_values(data, 1000)
        np.testing.assert_array_equal(x, [[r[0]] for r in expected])
        np.testing.assert_array_equal(y, [[r[1]] for r in expected])
        assert ids == [c[2] for c in cells]
        # an id that is also a target (polars casts its text), and the exact parser (quoted cells)
        quoted = tmp_path / "q.csv"
        quoted.write_text(
            delimiter.join(["x", "y", "id"])
            + "\n"
            + "".join(delimiter.join([f'"{c[0]}"' if i % 7 == 0 else c[0], *c[1:]]) + "\n" for i, c in enumerate(cells))
        )
        for source in (path, quoted):
            with monkeypatch.context() as m:
                if source == path:  # prove that polars' decimal_comma read the plain file
                    m.setattr(csvread.CsvFile, "_exact_parse", lambda *a: pytest.fail("the exact parser was used"))
                data = Dataset(
                    ReadOptions(str(source), decimal_comma=True, targets=["id"], id_column="id"), want_targets=True
                )
                x2, y2, ids2 = all_values(data, 1000)
            np.testing.assert_array_equal(x2, np.array(expected)[:, :2])
            np.testing.assert_array_equal(y2, [[r[2]] for r in expected])
            assert ids2 == ids


def test_decimal_comma_refuses_points_and_comma_delimiters(tmp_path):
    path = write(tmp_path, "dc.csv", "x;y\n1,5;2\n1.500;3\n")
    with pytest.raises(NncliError, match=r"'1.500' is not a number \(with --decimal-comma, '.' is not a decimal point"):
        all_values(Dataset(ReadOptions(str(path), decimal_comma=True)))
    with pytest.raises(UsageError, match="delimiter can't be a comma"):
        Dataset(ReadOptions(str(path), decimal_comma=True, delimiter=","))
    data = Dataset(ReadOptions(str(write(tmp_path, "one.csv", "x\n1,5\n-,5\n")), decimal_comma=True))
    x, _, _ = all_values(data)
    np.testing.assert_array_equal(x, [[1.5], [-0.5]])


def test_without_the_option_a_decimal_comma_gets_a_hint(nncli, tmp_path):
    path = write(tmp_path, "dc.csv", "x;y\n1,5;2\n")
    assert_error(
        nncli("forward", HAND, path),
        1,
        "column 0 ('x'): '1,5' is not a number (add --decimal-comma if commas are decimal separators)",
        "dc.csv:2",
    )
    path = write(tmp_path, "other.csv", "x;y\n1,5,3;2\n")
    result = nncli("forward", HAND, path)
    assert_error(result, 1, "'1,5,3' is not a number")
    assert "--decimal-comma" not in result.stderr


def test_a_csv_cut_short_while_it_is_read_is_an_error_not_fewer_rows(tmp_path, monkeypatch):
    """A writer truncating the file (a log rotated) between two reads: the rows after the cut are
    gone, and the reader says so instead of ending early with fewer rows, as NDJSON's reader does."""
    from nncli.errors import NncliError
    from nncli.io import csvread

    monkeypatch.setattr(csvread, "BLOCK_BYTES", 4096)
    path = tmp_path / "cut.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i + 0.5}\n" for i in range(20_000)))
    whole = path.stat().st_size
    table = csvread.CsvFile(str(path))
    blocks = table.read([0, 1])
    rows = len(next(blocks).values)
    assert 0 < rows < 20_000
    os.truncate(path, whole // 3)
    with pytest.raises(NncliError, match=rf"the file was cut short while it was read \([\d,]+ of {whole:,} bytes\)"):
        for block in blocks:
            rows += len(block.values)
    table.close()


def test_a_file_whose_size_stays_or_grows_reads_to_its_end(tmp_path, monkeypatch):
    """Only a file that shrank is cut short: one that grows while read (a log still written) is read
    to where it ends, with no error."""
    from nncli.io import csvread

    monkeypatch.setattr(csvread, "BLOCK_BYTES", 4096)
    path = tmp_path / "grows.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(5_000)))
    table = csvread.CsvFile(str(path))
    blocks = table.read([0, 1])
    rows = len(next(blocks).values)
    with open(path, "a") as f:
        f.write("".join(f"{i},{i}\n" for i in range(5_000, 6_000)))
    rows += sum(len(b.values) for b in blocks)
    table.close()
    assert rows == 6_000


# -- 10. missing cells, read as NaN when asked (issue #26) ----------------------------------------

SPELLINGS = ["", "NA", "NaN", "nan", "null", "None", "?"]  # MISSING_TEXTS, written out: the list


def read_table(path, numeric, text=(), missing=True, **options):
    table = csvread.CsvFile(str(path), **options)
    try:
        blocks = list(table.read(numeric, text, missing=missing))
    finally:
        table.close()
    values = np.concatenate([b.values for b in blocks])
    return values, [sum((b.texts[k] for b in blocks), []) for k in range(len(text))]


def missing_rows(spellings):
    """Rows `x,y,name` with each spelling in x, then in y, then in both; the text column holds the
    spelling too (it is text, read as it is); and what x and y hold (np.nan where missing)."""
    lines, expected, names = [], [], []
    for k, cell in enumerate(spellings):
        for x, y, want in (
            (cell, f"{k}.5", [np.nan, k + 0.5]),
            (f"-{k}", cell, [-k, np.nan]),
            (cell, cell, [np.nan] * 2),
        ):
            lines.append(f"{x},{y},{cell}")
            expected.append(want)
            names.append(cell)
    return lines, expected, names


def test_missing_cells_are_nan_in_the_fast_parser(tmp_path, monkeypatch):
    """polars reads every spelling (null_values), over many blocks: the exact parser is never used,
    and a text cell `NA` stays the text NA."""
    monkeypatch.setattr(csvread, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(csvread.CsvFile, "_exact_parse", lambda *a: pytest.fail("the exact parser was used"))
    lines, expected, names = missing_rows(SPELLINGS)
    path = write(tmp_path, "m.csv", "x,y,name\n" + "".join(line + "\n" for line in lines * 200))
    values, (texts,) = read_table(path, [0, 1], [2])
    np.testing.assert_array_equal(values, expected * 200)
    assert texts == names * 200
    values, _ = read_table(path, [1])  # one column of several: the short-row check still holds
    np.testing.assert_array_equal(values, [[r[1]] for r in expected * 200])


@pytest.mark.parametrize("around", ["", " ", "  ", "\t", " \t "])
def test_missing_cells_are_nan_in_the_exact_parser(tmp_path, around):
    """Spaces and tabs around a spelling; a quoted cell sends the block to the exact parser, and a
    block without one (` NA` is a cell polars refuses) gets there too: the same values either way."""
    spellings = [around + s + around for s in SPELLINGS]
    lines, expected, names = missing_rows(spellings)
    plain = write(tmp_path, "plain.csv", "x,y,name\n" + "\n".join(lines) + "\n")
    quoted = write(tmp_path, "quoted.csv", 'x,y,name\n"1","2",q\n' + "\n".join(lines) + "\n")
    for path, first in ((plain, []), (quoted, [[1.0, 2.0]])):
        values, (texts,) = read_table(path, [0, 1], [2], delimiter=",")
        np.testing.assert_array_equal(values, first + expected)
        assert texts == ["q"] * len(first) + names


def test_missing_cells_with_decimal_commas_blank_lines_crlf_and_one_column(tmp_path, monkeypatch):
    """Each file twice: as it is, read by polars alone, and with a quoted cell, by the exact parser."""
    exact = csvread.CsvFile._exact_parse

    def both(body: str, name: str):
        path, quoted = write(tmp_path, name, body), write(tmp_path, "q" + name, body.replace("NA", '"NA"', 1))
        with monkeypatch.context() as m:
            m.setattr(csvread.CsvFile, "_exact_parse", lambda *a: pytest.fail("the exact parser was used"))
            yield path
        monkeypatch.setattr(csvread.CsvFile, "_exact_parse", exact)
        yield quoted

    rows = ["1,5;NA", ";2,5", "?;-0,25", "NaN;null"]
    text = "x;y\r\n" + "\r\n".join(rows[:2]) + "\r\n\r\n  \r\n" + "\r\n".join(rows[2:]) + "\r\n\r\n"
    for path in both(text, "dc.csv"):
        values, _ = read_table(path, [0, 1], decimal_comma=True)
        np.testing.assert_array_equal(values, [[1.5, np.nan], [np.nan, 2.5], [np.nan, -0.25], [np.nan, np.nan]])
    # one column: a blank line (or one of spaces) is no row, as pandas reads it; a spelling is NaN
    for body in (
        "x\n1\n\nNA\n   \n?\n2.5\n",
        "x\r\n1\r\n\r\nNA\r\n?\r\n2.5",
        "x\n1\nNA\n?\n2.5\n \t",
        "x\n1\nNA\n?\n2.5",
    ):
        for path in both(body, "one.csv"):
            values, _ = read_table(path, [0])
            np.testing.assert_array_equal(values, [[1.0], [np.nan], [np.nan], [2.5]])


def test_missing_cells_in_a_wide_file(tmp_path):
    """The wide-file path (WIDE_COLUMNS or more, few rows) is the exact parser: it reads them too."""
    ncols = csvread.WIDE_COLUMNS + 6
    rows = [[str(c + r) if (c + r) % 5 else SPELLINGS[(c + r) % 7] for c in range(ncols)] for r in range(3)]
    path = write(tmp_path, "wide.csv", "".join(",".join(row) + "\n" for row in rows))
    values, _ = read_table(path, list(range(ncols)), header=False)
    np.testing.assert_array_equal(
        values, [[float(c + r) if (c + r) % 5 else np.nan for c in range(ncols)] for r in range(3)]
    )


@pytest.mark.parametrize("quote", ["", '"'])
def test_with_missing_a_non_number_or_a_short_row_is_still_an_error(tmp_path, quote):
    for body, message, where in (
        ("x,y\n1,2\nNA,abc\n", "column 1 ('y'): 'abc' is not a number", "3"),
        ("x,y\n1,2\n,1.2.3\n", "column 1 ('y'): '1.2.3' is not a number", "3"),
        ("x,y\n1,2\nNA,3\n4\n", "the row has 1 cells, expected 2", "4"),  # polars reads its y as null
        ("x,y\n1,2\n\n4\n,\n", "the row has 1 cells, expected 2", "4"),
        ("x,y\n1,N/A\n", "column 1 ('y'): 'N/A' is not a number", "2"),  # the match is exact
    ):
        path = write(tmp_path, "bad.csv", body.replace("1,2", f"{quote}1{quote},2"))
        with pytest.raises(NncliError, match=re.escape(message)) as raised:
            read_table(path, [0, 1])
        assert raised.value.where == f"{path}:{where}"


def test_without_missing_a_missing_cell_is_still_an_error(tmp_path):
    for body, message in (("x,y\n1,\n", "the cell is empty"), ("x,y\n1,NA\n", "'NA' is not a number")):
        path = write(tmp_path, "m.csv", body)
        with pytest.raises(NncliError, match=re.escape(f"column 1 ('y'): {message}")):
            read_table(path, [0, 1], missing=False)


def test_a_row_of_empty_tab_cells_beside_a_blank_line_is_not_dropped(tmp_path):
    """`\\t` in a two-column TSV is a row of two empty cells (Python's csv reads it so), not a blank
    line: the fast parser's retry without blank lines dropped it when a blank line was near, and the
    row was gone without a word (an error without the blank line)."""
    path = write(tmp_path, "t.tsv", "a\tb\n1\t2\n\n\t\n3\t4\n")
    with pytest.raises(NncliError, match=re.escape("column 0 ('a'): the cell is empty")):
        read_table(path, [0, 1], missing=False)
    values, _ = read_table(path, [0, 1])
    np.testing.assert_array_equal(values, [[1, 2], [np.nan, np.nan], [3, 4]])


_EASY = ["1", "-2.5", "1e3", "inf", "", " ", "\t", *SPELLINGS]  # what polars reads: the fast path's own
_CELLS = [*_EASY, " 3 ", " NA", "?\t", "N/A", "abc", "Nu"]  # and what sends a block to the exact parser


@hypothesis.settings(
    max_examples=300, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)
@hypothesis.given(
    data=st.data(),
    ncols=st.integers(1, 3),
    delimiter=st.sampled_from([",", "\t"]),
    crlf=st.booleans(),
    text=st.sampled_from([(), (0,), (-1,)]),
    missing=st.booleans(),
)
def test_polars_agrees_with_the_exact_parser_on_missing_cells(tmp_path, data, ncols, delimiter, crlf, text, missing):
    """Whatever the block (short rows, blank lines, lines of spaces, words polars does not know),
    the fast parser gives the exact parser's values and texts, or leaves the block to it."""
    cells = st.sampled_from(data.draw(st.sampled_from([_EASY, _CELLS])))
    row = st.one_of(st.lists(cells, min_size=ncols, max_size=ncols), st.lists(cells, max_size=ncols + 1))
    rows = data.draw(st.lists(row, min_size=1, max_size=10))
    table = csvread.CsvFile(str(write(tmp_path, "h.csv", delimiter.join(f"c{i}" for i in range(ncols)) + "\n")))
    table.close()
    end = "\r\n" if crlf else "\n"
    block = "".join(delimiter.join(row) + end for row in rows).encode()
    numeric, text = list(range(ncols)), [t % ncols for t in text]
    fast = csvread._fast_parse(block, len(rows), ncols, delimiter, numeric, text, missing=missing)
    try:
        exact = table._exact_parse(block, 2, numeric, text, missing)
    except NncliError:
        assert fast is None
        return
    if fast is not None:
        np.testing.assert_array_equal(fast[0], exact[0])
        assert fast[1] == exact[1]
