"""The command line's edge: the Typer app, one registration line per command, and the one place
where errors become an `error:` line, warnings a `warning:` line, and signals a clean exit.

Each command lives in its family's module under commands/ (its options, its call into the
library, its rendering); options shared by several commands are declared once in options.py.
No torch math and no formatting here; torch is imported only inside the commands that need it.
"""

from __future__ import annotations

import functools
import gc
import os
import signal
import sys
import time
import warnings
from typing import Annotated

import typer
from typer.core import TyperGroup

from nncli import __version__
from nncli.entry import TERMINATING  # one list, where the first handlers need it
from nncli.errors import NncliError, NncliWarning, UsageError

# -- commands: each lives in its family's module (options, call into the library, rendering) -----------

# name -> (module under nncli.cli.commands, function, the line `nncli --help` lists it with). A command's
# module is imported only when that command runs (or shows its help): `nncli --help` and each
# command start without the others' imports. The full help is the function's docstring.
COMMANDS = {
    "forward": ("outputs", "forward", "The model's outputs for every row: probabilities, classes."),
    "onehot": ("onehot", "onehot", "One-hot rows of class indices, as F.one_hot gives them."),
    "loss": ("signal", "loss", "The loss of the outputs against the targets."),
    "grads": ("signal", "grads", "Every parameter's gradient of the loss."),
    "step": ("signal", "step", "One gradient-descent step: the loss before and after."),
    "params": ("inspect", "params", "The model layer by layer: shapes, parameters, memory."),
    "summary": ("inspect", "params", "The same as params (torchinfo's name for it)."),
    "init": ("inspect", "init", "Write the seeded initial weights."),
    "export": ("export", "export", "Write the model as ONNX or a torch.export program."),
    "train": ("train", "train", "Fit the model: the standard PyTorch loop."),
    "evaluate": ("evaluate", "evaluate", "The loss and the metrics that fit it."),
    "calibrate": ("calibrate", "calibrate", "Fit a temperature (logits / T) on held-out rows."),
    "clean": ("files", "clean", "Remove temporary files a killed run left behind."),
    "trace": ("trace", "trace", "Each layer's input and output for chosen rows."),
    "stats": ("stats", "stats", "Layer health over every row: activations, gradients."),
    "gradcheck": ("gradcheck", "gradcheck", "Autograd's gradients against finite differences."),
    "explain": ("explain", "explain", "Which columns drove each prediction: Captum's attributions."),
}
LONG_HELP = {"summary": "The same as params: the model layer by layer, like torchinfo's summary."}


class _Commands(dict):
    """The group's commands, each built from its module on first use (a dict, as click expects)."""

    def __missing__(self, name: str):
        import importlib

        from typer.main import get_command_from_info
        from typer.models import CommandInfo

        module, function, short = COMMANDS[name]
        callback = getattr(importlib.import_module(f"nncli.cli.commands.{module}"), function)
        info = CommandInfo(name=name, callback=handled(callback), help=LONG_HELP.get(name), short_help=short)
        command = self[name] = get_command_from_info(info, pretty_exceptions_short=True, rich_markup_mode=None)
        return command

    def get(self, name: str, default=None):
        return self[name] if name in COMMANDS else default

    def __iter__(self):
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)

    def __contains__(self, name) -> bool:
        return name in COMMANDS

    def keys(self):
        return list(COMMANDS)

    def items(self):
        return [(name, self[name]) for name in COMMANDS]

    def values(self):
        return [self[name] for name in COMMANDS]


class _Group(TyperGroup):
    """nncli's command group: commands load when used; `nncli --help` lists them from COMMANDS alone."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.commands = _Commands()

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def format_commands(self, ctx, formatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, _, short) in COMMANDS.items()])

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Click's usage errors (unknown option, missing argument, bad value) as nncli's own: one
        `error:` line and one `Try '... --help'` line, exit 2, where Click prints a 4-line block.

        Typer runs without standalone mode so that its errors reach us; standalone mode is then
        done here (exit with the code). A caller asking for standalone_mode=False gets Typer's behaviour.
        """
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        exceptions = _click_exceptions()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except exceptions.NoArgsIsHelpError as e:  # bare `nncli`: the help, as before
            e.show()
            sys.exit(e.exit_code)
        except exceptions.UsageError as e:
            _usage_error(e)
        except exceptions.ClickException as e:
            _say_error(e.format_message(), e.exit_code)
            sys.exit(e.exit_code)
        except _abort():  # Ctrl-D at a prompt; nncli has none, but Typer's class is caught all the same
            _say_error("aborted", 1)
            sys.exit(1)
        # Without standalone mode Typer returns typer.Exit's code, or the command's value (None)
        sys.exit(code if isinstance(code, int) else 0)


