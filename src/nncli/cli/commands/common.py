"""What every command does the same way at the edge: notes and warnings for people on standard
error, the progress hook, and reports written to their resolved output target."""

from __future__ import annotations

import os

from nncli.views.render import Report, write_report
from nncli.views.target import OutputTarget


def idle_threads_sleep() -> None:
    """Before torch loads, for commands that read while they compute: torch's idle OpenMP threads
    sleep instead of spinning, which starved the CSV reader thread (1M-row forward on 2 cores:
    2.99 s -> 2.49 s). Timing only, never a result; a user's OMP_WAIT_POLICY wins. Not for train,
    whose many small steps pay for the wake-ups (one epoch: 5.2 s -> 5.8 s)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def progress(target: OutputTarget):
    """The library's progress hook: a bar on standard error for batches read, unless --quiet."""
    from nncli.views.progress import tracked

    return lambda batches, source: tracked(batches, source, target.quiet)


def note(message: str) -> None:
    """A line for people on standard error, never mixed into the data on standard output."""
    import sys

    from nncli.errors import printable
    from nncli.views.render import encodable

    if sys.stderr is None:  # closed (2>&-): nowhere to show it, and no reason to fail the run
        return
    # Written as plain text, not through rich: rich ends the process (SystemExit 1) when the stream's
    # reader is gone. A line that cannot be shown (full, closed pipe) is lost; the run goes on.
    # printable: a file or column name in it must not act on the terminal (ESC[2J, BEL), as in error lines.
    try:
        sys.stderr.write(encodable(printable(message), getattr(sys.stderr, "encoding", None)) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def warn(message: str) -> None:
    note(f"warning: {message}")


def emit(target: OutputTarget, report: Report) -> None:
    """Write a whole result in the chosen format, to standard output or -o."""
    with target.stream() as out:
        write_report(report, target.format, out, target.precision)
