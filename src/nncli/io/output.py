"""Where results go: standard output, or a file, by one rule for every file nncli writes.

- A regular file, or a new one, is written to a temporary file beside it and renamed over it only
  once complete: an error, Ctrl-C or SIGTERM leaves the old file exactly as it was. A symbolic link
  is followed: its final target is replaced (the temporary file goes in the TARGET's folder, since a
  rename cannot cross file systems) and the link stays a link.
- Anything else that exists (a character device such as /dev/null, a FIFO, a terminal,
  /dev/stdout, /dev/fd/N) is written through, as a shell's `>` does: replacing /dev/null with a
  regular file, or a FIFO whose reader waits, would break the system or the pipeline.
- A new file gets the mode a shell redirection gives it (0o666 less the umask: the kernel applies
  it, and a folder's default ACL too); a replaced file keeps its mode, less setuid and setgid, and
  its owner where the process may keep it.
- Everything that can be known about a path is checked by `check_output` before a command does
  any work, without opening it (a FIFO's open blocks until a reader comes). Every refusal is an
  NncliError: exit code 1, the option and the path named.
- The outputs of one run that writes several files (`forward -o FOLDER/` over several inputs)
  commit together (`Together`): each finished one stays its temporary file until the whole run
  has succeeded, then all are renamed. A failure or a signal before that removes every temporary
  file (and the folders the run made, while empty): no output of a failed run appears, and no
  file the user had is replaced. Only a rename itself failing midway can leave some renamed.
- Temporary files are named `.{name}.nncli-{pid}-{random}.tmp`, so that a later run can tell the
  ones whose writer was killed (SIGKILL, a power cut) and `remove_stale_temp_files` can sweep them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from nncli.errors import NncliError

_MAX_LINKS = 40  # as the kernel's ELOOP limit
_TEMP_HEX = 8  # hex digits of a temporary name's random part (secrets.token_hex(4))
# Exactly what temp_name writes: a process id in ASCII digits without a leading zero (\d would take
# Unicode digits, and int() reads them), and _TEMP_HEX lower-case hex digits. `nncli clean` removes
# what this matches, so it matches nothing nncli did not write.
_TEMP_NAME = re.compile(
    rf"\.(?P<name>.+)\.nncli-(?P<pid>[1-9][0-9]{{0,9}})-(?P<rand>[0-9a-f]{{{_TEMP_HEX}}})\.tmp", re.DOTALL
)
_TEMP_STEM_BYTES = 200  # NAME_MAX is 255: the temporary name adds '.', '.nncli-PID-RANDOM.tmp'
# Paths that name an open file descriptor rather than a file: the user means "this open file"
# (`-o /dev/stdout > out.csv`, `-o /dev/fd/3 3>>log`), so they are always written through.
_FD_NAMES = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_FD_PATH = re.compile(r"/dev/fd/(?P<fd>\d+)|/proc/(?P<pid>self|thread-self|\d+)(?:/task/\d+)?/fd/(?P<pfd>\d+)")


# -- the plan: what writing to a path means ---------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How a path will be written: "replace" (atomic rename over `target`, which may not exist
    yet) or "through" (opened for writing: `fd` is this process's own descriptor when the path
    names one)."""

    kind: str
    target: str
    fd: int | None = None


def _fd_named(path: str) -> tuple[bool, int | None]:
    """(names an open-file-descriptor path, this process's descriptor number or None), following
    symbolic links one hop at a time (realpath cannot: /proc/self/fd/1 reads as 'pipe:[123]')."""
    p = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        for candidate in (p, os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))):
            if candidate in _FD_NAMES:
                return True, _FD_NAMES[candidate]
            m = _FD_PATH.fullmatch(candidate)
            if m:
                if m["fd"] is not None:
                    return True, int(m["fd"])
                own = m["pid"] in ("self", "thread-self") or int(m["pid"]) == os.getpid()
                return True, int(m["pfd"]) if own else None
        try:
            link = os.readlink(p)
        except (OSError, ValueError):
            return False, None
        p = os.path.normpath(os.path.join(os.path.dirname(p), link))
    return False, None


