"""Where results go: standard output, or a file written atomically that never clobbers an input."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import BinaryIO, Iterator

from nncli.errors import NncliError, UsageError


def same_file(a: str, b: str) -> bool:
    if a == "-" or b == "-":
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(path: str, inputs: list[str | None], force: bool, option: str) -> None:
    """Refuse to write over one of the command's own inputs, unless --force."""
    for given in inputs:
        if given and same_file(path, given) and not force:
            raise UsageError(f"{option} {path} is one of this command's inputs; add --force to replace it")


_unfinished: set[str] = set()  # temporary files being written, for a signal handler to remove


def abandon_writes() -> None:
    """Remove every temporary file still being written (on Ctrl-C or SIGTERM): targets stay as they were."""
    for tmp in list(_unfinished):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@contextlib.contextmanager
def removed_on_signal(path: str) -> Iterator[None]:
    """Mark a temporary file for removal should Ctrl-C or SIGTERM end the process while it exists."""
    _unfinished.add(path)
    try:
        yield
    finally:
        _unfinished.discard(path)


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[BinaryIO]:
    """A temporary file in the target's folder, renamed over the target only once fully written.

    If anything goes wrong (an error, Ctrl-C, SIGTERM) the temporary file is removed and an existing
    file at `path` is left exactly as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise NncliError("is a directory", path)
    if not os.path.isdir(folder):
        raise NncliError("no such folder", path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise NncliError(f"cannot write: {e.strerror}", path) from None
    try:
        with removed_on_signal(tmp), os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.chmod(tmp, _mode_for(path))
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mode_for(path: str) -> int:
    """Keep an existing file's permissions; a new file gets what open() would give it."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def output_stream(path: str | None) -> Iterator[BinaryIO]:
    """Standard output (binary), or an atomic file when -o names one."""
    if path is None or path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    else:
        with atomic_file(path) as f:
            yield f
