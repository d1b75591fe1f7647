"""Read DATA in a child process, so that parsing and torch's import run on two cores at once.

Why a process and not a thread: `import torch` holds the GIL for most of its ~1 s, and a reader
thread needs the GIL ~10 times per 4 MiB block (read, cut, count, parse, convert), each time
waiting up to the 5 ms switch interval. Measured on 2 cores: by the time the model was built, a
reader thread had parsed ~300,000 rows of 1,000,000. A forked child has its own interpreter and
GIL; the same reading code (csvread, data) runs there unchanged.

What the parent sees is what a reader thread would give it: the same batches in the same order,
the same error (a bad cell on line 200,001) after batches of the rows before it, the bytes read so
far for the progress bar, and the child's parse and convert phases in NNCLI_TIMINGS. (How many rows
come before an error depends on the block size: a block with a bad cell yields none of its rows,
and the child cuts 2 MiB blocks where the thread cuts 4 MiB.)

How:
- fork() only from a process with one thread (the CLI forks before torch, polars and numpy's
  BLAS have started any): a forked copy of a multithreaded process may hold a lock that no thread
  of it will ever release (polars' pool, torch's OpenMP). Otherwise (a library caller's process
  with threads, or off Linux) the caller reads in a thread as before; NNCLI_READER=thread asks
  for the thread.
- The child runs at lower priority (nice 10): the main process, importing torch and then
  computing, is the critical path; the reader takes every cycle it leaves.
- Once the parent takes rows faster than they come (the ring less than half full), the child
  parses two blocks at once (csvread.Pace.starved); before that (torch importing), one.
- The child writes each batch's arrays into a ring of shared memory (RING_BYTES: the read-ahead)
  and sends a short pickled note through a pipe: where the arrays are, and the bytes read. The
  parent copies the arrays out (a batch may live as long as the caller likes) and acknowledges
  through a second pipe, which frees the space for the child.
- The child owns nothing of the parent's: a terminating signal kills it with the default action
  (the parent's handlers, which remove unfinished output files, are reset before it runs any
  code), it leaves when a pipe to the parent closes (the parent has gone), and it always ends in
  os._exit (no atexit, no flushing of the parent's buffers). The parent reaps it, so its CPU time
  is in the parent's rusage (and in wait4's figures for the whole run).

Which reader reads is chosen in one place, start_reading: a ProcessReader where the process may
fork, else a ThreadReader (reading.prefetched); both are iterated, and closed, the same way.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from nncli.io import csvread
from nncli.io.context import LIBRARY, RunContext
from nncli.io.reading import ThreadReader, prefetched

# Shared memory for batches the child has parsed ahead of the parent: what it parses while torch
# imports (~1 s, ~500,000 rows of 32 float32 features on one core) waits here. The child cuts
# 2 MiB blocks where a reader thread cuts 4 MiB (csvread.BLOCK_BYTES): polars takes ~10x a block's
# size while it parses one (54 MiB over the base for 4 MiB blocks, 35 for 2, 26 for 1) but parses
# small blocks slower (2.88, 3.08, 3.22 ns a byte). Measured on 2 cores, 1M x 32, peak memory of
# both processes (sampled PSS): ring 64 MiB + 4 MiB blocks 452 MiB; 64 + 1: 414; 48 + 1: 389;
# 40 + 2: 388, and against 48 + 1 in 8 alternating runs 2.21 s against 2.24 s, CPU 3.27 s
# against 3.43 s.
RING_BYTES = 40 << 20
CHILD_BLOCK_BYTES = 2 << 20
# Below this share of the ring in use, the parent (done importing torch) takes rows as fast as
# they come: the child parses a second block at once (csvread.Pace.starved). Measured on 2 cores, 1M x 32,
# 4 alternating runs: one block at a time 2.13 s, two always 1.93 s but +10 MiB at the peak (the
# ring full), two while starved 1.94-2.06 s and no more memory at the peak (25%, 50%, 75%: level).
# The main process had waited ~0.45 s for rows after the import; now ~0.35 s. A ring of 48 MiB
# would save ~0.06 s more for ~8 MiB more at the peak (393-398 MiB): too near 400.
STARVED = 0.5
_ALIGN = 64
_LENGTH = struct.Struct("<Q")


def start_reading(
    produce: Callable[[], Iterable],
    files: list,
    depth: int,
    context: RunContext = LIBRARY,
    rewind: list | None = None,
) -> ThreadReader | ProcessReader:
    """The one place the reader is chosen: `produce()`'s items, read ahead of the caller (up to
    `depth` items in a thread, RING_BYTES in a child process). A child where the process may fork
    (can_fork), and a thread where it may not, where the fork is refused, or where the child fails at
    its start (see read_in_child). `files`: the open tables whose progress is followed; `rewind`: every
    open file the child may read, those and others (a targets file)."""

    def in_thread() -> ThreadReader:
        return prefetched(produce(), depth=depth)

    if can_fork():  # parsing on its own core while torch imports
        if context.share_numpy:
            share_numpy()
        try:
            return read_in_child(produce, files, instead=in_thread, rewind=rewind)
        except OSError:  # fork or the shared memory refused (a process limit): a thread reads
            pass
    return in_thread()


def share_numpy() -> None:
    """numpy imported now, its BLAS (OpenBLAS) with one thread: the process stays able to fork."""
    if "numpy" in sys.modules:
        return
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        import numpy  # noqa: F401
    finally:
        if saved is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved


def can_fork() -> bool:
    """Whether reading may go to a forked child: Linux, one thread, not turned off (NNCLI_READER=thread)."""
    choice = os.environ.get("NNCLI_READER", "")
    if choice == "thread" or not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1 and _fds_to_spare()
    except OSError:
        return False


# Descriptors the process reader needs beyond the thread's: two pipes in the parent, and in the child
# polars' runtime (epoll, eventfds) and the data file. Measured: forward of a CSV ran with the
# process at `prlimit --nofile=12` (the thread from 9); below, polars panicked in one process or the
# other, or wait4 could not import its `resource` module. So few are rare enough to read in a thread.
SPARE_FDS = 16


def _fds_to_spare() -> bool:
    """Whether RLIMIT_NOFILE leaves SPARE_FDS descriptors free beyond those open now."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft == resource.RLIM_INFINITY or soft - len(os.listdir("/proc/self/fd")) >= SPARE_FDS


