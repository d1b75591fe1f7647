"""Housekeeping: clean removes what a killed run left (temporary files whose writer is gone)."""

from __future__ import annotations

from typing import Annotated

import typer

DryRun = Annotated[bool, typer.Option("--dry-run", "-n", help="List what would be removed; remove nothing.")]


def clean(
    folders: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="FOLDER", help="Folders to sweep (default: . and the temporary folder).", show_default=False
        ),
    ] = None,
    dry_run: DryRun = False,
) -> None:
    """Remove nncli's temporary files left by a killed run (SIGKILL, a crash): `.NAME.nncli-PID-XXXXXXXX.tmp` that are
    yours and whose PID is gone. Names are printed with control characters escaped (a newline as \\x0a)."""
    import tempfile

    from nncli.io.output import remove_stale_temp_files, stale_temp_files

    for folder in folders or [".", tempfile.gettempdir()]:
        for path in (stale_temp_files if dry_run else remove_stale_temp_files)(folder):
            typer.echo(("would remove " if dry_run else "removed ") + shown_path(path), err=True)


def shown_path(path: str) -> str:
    """A path as one line of plain text: control characters (a newline would forge a second "removed"
    line, an escape sequence would drive the terminal), invisible format characters and undecodable
    bytes written as \\xNN or \\uNNNN, and a backslash doubled, so the text names exactly one path."""
    import unicodedata

    out = []
    for c in path:
        if c == "\\":
            out.append("\\\\")
        elif 0xDC80 <= ord(c) <= 0xDCFF:  # a byte that is not UTF-8, as os.fsdecode keeps it
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)
