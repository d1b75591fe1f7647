"""Housekeeping: clean removes what a killed run left (temporary files whose writer is gone)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

DryRun = Annotated[bool, typer.Option("--dry-run", "-n", help="List what would be removed; remove nothing.")]


def clean(
    folders: Annotated[Optional[list[str]], typer.Argument(metavar="FOLDER", help="Folders to sweep (default: . and the temporary folder).", show_default=False)] = None,
    dry_run: DryRun = False,
) -> None:
    """Remove nncli's temporary files left by a killed run (SIGKILL, a crash): `.NAME.nncli-PID-XXXX.tmp` whose PID is gone."""
    import tempfile

    from nncli.output import remove_stale_temp_files, stale_temp_files

    for folder in folders or [".", tempfile.gettempdir()]:
        for path in (stale_temp_files if dry_run else remove_stale_temp_files)(folder):
            typer.echo(("would remove " if dry_run else "removed ") + path, err=True)