def read_in_child(
    produce: Callable[[], Iterable],
    files: list,
    ring_bytes: int | None = None,
    instead: Callable[[], Iterator] | None = None,
    rewind: list | None = None,
) -> ProcessReader:
    """Start a child that iterates `produce()` and hands each item over; iterate the result.

    `files`: the open tables whose `bytes_read` the parent should keep up to date (progress).
    `instead()`, if given: what to iterate when the child fails before its first item with an error
    that is not the user's (it could not start polars' threads, or open a file: a process or file
    limit), provided the files can be read again from where they were (see _Offsets): `rewind`, every
    open file the child may read (`files` and, say, a targets file; default `files`).
    OSError: the child could not be started (the caller reads in a thread instead)."""
    import mmap
    import resource  # noqa: F401  os.wait4 imports it to give the child's rusage: near a file limit, too late
    import signal

    opened = files if rewind is None else rewind
    offsets = _Offsets(opened) if instead is not None else None
    ring = mmap.mmap(-1, ring_bytes or RING_BYTES)  # MAP_SHARED | MAP_ANONYMOUS: the child's writes are seen here
    notes_r, notes_w = os.pipe()
    frees_r, frees_w = os.pipe()
    parent = os.getpid()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())  # no handler runs in between
    try:
        try:
            pid = os.fork()
        except OSError:  # no more processes allowed (EAGAIN), no memory: the caller reads in a thread
            for fd in (notes_r, notes_w, frees_r, frees_w):
                os.close(fd)
            ring.close()
            raise
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            try:
                os.close(notes_r)
                os.close(frees_w)
                _quiet_stderr()
                _reset_signals()
                _die_with(parent)
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                _child(produce, files, opened, ring, notes_w, frees_r)
            finally:
                os._exit(0)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # (the child never gets here)
    os.close(notes_w)
    os.close(frees_r)
    return ProcessReader(
        pid, ring, notes_r, frees_w, files, instead if offsets is not None and offsets.ok else None, offsets
    )


