"""Column lists as users write them: `--features a,b,c`, `--features a --features b`, `features="a,b"`.

The rule, one for the CLI and the library: a text is a comma list, read as one CSV row, so a
column whose name holds a comma is written in double quotes, as in the file's header
(`--features '"price, usd",qty'`), or chosen by its 0-based index. A Python list (or tuple) is
taken item by item as given: `features=["price, usd", "qty"]`. Each --features or --target value
on the command line is a text, so each is split.
"""

from __future__ import annotations

from typing import Any

from nncli.errors import UsageError


def column_list(value: Any, option: str = "features") -> list[str]:
    """None -> []; a text -> its comma list; a number -> one 0-based index; a list -> its items."""
    if value is None:
        return []
    if isinstance(value, str):
        return split_columns(value, option)
    if isinstance(value, int):
        return [str(value)]
    return [str(v) for v in value]


def split_columns(text: str, option: str) -> list[str]:
    """One text -> the columns it names; `a,b` is two columns, `"a,b"` one."""
    if "," not in text and '"' not in text:
        return [text]  # the common case, untouched (a name with spaces around it stays as given)
    import csv

    try:
        names = next(csv.reader([text], skipinitialspace=True, strict=True), [])
    except csv.Error as e:
        raise UsageError(f"{option} {text!r}: {e} (a column list is read as one CSV row)") from None
    if not names or any(not name.strip() for name in names):
        raise UsageError(f"{option} {text!r}: an empty column name (a comma too many?)")
    return names


def split_each(values: list[str] | None, option: str) -> list[str]:
    """A repeatable option's values (each a comma list) -> every column they name, in order."""
    return [name for value in values or [] for name in split_columns(value, option)]
