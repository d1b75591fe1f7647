"""The console script's first lines: catch terminating signals before anything is imported.

Importing typer and rich takes ~0.1 s; a Ctrl-C in that window would print a KeyboardInterrupt
traceback. Nothing is written yet, so leaving at once with 128 + the signal number is all it takes;
cli.main() installs the handlers that also remove unfinished files.
"""

import gc
import os
import signal

from nncli import timing  # noqa: F401  its clock starts here, with the process


def _leave(signum, frame):  # pragma: no cover - exercised by a subprocess test
    os._exit(128 + signum)


def main() -> None:
    # typer, rich, polars and nncli's modules make objects and no garbage: the collector stays off
    # until the command starts (cli.handled turns it on), ~20 ms less start-up.
    gc.disable()
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF"):
        number = getattr(signal, name, None)
        if number is not None and (name == "SIGINT" or signal.getsignal(number) != signal.SIG_IGN):
            signal.signal(number, _leave)
    from nncli.cli import main as run

    run()
