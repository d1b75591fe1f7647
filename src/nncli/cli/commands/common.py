"""What every command does the same way at the edge: output options and checks, notes and warnings
for people on standard error, and reports written in the chosen format."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from nncli.io.output import output_stream
from nncli.views.render import Report, resolve_format, write_report


@dataclass
class OutputOptions:
    format: str | None = None
    output: str | None = None
    precision: int | None = None
    force: bool = False
    quiet: bool = False
    inputs: list = field(default_factory=list)  # paths this command reads, never to be overwritten
    together: object = None  # an output.Together: -o is renamed into place only when the whole run succeeds

    @property
    def resolved_format(self) -> str:
        return resolve_format(self.format, self.output)

    def check(self, extra: dict | None = None) -> None:
        """Check -o (and the command's other outputs) and the output format before any work is done."""
        check_outputs({"-o": self.output, **(extra or {})}, self.inputs, self.force)
        self.resolved_format  # noqa: B018  (an unknown -o suffix, or parquet to a terminal, is refused now)

    @contextlib.contextmanager
    def stream(self):
        """Standard output or -o, compressed when -o ends in .gz, .bz2, .xz or .zst."""
        from nncli.views.render import output_compression

        compression = output_compression(self.output)
        with output_stream(self.output, "-o", self.together) as f:
            if not compression:
                yield f
                return
            from nncli.io.compression import compressing

            with compressing(f, compression) as packed:
                yield packed


def check_outputs(outputs: dict, inputs: list, force: bool) -> None:
    """Every output path checked before any work: none is an input (without --force), none is named
    twice, each can be written (output.check_output says what that takes)."""
    from nncli.io.output import check_distinct_outputs, check_output

    named = {k: v for k, v in outputs.items() if v and v != "-"}
    check_distinct_outputs(named)
    for option, path in named.items():
        check_output(path, inputs, force, option)


def idle_threads_sleep() -> None:
    """Before torch loads, for commands that read while they compute: torch's idle OpenMP threads
    sleep instead of spinning, which starved the CSV reader thread (1M-row forward on 2 cores:
    2.99 s -> 2.49 s). Timing only, never a result; a user's OMP_WAIT_POLICY wins. Not for train,
    whose many small steps pay for the wake-ups (one epoch: 5.2 s -> 5.8 s)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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


def emit(oopts: OutputOptions, inputs: list, report: Report) -> None:
    """Write a whole result in the chosen format, to standard output or -o."""
    oopts.inputs = inputs
    with oopts.stream() as out:
        write_report(report, oopts.resolved_format, out, oopts.precision)


def caption(text: str):
    from rich.text import Text

    from nncli.errors import printable

    return Text(printable(text), style="dim")  # it may name the user's spec, file or columns


def rows_text(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")
