"""The console script's first lines: catch terminating signals before anything is imported.

Importing typer and rich takes ~0.1 s; a Ctrl-C in that window would print a KeyboardInterrupt
traceback. Nothing is written yet, so leaving at once with 128 + the signal number is all it takes;
cli.main() installs the handlers that also remove unfinished files.

The handlers go in when this module is imported (the console script's first import after the
package's two-line __init__), not in main(): importing nncli.timing before them left a window of
~1.4 ms where a Ctrl-C printed a traceback. Only the console script and `python -m nncli` import
this module; a library caller's signals are never touched.
"""

import _signal  # the C module, built into the interpreter: `signal` would first import enum (~2 ms)
import os
import sys  # built in: already loaded, nothing imported


def _leave(signum, frame):  # pragma: no cover - exercised by a subprocess test
    os._exit(128 + signum)


# The one list of terminating signals: cli/app.py's handlers (which also remove unfinished files) take
# it from here. Here because nothing of nncli may be imported before these handlers are in.
TERMINATING = (
    "SIGINT",
    "SIGTERM",
    "SIGHUP",
    "SIGALRM",
    "SIGUSR1",
    "SIGUSR2",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
)


def _catch_terminating_signals() -> None:
    for name in TERMINATING:
        number = getattr(_signal, name, None)
        if number is not None and (name == "SIGINT" or _signal.getsignal(number) != _signal.SIG_IGN):
            _signal.signal(number, _leave)


# cli/app.py imports this module for the list alone (a library caller or a test that imports it
# keeps its own handlers); the console script and `python -m nncli` import it first.
if "nncli.cli.app" not in sys.modules:
    _catch_terminating_signals()

import gc  # noqa: E402  (after the handlers, on purpose)

from nncli import timing  # noqa: E402,F401  its clock starts here, with the process


def main() -> None:
    # typer, rich, polars and nncli's modules make objects and no garbage: the collector stays off
    # until the command starts (cli.handled turns it on), ~20 ms less start-up.
    gc.disable()
    from nncli.cli.app import main as run

    run()
