"""A progress bar on standard error for long reads: only on a terminal, only after a moment."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

DELAY_SECONDS = 0.5


def stderr_is_terminal() -> bool:
    """Whether standard error is a terminal; closed (`2>&-`: sys.stderr is None) it is not, and the
    run goes on without a bar rather than failing on it."""
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (OSError, ValueError):
        return False


def tracked(batches: Iterable, source, quiet: bool) -> Iterator:
    """Pass batches through, showing rows, bytes and rows/s once the work has taken DELAY_SECONDS."""
    if quiet or not stderr_is_terminal():
        yield from batches
        return
    start = time.monotonic()
    bar = task = None
    rows = 0
    try:
        for batch in batches:
            rows += len(batch)
            if bar is None and time.monotonic() - start > DELAY_SECONDS:
                bar, task = _start(source)
            if bar is not None:
                elapsed = max(time.monotonic() - start, 1e-9)
                bar.update(task, completed=source.bytes_read, rows=rows, rate=rows / elapsed)
            yield batch
    finally:
        if bar is not None:
            bar.stop()


def _start(source):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from nncli.views.render import console

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]:,} rows"),
        TextColumn("{task.fields[rate]:,.0f} rows/s"),
        TimeElapsedColumn(),
        console=console(stderr=True),
        transient=True,
    )
    task = bar.add_task(f"reading {source.name}", total=source.total_bytes, rows=0, rate=0.0)
    bar.start()
    return bar, task


class EpochBar:
    """A bar over epochs on standard error, showing the latest losses; silent off a terminal or with --quiet."""

    def __init__(self, epochs: int, quiet: bool) -> None:
        self.bar = None
        if quiet or not stderr_is_terminal():
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from nncli.views.render import console

        self.bar = Progress(
            TextColumn("epoch"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[losses]}"),
            TimeElapsedColumn(),
            console=console(stderr=True),
            transient=True,
        )
        self.task = self.bar.add_task("train", total=epochs, losses="")
        self.bar.start()

    def update(self, record) -> None:
        if self.bar is not None:
            val = f"  val {record.val_loss:.4f}" if record.val_loss is not None else ""
            self.bar.update(self.task, advance=1, losses=f"loss {record.train_loss:.4f}{val}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