class _Offsets:
    """Where each file's descriptor was when the child was forked: the child reads through the same
    open files, so their offsets move in both processes. Put back, the parent can read them again
    from the start of the data (its buffers were left where they were). Not for a pipe (ok False)."""

    def __init__(self, files) -> None:
        self.at: list = []
        self.ok = True
        for f in files:
            stream = getattr(f, "stream", None)
            if stream is None:
                continue  # a table file: polars (or its bytes in memory) read it, not a shared descriptor
            try:
                fd = stream.fileno()
                self.at.append((fd, os.lseek(fd, 0, os.SEEK_CUR)))
            except (OSError, ValueError, AttributeError):
                self.ok = False

    def restore(self) -> None:
        for fd, at in self.at:
            os.lseek(fd, at, os.SEEK_SET)


def _die_with(parent: int) -> None:
    """SIGKILL this child when the parent dies (even by SIGKILL): a child blocked reading a pipe
    that never closes would otherwise outlive it."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(0)


def _quiet_stderr() -> None:
    """The child's standard error to /dev/null: it says everything through its pipe (an error with
    its traceback, shown by --debug), but polars' threads print their Rust panics there, with a
    backtrace each under RUST_BACKTRACE: thousands of lines when a process limit refuses them
    threads. NNCLI_DEBUG=1 keeps it."""
    if os.environ.get("NNCLI_DEBUG", "") not in ("", "0"):
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    os.dup2(null, 2)
    os.close(null)


def _reset_signals() -> None:
    """Every Python-level handler back to the default: the parent's would remove its files."""
    import signal

    for number in signal.valid_signals():
        try:
            if callable(signal.getsignal(number)):
                signal.signal(number, signal.SIG_DFL)
        except (OSError, ValueError, TypeError):
            pass


# -- the child --------------------------------------------------------------------------------------


def _child(produce, files, opened, ring, notes: int, frees: int) -> None:  # pragma: no cover - runs in the child
    import gc
    import traceback

    from nncli import timing

    timing.restart()
    # Lower priority (nice 10): when both processes want the cores, the main process (importing
    # torch, then computing: the critical path) gets them, and the reader takes every cycle it
    # leaves, with polars' whole pool. Measured (2 cores): a pool of one thread at normal priority
    # left a core idle once torch had imported; a pool of two at normal priority slowed the import.
    try:
        os.nice(10)
    except OSError:
        pass
    # numpy's BLAS threads spin for ~0.1 s of CPU after its import, and the reader never multiplies.
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    # polars installs a SIGINT handler of its own when imported (sigaction, SA_RESTART): imported
    # here, then SIGINT back to the default, so that a Ctrl-C ends the reader at once
    import signal

    import polars  # noqa: F401

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # Reading makes no reference cycles worth collecting in a process this short-lived, and a
    # collection would walk every object inherited from the parent (gc_collect_main: ~4% of the
    # reader's CPU in perf).
    gc.disable()
    space = _Ring(len(ring), frees)
    view = memoryview(ring)
    # the child's own copies of the open CSV files: smaller blocks, and a second parser while the parent waits
    for f in opened:
        if isinstance(f, csvread.CsvFile):
            f.pace = csvread.Pace(CHILD_BLOCK_BYTES, space.starved)
    sent = False
    try:
        try:
            for item in produce():
                buffers: list = []
                note: tuple
                meta = pickle.dumps(item, protocol=5, buffer_callback=buffers.append)
                raws = [b.raw() for b in buffers]
                sizes = [_aligned(r.nbytes) for r in raws]
                start = space.allocate(sum(sizes)) if raws else 0
                if not raws:  # nothing out of band (no arrays): the note is the item, no space taken
                    note = ("item", meta, [], _progress(files))
                elif start is None:  # larger than the ring can hold at once: in the note itself
                    note = ("item", pickle.dumps(item, protocol=5), None, _progress(files))
                else:
                    regions, at = [], start
                    for raw, size in zip(raws, sizes):
                        view[at : at + raw.nbytes] = raw
                        regions.append((at, raw.nbytes))
                        at += size
                    note = ("item", meta, regions, _progress(files))
                _send(notes, note)
                sent = True
        except (BrokenPipeError, _ParentGone):
            return  # the parent has gone
        except BaseException as e:
            error = e
            error_text = traceback.format_exc()
        else:
            _send(notes, ("done", timing.phases(), _progress(files)))
            return
        try:
            blob = pickle.dumps(error)
            pickle.loads(blob)
        except Exception:
            blob = pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
        _send(notes, ("error", blob, error_text, sent))
    except BrokenPipeError:
        return


class _ParentGone(Exception):
    pass