def _access(path: str, mode: int) -> bool:
    """os.access as the shell decides it: by the effective ids (root may write a 0o444 file)."""
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def _read_only_fs(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def plan(path: str, option: str = "the output") -> Plan:
    """Decide how `path` is written, or refuse it (NncliError naming `option` and the path).

    Never opens the path: stat, lstat, readlink and access only."""
    where = path if path else '""'
    if not path:
        raise NncliError(f"{option} is empty: it must name a file", where)
    if "\0" in path:
        raise NncliError(f"{option} holds a NUL byte", repr(path))
    if path.endswith(("/", os.sep)) or os.path.basename(path) in (".", ".."):
        raise NncliError(f"{option} names a folder, not a file", where)
    is_fd, fd = _fd_named(path)
    try:
        st = os.fstat(fd) if fd is not None else os.stat(path)
    except OSError as e:
        if is_fd and e.errno in (errno.EBADF, errno.ENOENT):
            raise NncliError(f"{option} names a file descriptor that is not open", where) from None
        if e.errno != errno.ENOENT:
            raise _stat_refusal(e, option, where) from None
        return _plan_new(path, option, where)
    if is_fd:
        if stat.S_ISDIR(st.st_mode):
            raise NncliError(f"{option} names a folder, not a file", where)
        return Plan("through", path, fd)
    if stat.S_ISDIR(st.st_mode):
        raise NncliError(f"{option} names a folder, not a file", where)
    if stat.S_ISSOCK(st.st_mode):
        raise NncliError(f"{option} is a socket, which nncli cannot write to", where)
    if not stat.S_ISREG(st.st_mode):  # a device, a FIFO, a terminal: written through, never replaced
        if not _access(path, os.W_OK):
            raise NncliError(f"{option}: permission denied", where)
        return Plan("through", path)
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    if not _access(target, os.W_OK):
        raise NncliError(
            f"{option}: {'read-only file system' if _read_only_fs(target) else 'permission denied'}", where
        )
    if not _access(folder, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(folder) else "permission denied"
        raise NncliError(
            f"{option}: {reason}: the file is replaced through a temporary file beside it, "
            f"and its folder {folder} is not writable (redirect standard output instead)",
            where,
        )
    _check_sticky(folder, st, option, where)
    return Plan("replace", target)


def _plan_new(path: str, option: str, where: str) -> Plan:
    try:
        os.lstat(path)
    except OSError:
        pass
    else:  # the name exists but leads nowhere: a link to a file or folder that is not there
        raise NncliError(f"{option} is a dangling symbolic link to {_link_end(path)}", where)
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    try:
        fst = os.stat(folder)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise NncliError(f"{option}: the folder {os.path.dirname(path) or folder} does not exist", where) from None
        raise _stat_refusal(e, option, where) from None
    if not stat.S_ISDIR(fst.st_mode):
        raise NncliError(f"{option}: {os.path.dirname(path)} is not a folder", where)
    if not _access(folder, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(folder) else "permission denied"
        raise NncliError(f"{option}: {reason}: cannot create a file in {folder}", where)
    return Plan("replace", target)


def _link_end(path: str) -> str:
    """The last name a chain of symbolic links reaches (for the dangling-link message)."""
    p = path
    for _ in range(_MAX_LINKS):
        try:
            p = os.path.join(os.path.dirname(p), os.readlink(p))
        except OSError:
            break
    return p


def _stat_refusal(e: OSError, option: str, where: str) -> NncliError:
    if e.errno == errno.ELOOP:
        return NncliError(f"{option}: too many levels of symbolic links", where)
    if e.errno == errno.ENOTDIR:
        return NncliError(f"{option}: a part of the path is not a folder", where)
    if e.errno == errno.EACCES:
        return NncliError(f"{option}: permission denied", where)
    if e.errno == errno.ENAMETOOLONG:
        return NncliError(f"{option}: the name is too long", where)
    return NncliError(f"{option}: {e.strerror or e}", where)


def _check_sticky(folder: str, st: os.stat_result, option: str, where: str) -> None:
    """In a sticky folder (/tmp) only a file's owner, the folder's owner or root may rename over it."""
    euid = os.geteuid() if hasattr(os, "geteuid") else 0
    with contextlib.suppress(OSError):
        fst = os.stat(folder)
        if fst.st_mode & stat.S_ISVTX and euid not in (0, st.st_uid, fst.st_uid):
            raise NncliError(
                f"{option}: permission denied: {folder} is sticky and the file belongs to another user", where
            )


# -- the checks a command makes before any work -----------------------------------------------------


def same_file(a: str, b: str) -> bool:
    if a == "-" or b == "-" or not a or not b:
        return False
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str | None, inputs: Iterable[str | None] = (), force: bool = False, option: str = "-o") -> None:
    """Everything about an output path, before the command does any work or any write: not empty,
    not a folder, its folder exists, not a dangling link, writable as a shell would write it, and
    not one of the command's inputs unless --force. None and "-" (standard output) always pass.

    Never opens the path (a FIFO would block). Every refusal: NncliError, exit 1."""
    if path is None or path == "-":
        return
    plan(path, option)
    for given in inputs:
        if given and not force and same_file(path, given):
            raise NncliError(f"{option} is one of this command's inputs; add --force to replace it", path)


def check_distinct_outputs(outputs: dict[str, str | None]) -> None:
    """Refuse one file named for two outputs (`--save-weights w.safetensors -o w.safetensors`):
    the second write would replace the first. Paths are compared resolved (and by inode where they
    exist). Devices and FIFOs named twice pass: both writes go through (`... -o /dev/null` twice)."""
    given = [(o, p) for o, p in outputs.items() if p and p != "-"]
    for i, (opt_a, a) in enumerate(given):
        for opt_b, b in given[i + 1 :]:
            if same_file(a, b) and not (_exists_not_regular(a) and _exists_not_regular(b)):
                raise NncliError(f"{opt_a} and {opt_b} name the same file", b)


def _exists_not_regular(path: str) -> bool:
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


# -- unfinished and stale temporary files -----------------------------------------------------------


_unfinished: set[str] = set()  # temporary files being written, for a signal handler to remove


def abandon_writes() -> None:
    """Remove every temporary file still being written (on Ctrl-C or SIGTERM): targets stay as they were.

    Also removes the spooled copy of standard input (data.spooled makes it with
    scratch_file), then runs what called_on_signal registered, for at most 2 s in all."""
    for tmp in list(_unfinished):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    if _on_signal:
        import threading

        def run() -> None:
            for callback in list(_on_signal):
                with contextlib.suppress(Exception):
                    callback()

        # a daemon thread, joined briefly: a callback that talks to a server (MLflow's retries take
        # minutes) must not keep a Ctrl-C from ending the process
        helper = threading.Thread(target=run, name="nncli-on-signal", daemon=True)
        helper.start()
        helper.join(SIGNAL_CALLBACK_SECONDS)


_on_signal: list = []  # callables to run when a terminating signal ends the process
SIGNAL_CALLBACK_SECONDS = 2.0


@contextlib.contextmanager
def called_on_signal(callback) -> Iterator[None]:
    """Run `callback()` should Ctrl-C or SIGTERM end the process while the block runs (the CLI's
    handler leaves at once, so nothing unwinds): for what must be told, such as an MLflow run
    that should end KILLED rather than stay RUNNING."""
    _on_signal.append(callback)
    try:
        yield
    finally:
        _on_signal.remove(callback)


@contextlib.contextmanager
def created_folders(path: str) -> Iterator[None]:
    """The folder `path` made (with its missing parents, as os.makedirs), and unmade should the block
    fail or a signal end the run: only the folders made here, deepest first, each only while empty
    (rmdir refuses a folder with anything in it). A failed run leaves no new empty folder behind."""
    made: list[str] = []

    def undo() -> None:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)

    with called_on_signal(undo):
        try:
            _make_folders(path, made)
            if not os.path.isdir(path):
                raise NncliError("exists and is not a folder", path)
            yield
        except BaseException:
            undo()
            raise


def _make_folders(path: str, made: list[str]) -> None:
    """os.makedirs(path, exist_ok=True), step by step as it goes, noting each folder made here: one
    that exists already, or that another process makes meanwhile (FileExistsError), is not ours."""
    head, tail = os.path.split(path)
    if not tail:
        head, tail = os.path.split(head)
    if head and tail and not os.path.exists(head):
        _make_folders(head, made)
        if tail == os.curdir:
            return
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    made.append(path)


def temp_name(target: str) -> str:
    """`.{name}.nncli-{pid}-{random}.tmp` beside `target` (the name shortened to fit NAME_MAX)."""
    stem = os.path.basename(target)
    while len(os.fsencode(stem)) > _TEMP_STEM_BYTES:
        stem = stem[:-1]
    return os.path.join(os.path.dirname(target), f".{stem}.nncli-{os.getpid()}-{secrets.token_hex(_TEMP_HEX // 2)}.tmp")


@contextlib.contextmanager
def scratch_file(folder: str | None = None, name: str = "stdin.csv") -> Iterator[tuple[BinaryIO, str]]:
    """(file open for writing and reading, its path): a private (0o600) scratch file such as the
    spooled copy of standard input, removed on exit, Ctrl-C and SIGTERM, and named like the other
    temporary files, so one left by a SIGKILLed run is found by stale_temp_files(folder).
    `folder` defaults to the system's temporary folder ($TMPDIR)."""
    import tempfile

    target = os.path.join(folder or tempfile.gettempdir(), name)
    fd, path = _create_temp(target, 0o600, target, "the scratch file")
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f, path
    finally:
        _unfinished.discard(path)
        with contextlib.suppress(OSError):
            os.unlink(path)


def _pid_running(pid: int) -> bool:
    """Whether a process with this id exists (a zombie counts as ended). When unsure: running."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return True  # never written by nncli: leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except OverflowError:
        return False  # beyond any process id
    except OSError:
        return True
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    return True


def stale_temp_files(folder: str) -> list[str]:
    """nncli's temporary files in `folder` whose writer is no longer running (killed by SIGKILL or
    a crash), sorted. A writer in another PID namespace or on another host sharing the folder
    cannot be seen: only sweep folders this machine's nncli writes to."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise NncliError(f"cannot list the folder: {e.strerror}", folder) from None
    pid_max = _pid_max()
    for entry in entries:
        m = _TEMP_NAME.fullmatch(entry.name)
        if not m or int(m["pid"]) >= pid_max:  # the kernel never hands out that id: nncli did not write it
            continue
        with contextlib.suppress(OSError):
            if _mine(entry.stat(follow_symlinks=False)) and not _pid_running(int(m["pid"])):
                found.append(entry.path)
    return sorted(found)


