"""`nncli train --nproc N`: the launcher that starts N ranks of the same command, as torchrun does.
Process management at the edge (signals, children, exit codes), apart from the train command."""

from __future__ import annotations

import os


def launch(nproc: int, pipes: dict) -> None:
    """`nncli train --nproc N`: the same command in N processes with torchrun's environment (RANK,
    WORLD_SIZE, MASTER_ADDR/PORT); rank 0's output is the command's; a rank that fails stops the others
    and its error is the one line shown, naming the rank. The ranks never outlive the launcher: each
    dies with it (the parent-death signal), and TERM, INT and HUP are passed on to them and waited for.
    `pipes`: the inputs every rank reads, by option (DATA, --targets, --val)."""
    import contextlib
    import signal
    import subprocess
    import sys
    import time

    from nncli.errors import NncliError

    _check_launch(nproc, pipes)
    argv = _argv_without_nproc(sys.argv[1:])
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_master_port()),
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
    }
    procs: list = []

    def stop(signum=signal.SIGTERM) -> None:
        """Pass the signal on to the ranks still running and wait for them (killed after 10 s)."""
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):  # it ended meanwhile
                    p.send_signal(signum)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def forward(signum, frame):
        stop(signum)
        os._exit(128 + signum)  # as cli._interrupted, after the ranks

    import threading

    handled = [
        s
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        if signal.getsignal(s) != signal.SIG_IGN or s == signal.SIGINT
    ]
    if (
        threading.current_thread() is not threading.main_thread()
    ):  # only the main thread may set handlers; the ranks still die with it
        handled = []
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        for r in range(nproc):
            try:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "nncli", *argv],
                        env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                        stdout=None if r == 0 else subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        stdin=subprocess.DEVNULL,
                        preexec_fn=_dies_with(os.getpid()),
                    )
                )  # noqa: PLW1509  the launcher runs no threads
            except OSError as e:
                stop()
                raise NncliError(f"cannot start rank {r}: {e.strerror or e}", "--nproc") from None
        failed = None
        while failed is None and any(p.poll() is None for p in procs):
            failed = next((r for r, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            time.sleep(0.05)
        failed = failed if failed is not None else next((r for r, p in enumerate(procs) if p.returncode != 0), None)
        stop()  # the others, after a failure: SIGTERM, then SIGKILL for one stuck in torch's C++ (a rendezvous)
        errors = [p.communicate()[1].decode("utf-8", "replace") for p in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if failed is None:
        sys.stderr.write(errors[0])
        return
    line = next(
        (l for l in errors[failed].splitlines() if l.startswith("error: ")),
        f"error: exited with {procs[failed].returncode}",
    )
    raise NncliError(f"rank {failed}: {line[len('error: ') :]}", "--nproc")


def _check_launch(nproc: int, pipes: dict, option: str = "--nproc") -> None:
    """Refuse, before any rank starts, inputs every rank cannot read and more ranks than CPUs.
    `option`: what started the ranks (--nproc, or --workers of train's --engine ray)."""
    from nncli.errors import NncliError
    from nncli.io.reading import is_pipe

    for where, paths in pipes.items():
        for path in paths:
            # every rank opens it: a pipe is read by the first only, the others wait for ever
            if path == "-" or is_pipe(path):
                raise NncliError(
                    f"every process of {option} reads it: give a file, not standard input or a pipe", where
                )
    cpus = _cpus()
    if nproc > cpus:  # gloo ranks beyond the cores only wait for each other, and each is a whole torch process
        raise NncliError(
            f"{nproc} processes on {cpus} CPU{'s' if cpus > 1 else ''}: give at most {cpus} (the CPUs this process "
            "may use)",
            option,
        )


def _argv_without_nproc(args: list[str]) -> list[str]:
    """The command line each rank runs: the launcher's, less --nproc N (or --nproc=N)."""
    argv, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if not a.startswith("--nproc="):
            argv.append(a)
    return argv


def _cpus() -> int:
    """The CPUs this process may run on (its affinity, as taskset or a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _master_port() -> int:
    """MASTER_PORT when set (and free: rank 0 listens there), else a free port of the system's choosing."""
    import errno
    import socket

    from nncli.errors import NncliError

    given = os.environ.get("MASTER_PORT")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as rank 0's listener: a port in TIME_WAIT is free
        try:
            s.bind(("127.0.0.1", int(given) if given else 0))
        except (OSError, ValueError, OverflowError) as e:
            busy = isinstance(e, OSError) and e.errno == errno.EADDRINUSE
            what = (
                f"port {given} is in use"
                if busy
                else f"cannot listen on port {given}: {getattr(e, 'strerror', None) or e}"
            )
            raise NncliError(f"{what} (unset it and nncli picks a free port)", "MASTER_PORT") from None
        return s.getsockname()[1]


def _dies_with(parent: int):
    """What each rank runs before it starts (Linux): the parent-death signal, so a launcher killed by
    any signal, SIGKILL included, takes its ranks with it. SIGKILL, since a rank blocked in torch's C++
    (the rendezvous waiting for a rank that never came) runs no Python handler until the call returns,
    up to 30 minutes later; a launcher that could clean up has already stopped them with SIGTERM. A
    launcher that died before the call was made is seen by the parent's pid having changed.
    Elsewhere: nothing."""
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child, between fork and exec, only calls it
    pr_set_pdeathsig = 1

    def set_it() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return set_it