class _Ring:
    """First-in first-out allocation in the shared ring: the parent frees in the order it was given."""

    def __init__(self, size: int, frees: int) -> None:
        from collections import deque

        self.size, self.frees = size, frees
        os.set_blocking(frees, False)  # read in _drain at every allocation, waited for in _wait
        self.live: deque = deque()  # (start, end) of regions the parent has not acknowledged
        self.head = 0  # where the newest region ends
        self.used = 0  # bytes in live regions
        self.taking = False  # whether the parent has taken anything yet (it first imports torch)

    def starved(self) -> bool:
        """Whether the parent, taking rows by now, has taken nearly everything given (less than
        STARVED of the ring left): after torch's import it takes them faster than one block at a
        time is parsed. Before, an empty ring means only that the parent is still importing."""
        try:
            self._drain()
        except OSError:
            return False
        return self.taking and self.used < self.size * STARVED

    def allocate(self, n: int):
        if n > self.size // 2:
            return None
        self._drain()  # acknowledgements come one a batch: read them as they come, or the pipe fills
        while True:
            start = self._fit(n)
            if start is not None:
                self._take(start, n)
                return start
            self._wait()

    def _take(self, start: int, n: int) -> None:
        self.live.append((start, start + n))
        self.head = start + n
        self.used += n

    def _fit(self, n: int):
        if not self.live:
            return 0
        tail = self.live[0][0]
        if self.head > tail:  # live: [tail, head); free: [head, size) and [0, tail)
            if self.size - self.head >= n:
                return self.head
            return 0 if n < tail else None  # strictly less: head == tail would read as empty
        return self.head if self.head + n < tail else None  # live wraps: free is [head, tail)

    def _wait(self) -> None:
        """Until the parent acknowledges at least one region."""
        import select

        select.select([self.frees], [], [])
        if not self._drain():
            raise _ParentGone

    def _drain(self) -> bool:
        """Free what the parent has acknowledged so far, without waiting; False once it has gone."""
        while True:
            try:
                acknowledged = os.read(self.frees, 65536)
            except BlockingIOError:
                return True
            if not acknowledged:
                return False
            self.taking = True
            for _ in acknowledged:
                start, end = self.live.popleft()
                self.used -= end - start


def _send(fd: int, note) -> None:
    data = pickle.dumps(note, protocol=5)
    left = memoryview(_LENGTH.pack(len(data)) + data)
    while left:
        left = left[os.write(fd, left) :]


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _progress(files) -> list:
    return [f.bytes_read for f in files]


# -- the parent -------------------------------------------------------------------------------------