def _mine(st: os.stat_result) -> bool:
    """A regular file of this user's: in a shared sticky folder (/tmp) another user's file named like
    nncli's was removed (as root) or refused mid-sweep; it is never ours to judge."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()


def _pid_max() -> int:
    """/proc/sys/kernel/pid_max: process ids stay below it (else Linux's limit, 2**22)."""
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 2**22


def remove_stale_temp_files(folder: str) -> list[str]:
    """Remove what `stale_temp_files` finds; returns the paths removed."""
    removed = []
    for path in stale_temp_files(folder):
        try:
            if not _mine(os.lstat(path)):
                continue  # replaced since it was found
            os.unlink(path)
        except FileNotFoundError:
            continue  # another sweeper got there first
        except OSError as e:
            raise NncliError(f"cannot remove: {e.strerror}", path) from None
        removed.append(path)
    return removed


# -- writing ----------------------------------------------------------------------------------------


class Together:
    """The files one run writes, renamed over their targets only once the whole run has succeeded
    (the rule, module docstring). Used as `with Together() as together:`, each file written with
    output_file(..., together=together): a file written in full waits as its temporary file (still
    removed by a signal); the block ending without an error renames them all, with one raising
    removes them all."""

    def __init__(self) -> None:
        self._waiting: list[tuple[str, str, str, str]] = []  # (temporary, target, path given, option)

    def __enter__(self) -> Together:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self._commit()
        else:
            self._discard()

    def add(self, tmp: str, target: str, given: str, option: str) -> None:
        self._waiting.append((tmp, target, given, option))

    def _commit(self) -> None:
        try:
            while self._waiting:
                tmp, target, given, option = self._waiting[0]
                try:
                    os.replace(tmp, target)
                except OSError as e:
                    raise NncliError(f"{option}: cannot replace the file: {e.strerror}", given) from None
                self._waiting.pop(0)
                _unfinished.discard(tmp)
                _sync_folder(os.path.dirname(target))
        finally:
            self._discard()

    def _discard(self) -> None:
        for tmp, *_ in self._waiting:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            _unfinished.discard(tmp)
        self._waiting.clear()


@contextlib.contextmanager
def output_file(path: str, option: str = "the output", together: Together | None = None) -> Iterator[BinaryIO]:
    """Write `path` by the rule (module docstring): atomically replaced, or written through.
    With `together`, a replaced file is renamed only when that run's block succeeds."""
    p = plan(path, option)
    with _named_write_errors(path):
        if p.kind == "through":
            with _written_through(p, option) as f:
                yield f
        else:
            with _replaced(p.target, path, option, together) as f:
                yield f


@contextlib.contextmanager
def _named_write_errors(where: str) -> Iterator[None]:
    """A write that fails without naming its file (a full disk, `-o /dev/full`: ENOSPC; an I/O
    error) gets the file's name, which the CLI's error line shows as (where). A closed pipe stays
    as it is: the CLI ends quietly on it."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None and e.errno != errno.EPIPE:
            e.filename = where
        raise


@contextlib.contextmanager
def _written_through(p: Plan, option: str) -> Iterator[BinaryIO]:
    """Open for writing as a shell's `>` does (a FIFO's open waits for a reader, as the shell's
    does). One of this process's own descriptors is duplicated rather than reopened: that keeps
    an append (`>>`) and the offset, where reopening /proc/self/fd/1 would truncate."""
    where = p.target
    if p.fd is not None:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            if sys.stdout.fileno() == p.fd:
                sys.stdout.flush()
        try:
            fd = os.dup(p.fd)
        except OSError as e:
            raise NncliError(f"{option}: cannot write: {e.strerror}", where) from None
    else:
        flags = os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            if stat.S_ISREG(os.stat(p.target).st_mode):  # another process's /proc/PID/fd/N
                flags |= os.O_TRUNC
            fd = os.open(p.target, flags)  # no O_CREAT: if it vanished since the plan, say so
        except OSError as e:
            raise NncliError(f"{option}: cannot write: {e.strerror}", where) from None
    with os.fdopen(fd, "wb") as f:
        yield f
        f.flush()


@contextlib.contextmanager
def _replaced(target: str, given: str, option: str, together: Together | None = None) -> Iterator[BinaryIO]:
    """A temporary file beside `target`, renamed over it only once fully written and synced (with
    `together`: handed to it, renamed when the whole run has succeeded).

    If anything goes wrong (an error, Ctrl-C, SIGTERM) the temporary file is removed and an existing
    file at `target` is left exactly as it was."""
    existed = os.path.lexists(target)
    # Existing file: the temporary starts private (the old file may be secret) and gets the old
    # mode at the end. New file: created 0o666 so the kernel applies umask and default ACLs as it
    # does for a shell's `>`.
    fd, tmp = _create_temp(target, 0o600 if existed else 0o666, given, option)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            _finish_mode(f.fileno(), target, existed)
            os.fsync(f.fileno())
        if together is not None:
            together.add(tmp, target, given, option)  # stays in _unfinished: a signal still removes it
            return
        try:
            os.replace(tmp, target)
        except OSError as e:
            raise NncliError(f"{option}: cannot replace the file: {e.strerror}", given) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _unfinished.discard(tmp)
        raise
    _unfinished.discard(tmp)
    _sync_folder(os.path.dirname(target))


def _create_temp(target: str, mode: int, given: str, option: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = temp_name(target)
        # Registered before it exists, so a signal arriving just after the open cannot leak it.
        _unfinished.add(tmp)
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            _unfinished.discard(tmp)
        except OSError as e:
            _unfinished.discard(tmp)
            raise NncliError(f"{option}: cannot write: {e.strerror}", given) from None
        except BaseException:
            _unfinished.discard(tmp)
            raise
    raise NncliError(f"{option}: cannot create a temporary file beside it", given)


def _finish_mode(fd: int, target: str, existed: bool) -> None:
    """An existing file's mode without setuid/setgid (a rewritten program must not keep them),
    and its owner and group where this process may give them (root may; others keep theirs)."""
    try:
        st = os.stat(target)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        mine = os.fstat(fd)
        if (mine.st_uid, mine.st_gid) != (st.st_uid, st.st_gid) and hasattr(os, "fchown"):
            with contextlib.suppress(OSError):
                os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
    elif existed:  # it vanished while we wrote: what a new file would get
        os.fchmod(fd, 0o666 & ~current_umask())


def current_umask() -> int:
    """The umask, read without changing it where Linux says it (os.umask's set-and-restore would
    briefly give every other thread's new files mode 0o666)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    umask = os.umask(0o22)
    os.umask(umask)
    return umask


def _sync_folder(folder: str) -> None:
    """Make the rename itself durable (a power cut after it must not bring the old file back)."""
    with contextlib.suppress(OSError, AttributeError):
        dfd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def output_stream(path: str | None, option: str = "-o", together: Together | None = None) -> Iterator[BinaryIO]:
    """Standard output (binary), or the file -o names, written by the rule above."""
    if path is None or path == "-":
        with _named_write_errors("<stdout>"):
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
    else:
        with output_file(path, option, together) as f:
            yield f