def _click_exceptions():
    """The Click that Typer runs on: Typer >= 0.26 vendors its own copy (typer._click), whose
    exceptions are not the installed click's; typer.core names whichever one is in use."""
    import typer.core

    click = getattr(typer.core, "_click", None) or typer.core.click
    return click.exceptions


def _abort() -> type:
    """Typer's Abort (its own class in typer.core since it vendors Click; click's own before)."""
    import typer.core

    return getattr(typer.core, "Abort", None) or _click_exceptions().Abort


def _usage_error(e) -> None:
    """`error: <message>` and `Try 'nncli CMD --help'`, exit 2 (e.exit_code)."""
    _say_error(e.format_message(), e.exit_code)
    _try_help(e.ctx)
    sys.exit(e.exit_code)


def _try_help(ctx) -> None:
    """The line under every usage error (Click's and nncli's own UsageError alike): where to look."""
    if ctx is not None and sys.stderr is not None:
        try:
            sys.stderr.write(f"Try '{ctx.command_path} --help'\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def _current_context():
    """The running command's Click context (Typer's vendored Click, or the installed one), or None."""
    import importlib

    click = _click_exceptions().__name__.rsplit(".", 1)[0]
    try:
        return importlib.import_module(f"{click}.globals").get_current_context(silent=True)
    except (ImportError, AttributeError):
        return None


def _say_error(message: str, code: int) -> None:
    """The `error:` line of _error, without leaving (outside a command, where typer.Exit means nothing)."""
    try:
        _error(message, code)
    except typer.Exit:
        pass


app = typer.Typer(
    name="nncli",
    cls=_Group,
    help="The everyday PyTorch routine as shell commands: forward, loss, gradients, a step.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    rich_markup_mode=None,  # plain help: rich's help renderer costs ~80 ms of start-up
)

_debug = {"on": False}


# -- errors, pipes and signals ---------------------------------------------------------------------


def _error(message: str, code: int) -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        pass
    if sys.stderr is not None:
        from nncli.errors import printable
        from nncli.views.render import encodable

        try:  # printable: a file name (in what or where) may hold a terminal's escape sequences
            sys.stderr.write(encodable(f"error: {printable(message)}", getattr(sys.stderr, "encoding", None)) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
    raise typer.Exit(code)


def _interrupted(signum, frame):
    """A terminating signal (Ctrl-C, SIGTERM, SIGHUP, ...): drop unfinished output files and the
    stdin spool, give the terminal its cursor back, and leave at once with 128 + the signal number.

    Leaving from the handler (rather than raising KeyboardInterrupt) is what keeps it quiet: an
    exception raised inside a finaliser that happens to be running would print a traceback.

    The handler imports nothing: a signal that lands while nncli.io.output is being imported would
    find it half made ("partially initialized module"). Until it is imported, nothing can have
    registered a file to remove.
    """
    output = sys.modules.get("nncli.io.output")
    abandon = getattr(output, "abandon_writes", None)
    if abandon is not None:
        try:
            abandon()
        except Exception:  # a half-imported module (its list not made yet): nothing registered either
            pass
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            sys.stderr.write("\x1b[?25h")  # a progress bar hides the cursor: show it again
            sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(128 + signum)


def install_signal_handlers() -> None:
    """Every catchable terminating signal cleans up; installed first thing, so an early Ctrl-C is quiet too."""
    if not _in_main_thread():
        return
    for name in TERMINATING:
        number = getattr(signal, name, None)
        if number is None:
            continue
        try:
            if signal.getsignal(number) == signal.SIG_IGN and name != "SIGINT":
                continue  # nohup's SIGHUP stays ignored
            signal.signal(number, _interrupted)
        except (OSError, ValueError):
            pass


@functools.cache
def run_context():
    """The one RunContext of a CLI run: nncli's own short-lived process, whose numpy may be shared with
    the reader process and whose objects from torch's import may be frozen (see nncli.io.context).
    Handed to the library with each Model (options.load_model); no module-level switch is flipped, so
    a library call after a command in the same process keeps the library's defaults."""
    from nncli.io.context import RunContext

    return RunContext(share_numpy=True, freeze_after_import=True)


def handled(fn):
    """Run a command: errors become one `error:` line (exit 1, or 2 for usage), pipes close quietly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from nncli import timing

        timing.add("start-up", time.perf_counter() - timing.START)
        gc.enable()  # off since entry.py: start-up's imports make no garbage
        debug = _debug["on"] or os.environ.get("NNCLI_DEBUG", "") not in ("", "0")
        signals = [getattr(signal, n) for n in TERMINATING if hasattr(signal, n)] if _in_main_thread() else []
        previous = {s: signal.getsignal(s) for s in signals}
        install_signal_handlers()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's own warnings: nncli's stderr carries only nncli's lines
                warnings.simplefilter("always", NncliWarning)
                warnings.showwarning = _show_warning
                return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as e:
            if debug and not (isinstance(e, OSError) and _is_broken_pipe(e)):  # a closed pipe stays quiet
                raise
            _leave_with(e)
        finally:
            for s, handler in previous.items():
                if handler is not None:
                    signal.signal(s, handler)

    return wrapper


def _leave_with(e: Exception) -> None:
    """What a command raised, as one `error:` line and its exit code (typer.Exit, always raised)."""
    if isinstance(e, UsageError):
        _say_error(e.message, 2)
        _try_help(_current_context())
        raise typer.Exit(2)
    if isinstance(e, NncliError):
        _error(e.message, 1)
    if isinstance(e, OSError):
        if not _is_broken_pipe(e):
            _error(f"{e.strerror or e} ({e.filename})" if e.filename else f"{e.strerror or e}", 1)
        _silence_stdout()
        raise typer.Exit(0)
    if isinstance(e, MemoryError):
        _error("out of memory (try a smaller --batch-size or model)", 1)
    # a bug or an input nncli failed to foresee: still one line, no traceback
    if isinstance(e, RuntimeError) and (
        "alloc" in str(e).lower() and "memory" in str(e).lower() or "DefaultCPUAllocator" in str(e)
    ):
        _error("out of memory while computing (try a smaller --batch-size or model)", 1)
    _error(
        f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (please report it; "
        "--debug shows the traceback)",
        1,
    )


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    from nncli.cli.commands.common import warn

    warn(str(message))


def _is_broken_pipe(e: OSError) -> bool:
    """A closed pipe, as Python reports it, or as polars' writer does (a plain OSError)."""
    import errno

    return e.errno == errno.EPIPE or "Broken pipe" in str(e)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# -- commands --------------------------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nncli {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", "-V", help="Show the version and exit.", callback=_version, is_eager=True)
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks (also NNCLI_DEBUG=1).")] = False,
) -> None:
    """The everyday PyTorch routine as shell commands: forward, loss, gradients, a step."""
    _debug["on"] = debug or _debug.get("argv", False)


class _ClosedStream:
    """Standard output or input closed by the shell (`>&-`, `<&-`): Python gives None; nncli gives
    an object whose use is one `error:` line, like any other stream that cannot be used."""

    encoding = "utf-8"
    closed = False

    def __init__(self, name: str) -> None:
        self.name = name

    def _fail(self, *args, **kwargs):
        from nncli.errors import NncliError

        raise NncliError(f"standard {self.name} is closed", "<stdout>" if self.name == "output" else "<stdin>")

    write = read = read1 = readline = fileno = _fail

    @property
    def buffer(self):
        return self

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _hold_descriptor_2() -> None:
    """Standard error closed (`2>&-`): /dev/null on descriptor 2, sys.stderr left None (nothing is shown).

    Left free, descriptor 2 went to the next file opened (the data file, a pipe to the reader
    process): the reader's own redirection of 2 to /dev/null then closed that under it (a failed
    run, exit 1), and anything a library writes to 2 (onnxruntime, polars' panics) would land in it."""
    try:
        os.fstat(2)
        return  # open after all (sys.stderr None for another reason)
    except OSError:
        pass
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    if null != 2:
        os.dup2(null, 2)  # inheritable, as a standard stream is
        os.close(null)
    else:
        os.set_inheritable(2, True)


def _report_timings() -> None:
    """NNCLI_TIMINGS=1: one line on standard error, `nncli timings: {"parse": ..., "wall": ...}` (JSON)."""
    from nncli import timing

    if timing.ON and sys.stderr is not None:
        import json

        try:
            sys.stderr.write(f"nncli timings: {json.dumps(timing.report())}\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or full: the timings are lost, the command's result is not
            pass


def main() -> None:
    """The console script: run the app, flush, and leave without the interpreter's slow teardown."""
    install_signal_handlers()
    if "--debug" in sys.argv[1 : sys.argv.index("--") if "--" in sys.argv else None]:
        _debug["argv"] = True  # --debug anywhere on the line, as every internal error message suggests
        sys.argv = [a for i, a in enumerate(sys.argv) if a != "--debug" or i == 0]
    else:
        warnings.simplefilter(
            "ignore"
        )  # torch's own UserWarnings, at import too: nncli's stderr carries only nncli's lines
    if sys.stderr is None:
        _hold_descriptor_2()
    if sys.stdout is None:
        sys.stdout = _ClosedStream("output")
    if sys.stdin is None:
        sys.stdin = _ClosedStream("input")
    code = 0
    try:
        app()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    try:
        sys.stdout.flush()
        if sys.stderr is not None:
            sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout()
    _report_timings()
    if "torch" in sys.modules:
        os._exit(code)
    sys.exit(code)
