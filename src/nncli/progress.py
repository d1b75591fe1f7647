"""A progress bar on standard error for long reads: only on a terminal, only after a moment."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator

DELAY_SECONDS = 0.5


def tracked(batches: Iterable, source, quiet: bool) -> Iterator:
    """Pass batches through, showing rows, bytes and rows/s once the work has taken DELAY_SECONDS."""
    if quiet or not sys.stderr.isatty():
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

    from nncli.render import console

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
