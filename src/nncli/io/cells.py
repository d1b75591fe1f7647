"""A cell's number, as both readers (CSV and typed tables) parse it, and the block of rows they yield.

Its own module so that csvread and tables share it without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A missing cell, as every reader sees it (io/preprocess/missing.py says why these): the text of a
# cell, spaces and tabs around it removed, is one of these. Here, below csvread, so that the CSV
# reader can read them as NaN when asked without importing the preprocessing.
MISSING_TEXTS = ("", "NA", "NaN", "nan", "null", "None", "?")
AROUND = " \t"  # what is stripped from a cell before it is compared with MISSING_TEXTS
_MISSING = frozenset(MISSING_TEXTS)


def is_missing_text(cell: str) -> bool:
    """A text cell that stands for a missing value (spaces and tabs around it ignored)."""
    return cell.strip(AROUND) in _MISSING


# A cell that is a number once its comma is a decimal point: worth a hint in the error message.
_DECIMAL_COMMA = re.compile(r"^\s*[+-]?[0-9]+,[0-9]+\s*$")


def parse_number(cell: str, decimal_comma: bool = False) -> float | None:
    """The number a cell holds, or None: Python's float() grammar in ASCII, without digit separators.

    float() also takes Unicode digits (`٣`, `１`) and Unicode spaces; a CSV holding those is not
    what a numeric column means, and polars refuses them too, so both parsers agree.
    With `decimal_comma`, `,` is the decimal point and a `.` is refused: `1.234` could be a
    thousands separator, and reading it as 1.234 would be silently wrong.
    """
    if "_" in cell or not cell.isascii():
        return None
    if decimal_comma:
        if "." in cell:
            return None
        cell = cell.replace(",", ".")
    try:
        return float(cell)
    except ValueError:
        return None


def number_problem(cell: str, decimal_comma: bool = False) -> str:
    """Why a cell is not a number, for `<column>: <problem>` messages."""
    if not cell.strip():
        return "the cell is empty"
    shown = cell if len(cell) <= 40 else cell[:37] + "..."
    problem = f"{shown!r} is not a number"
    if decimal_comma and "." in cell:
        return problem + " (with --decimal-comma, '.' is not a decimal point; thousands separators are not read)"
    if not decimal_comma and _DECIMAL_COMMA.match(cell):
        return problem + " (add --decimal-comma if commas are decimal separators)"
    return problem


@dataclass
class Block:
    """Parsed rows of one block: selected numeric columns, text columns, and the row count before it."""

    values: object  # numpy float64 array (rows, len(numeric))
    texts: list  # one list of strings per text column
    first_row: int