class ProcessReader:
    """The child's items, in order: iterate it; close() stops the child (at any point) and reaps it."""

    def __init__(self, pid: int, ring, notes: int, frees: int, files, instead=None, offsets=None) -> None:
        self.pid: int | None = pid  # None once reaped
        self._ring, self._notes, self._frees, self._files = ring, notes, frees, files
        self._instead, self._offsets, self._given = instead, offsets, False
        self._status: int | None = None  # the child's wait status, once reaped
        self._other: Iterator | None = None  # what instead() gave, once the child failed at its start
        self._view: memoryview | None = memoryview(ring)
        self._started = time.perf_counter()
        self._items = self._receive_all()
        self._closed = False

    def __iter__(self):
        return self._items

    def __next__(self):
        return next(self._items)

    def _receive_all(self):
        from nncli import timing
        from nncli.timing import phase

        failed_to_start = False
        try:
            while True:
                with phase("wait for data"):
                    note = self._receive()
                if note is None:
                    self._reap(kill=False)
                    signaled = self._status is not None and os.WIFSIGNALED(self._status)
                    if (
                        not self._given
                        and self._instead is not None
                        and (not signaled or os.WTERMSIG(self._status) in _OWN_SIGNALS)
                    ):
                        failed_to_start = True  # an import refused (a file limit), polars aborted: before a word
                        break
                    if signaled:
                        # kill -9, the OOM killer: the user's or the system's doing, not a bug
                        from nncli.errors import NncliError

                        names = ", ".join(getattr(f, "name", "?") for f in self._files) or None
                        raise NncliError(f"the reader process was killed (signal {os.WTERMSIG(self._status)})", names)
                    raise RuntimeError("the reader process ended without a word")
                kind = note[0]
                if kind == "item":
                    _, meta, regions, progress = note
                    if not regions:  # None: too large for the ring; []: nothing out of band
                        item = pickle.loads(meta)
                    else:
                        # copied out, so a batch may outlive its place in the ring
                        buffers = [_aligned_copy(self._view[at : at + n]) for at, n in regions]
                        self._release(regions)
                        self._acknowledge()
                        item = pickle.loads(meta, buffers=buffers)
                    self._set_progress(progress)
                    self._given = True
                    yield item
                elif kind == "done":
                    _, phases, progress = note
                    self._set_progress(progress)
                    timing.merge(phases)
                    self._reap(kill=False)
                    return
                else:
                    _, blob, text, sent = note
                    self._reap(kill=False)
                    error = pickle.loads(blob)
                    if not _is_users(error):
                        if not sent and not self._given and self._instead is not None:
                            failed_to_start = True  # threads or files refused it: read here instead
                            break
                        error.add_note(f"in nncli's reader process:\n{text}")
                    raise error
        finally:
            if not failed_to_start:
                self.close()
        # The child failed before its first item: the files back where they were at the fork, and
        # the items read here (in a thread) from the start.
        self._close_child()
        self._offsets.restore()
        self._other = self._instead()
        try:
            yield from self._other
        finally:
            self.close()

    def _receive(self):
        header = self._read_exactly(_LENGTH.size)
        if header is None:
            return None
        body = self._read_exactly(_LENGTH.unpack(header)[0])
        return None if body is None else pickle.loads(body)

    def _read_exactly(self, n: int):
        data = bytearray(n)
        view, got = memoryview(data), 0
        while got < n:
            k = os.readv(self._notes, [view[got:]])
            if k == 0:
                return None
            got += k
        return data

    def _release(self, regions) -> None:
        """Give the pages of a region that has been copied out back to the system (MADV_REMOVE): the
        ring's resident memory is what waits in it, not the most it ever held. Only whole pages
        inside the region: a page it shares with a neighbour may hold that one's data."""
        import mmap

        page, remove = mmap.PAGESIZE, getattr(mmap, "MADV_REMOVE", None)
        first = -(-regions[0][0] // page) * page
        last = (regions[-1][0] + regions[-1][1]) // page * page
        if remove is not None and last > first:
            try:
                self._ring.madvise(remove, first, last - first)
            except OSError:  # a kernel without it for shared memory: the pages stay, nothing else changes
                pass

    def _acknowledge(self) -> None:
        try:
            os.write(self._frees, b"\x01")
        except BrokenPipeError:  # the child has died: the next note says so
            pass

    def _set_progress(self, progress: list) -> None:
        for f, n in zip(self._files, progress):
            f.bytes_read = n

    def _reap(self, kill: bool) -> None:
        import signal

        if self.pid is None:
            return
        if kill:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            _, self._status, usage = os.wait4(self.pid, 0)
        except ChildProcessError:
            pass
        else:
            from nncli import timing

            timing.merge({"reader process": [time.perf_counter() - self._started, usage.ru_utime + usage.ru_stime]})
        self.pid = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._other is not None and hasattr(self._other, "close"):
            self._other.close()
        self._close_child()
        if not self._items.gi_running:  # closed from outside: the generator's finally has nothing left to do
            self._items.close()

    def _close_child(self) -> None:
        if self._view is None:
            return
        self._reap(kill=True)
        for fd in (self._notes, self._frees):
            try:
                os.close(fd)
            except OSError:
                pass
        self._view.release()
        self._view = None
        self._ring.close()


# Signals a process raises on itself (a Rust panic that aborts, a crash in native code): at the child's
# start, a reason to read in a thread instead. Any other (SIGKILL, SIGTERM) came from outside.
_OWN_SIGNALS = (6, 4, 7, 8, 11, 31)  # SIGABRT, SIGILL, SIGBUS, SIGFPE, SIGSEGV, SIGSYS (Linux numbers)


def _aligned_copy(data):
    """A writable copy of `data` starting on a 64-byte boundary, as torch's own tensors do (see
    forward.to_tensor: the start address can change a float32 matmul's last digit)."""
    import numpy as np

    from nncli.io.reading import aligned_empty

    out = aligned_empty((len(data),), np.uint8)
    out[:] = np.frombuffer(data, np.uint8)
    return out


def _is_users(error: BaseException) -> bool:
    from nncli.errors import NncliError

    return isinstance(error, (NncliError, KeyboardInterrupt))
