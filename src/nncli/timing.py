"""Where the time goes: seconds per phase of one run, kept only when NNCLI_TIMINGS is set.

The phases follow the data: start-up (Python, the CLI and polars), torch's import, parse (bytes
read and split into numbers), convert (numbers into the model's row-major batches), forward (the
model and its head), format (outputs as text), write (text to the output). Each phase is timed in
the thread that runs it, so phases that overlap (the reader thread parsing while the main thread
imports torch or computes) add up to more than the wall time: the sum says what the work costs,
the wall time says how well it overlapped. `benchmarks/bench.py` prints the breakdown.

Off (the default), `phase()` hands back one shared do-nothing context: nothing is measured.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

ON = os.environ.get("NNCLI_TIMINGS", "") not in ("", "0")  # as NNCLI_DEBUG: 0 is off
START = time.perf_counter()  # close enough to the process's start: entry.py imports this module first
PHASES = ("start-up", "import torch", "parse", "convert", "forward", "format", "write")  # then the rest, by name

_lock = threading.Lock()
_seconds: dict[str, list[float]] = {}  # phase -> [wall seconds, CPU seconds of the thread that ran it]
_local = threading.local()  # this thread's open phases: time goes to the innermost one only
_off = contextlib.nullcontext()


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.thread_time()


def _charge(name: str, since: tuple[float, float], now: tuple[float, float]) -> None:
    with _lock:
        total = _seconds.setdefault(name, [0.0, 0.0])
        total[0] += now[0] - since[0]
        total[1] += now[1] - since[1]


class _Timed:
    """A phase of this thread; entering it pauses the phase around it, so no second counts twice."""

    __slots__ = ("name", "since")

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        now = _clocks()
        stack = _local.__dict__.setdefault("stack", [])
        if stack:
            _charge(stack[-1].name, stack[-1].since, now)
        stack.append(self)
        self.since = now

    def __exit__(self, *exc) -> None:
        now = _clocks()
        stack = _local.stack
        _charge(self.name, self.since, now)
        stack.pop()
        if stack:
            stack[-1].since = now


def phase(name: str):
    """`with phase("parse"): ...` counts the block's time as that phase (when timings are on)."""
    return _Timed(name) if ON else _off


def add(name: str, seconds: float) -> None:
    """Count `seconds` measured elsewhere (start-up, before this module could time it) as a phase."""
    if ON:
        with _lock:
            total = _seconds.setdefault(name, [0.0, 0.0])
            total[0] += seconds
            total[1] += seconds


def timed(name: str, items):
    """Yield from `items`, counting the time spent producing each item as phase `name`."""
    if not ON:
        yield from items
        return
    items = iter(items)
    while True:
        with _Timed(name):
            try:
                item = next(items)
            except StopIteration:
                return
        yield item


def restart() -> None:
    """Forget every phase: a forked reader process counts its own from here."""
    with _lock:
        _seconds.clear()
    _local.__dict__.clear()


def phases() -> dict:
    """{phase: [wall, cpu]} so far, for merge() in another process."""
    with _lock:
        return {name: list(total) for name, total in _seconds.items()}


def merge(other: dict) -> None:
    """Add another process's phases (the reader process's parse and convert) to this one's."""
    with _lock:
        for name, (wall, cpu) in other.items():
            total = _seconds.setdefault(name, [0.0, 0.0])
            total[0] += wall
            total[1] += cpu


def report() -> dict:
    """{phase: {"wall": s, "cpu": s}} in pipeline order, then the process's wall (since start-up),
    user and system CPU seconds (with those of child processes that have ended). A phase's "cpu" is
    its own thread's: the helper threads of polars and torch are in the process's user time only."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # a reader process, once it has ended
    with _lock:
        seconds = {name: {"wall": round(w, 4), "cpu": round(c, 4)} for name, (w, c) in _seconds.items()}
    ordered: dict[str, object] = {name: seconds.pop(name) for name in PHASES if name in seconds}
    ordered.update(sorted(seconds.items()))
    ordered.update(
        wall=round(time.perf_counter() - START, 4),
        user=round(usage.ru_utime + reaped.ru_utime, 4),
        system=round(usage.ru_stime + reaped.ru_stime, 4),
    )
    return ordered
