"""The one error type that the CLI turns into `error: <what> (<where>)` and exit code 1."""

from __future__ import annotations


class NncliError(Exception):
    """A problem with the user's input (a spec, a CSV, a weights file, a path), never a bug."""

    def __init__(self, what: str, where: str | None = None) -> None:
        self.what = what
        self.where = where
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.what} ({self.where})" if self.where else self.what


def printable(text: str) -> str:
    """`text` with each character a terminal would act on (ESC and its sequences, BEL, CR, newlines)
    written as a repr writes it (`\\x1b`, `\\x07`, `\\n`), as cells are shown: a file name or a cell
    is the user's text, and must not retitle, clear or rewrite the terminal it is reported on."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UsageError(NncliError):
    """A bad combination of command-line options: exit code 2, like Typer's own usage errors."""


class NncliWarning(UserWarning):
    """Something the user should know (a NaN in the data, a loss that does not fit the head); the
    library issues it through `warnings`, the CLI prints it as one `warning:` line."""
