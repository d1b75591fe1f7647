"""The command line: parse options, call the core, turn errors into one `error:` line.

No torch math and no formatting here. Options are defined once in options.py and shared by
every command that takes them, so they are spelled and documented the same everywhere. torch
is imported only inside the commands that need it.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Annotated, Optional

import typer

from nncli import __version__
from nncli.errors import NncliError, UsageError
from nncli.options import (
    DEFAULT_MAX_PARAMS, MODEL, OUTPUT, READ, RUNTIME, SIGNAL, TARGETS, TENSORS, BatchSize, Data, Dtype, Force, IdColumn, Inputs, Loss,
    MaxParams, SaveWeights, Seed, Spec, Target, Threshold, data_options, finite_non_negative, loss_options, model_options,
    output_options, with_options,
)

app = typer.Typer(
    name="nncli",
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
        from nncli.render import encodable

        try:
            sys.stderr.write(encodable(f"error: {message}", getattr(sys.stderr, "encoding", None)) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
    raise typer.Exit(code)


def _interrupted(signum, frame):
    """A terminating signal (Ctrl-C, SIGTERM, SIGHUP, ...): drop unfinished output files and the
    stdin spool, give the terminal its cursor back, and leave at once with 128 + the signal number.

    Leaving from the handler (rather than raising KeyboardInterrupt) is what keeps it quiet: an
    exception raised inside a finaliser that happens to be running would print a traceback.
    """
    from nncli.output import abandon_writes

    abandon_writes()
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            sys.stderr.write("\x1b[?25h")  # a progress bar hides the cursor: show it again
            sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(128 + signum)


TERMINATING = ("SIGINT", "SIGTERM", "SIGHUP", "SIGALRM", "SIGUSR1", "SIGUSR2", "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF")  # as entry.py


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


def handled(fn):
    """Run a command: errors become one `error:` line (exit 1, or 2 for usage), pipes close quietly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = _debug["on"] or os.environ.get("NNCLI_DEBUG", "") not in ("", "0")
        signals = [getattr(signal, n) for n in TERMINATING if hasattr(signal, n)] if _in_main_thread() else []
        previous = {s: signal.getsignal(s) for s in signals}
        install_signal_handlers()
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except UsageError as e:
            if debug:
                raise
            _error(e.message, 2)
        except NncliError as e:
            if debug:
                raise
            _error(e.message, 1)
        except KeyboardInterrupt:
            raise typer.Exit(130)
        except OSError as e:
            if not _is_broken_pipe(e):
                if debug:
                    raise
                _error(f"{e.strerror or e} ({e.filename})" if e.filename else f"{e.strerror or e}", 1)
            _silence_stdout()
            raise typer.Exit(0)
        except MemoryError:
            if debug:
                raise
            _error("out of memory (try a smaller --batch-size or model)", 1)
        except Exception as e:  # a bug or an input nncli failed to foresee: still one line, no traceback
            if debug:
                raise
            if isinstance(e, RuntimeError) and ("alloc" in str(e).lower() and "memory" in str(e).lower() or "DefaultCPUAllocator" in str(e)):
                _error("out of memory while computing (try a smaller --batch-size or model)", 1)
            _error(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (please report it; --debug shows the traceback)", 1)
        finally:
            for s, handler in previous.items():
                if handler is not None:
                    signal.signal(s, handler)

    return wrapper


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
    version: Annotated[bool, typer.Option("--version", "-V", help="Show the version and exit.", callback=_version, is_eager=True)] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks (also NNCLI_DEBUG=1).")] = False,
) -> None:
    """The everyday PyTorch routine as shell commands: forward, loss, gradients, a step."""
    _debug["on"] = debug or _debug.get("argv", False)




@app.command()
@handled
@with_options(MODEL, READ, OUTPUT, RUNTIME)
def forward(
    spec: Spec,
    data: Data,
    target: Target = None,
    id_column: IdColumn = None,
    threshold: Threshold = 0.5,
    batch_size: BatchSize = None,
    show_all: Annotated[bool, typer.Option("--all", help="On a terminal, show every row (default: the first and last that fit; files and pipes always get every row).")] = False,
    model: dict = None,
    read: dict = None,
    output: dict = None,
    runtime: dict = None,
) -> None:
    """Run the model in eval mode over every row: outputs, probabilities, predicted classes."""
    from nncli import commands

    commands.forward(
        model_options(spec, model, runtime),
        data_options(data, read, {"target": target}, id_column),
        output_options(output),
        batch_size,
        threshold,
        show_all,
    )


@app.command()
@handled
@with_options(TARGETS, SIGNAL, MODEL, READ, OUTPUT, RUNTIME)
def loss(spec: Spec, data: Data, targets: dict = None, signal: dict = None, model: dict = None, read: dict = None, output: dict = None, runtime: dict = None) -> None:
    """The loss of the model's outputs against the targets (eval mode)."""
    from nncli import commands

    commands.loss(model_options(spec, model, runtime), data_options(data, read, targets), output_options(output), loss_options(signal, scalar_only=False))


@app.command()
@handled
@with_options(TARGETS, SIGNAL, TENSORS, MODEL, READ, OUTPUT, RUNTIME)
def grads(
    spec: Spec, data: Data,
    inputs: Annotated[bool, typer.Option("--inputs", help="The gradient of the loss with respect to each input row (d loss / d x, as x.requires_grad_() gives), for any model.")] = False,
    targets: dict = None, signal: dict = None, tensors: dict = None,
    model: dict = None, read: dict = None, output: dict = None, runtime: dict = None,
) -> None:
    """Every parameter's gradient of the loss (forward and backward in train mode)."""
    from nncli import commands

    commands.grads(
        model_options(spec, model, runtime), data_options(data, read, targets), output_options(output),
        loss_options(signal, scalar_only=True), tensors["layer"], tensors["summary"], tensors["full"], inputs,
    )


@app.command()
@handled
@with_options(TARGETS, SIGNAL, TENSORS, MODEL, READ, OUTPUT, RUNTIME)
def step(
    spec: Spec,
    data: Data,
    lr: Annotated[float, typer.Option("--lr", metavar="LR", help="The learning rate: p <- p - lr * grad.", show_default=False, callback=finite_non_negative)],
    save_weights: SaveWeights = None,
    targets: dict = None, signal: dict = None, tensors: dict = None, model: dict = None, read: dict = None, output: dict = None, runtime: dict = None,
) -> None:
    """One plain gradient-descent update of every parameter; the loss before and after."""
    from nncli import commands

    commands.step(
        model_options(spec, model, runtime), data_options(data, read, targets), output_options(output),
        loss_options(signal, scalar_only=True), lr, save_weights, tensors["layer"], tensors["summary"], tensors["full"],
    )


@app.command()
@handled
@with_options(OUTPUT)
def onehot(
    labels: Annotated[list[str], typer.Argument(metavar="LABEL", help="Class indices, or - to read one a line from standard input (write -- before negative numbers).", show_default=False)],
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", "-n", metavar="N", help="The number of classes (default: the largest label + 1).", min=1)] = None,
    output: dict = None,
) -> None:
    """One-hot rows, as torch.nn.functional.one_hot gives them."""
    from nncli import commands

    commands.onehot(labels, num_classes, output_options(output))


@handled
@with_options(TENSORS, MODEL, OUTPUT)
def params(
    spec: Spec,
    inputs: Inputs = None,
    values: Annotated[bool, typer.Option("--values", help="Also show every parameter's values (seeded or --weights).")] = False,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    tensors: dict = None, model: dict = None, output: dict = None,
) -> None:
    """Each layer's type, arguments, output shape and parameter count (counted, not allocated)."""
    from nncli import commands

    commands.params(
        model_options(spec, model, {"max_params": max_params}, inputs), output_options(output),
        values and not tensors["summary"], tensors["layer"], tensors["full"],
    )


app.command("params")(params)
app.command("summary", help="The same as params: the model layer by layer, like torchinfo's summary.")(params)


@app.command()
@handled
@with_options(RUNTIME)
def init(
    spec: Spec,
    output: Annotated[str, typer.Option("--output", "-o", metavar="FILE", help="The weights file to write (.safetensors, .pt or .pth).", show_default=False)],
    seed: Seed = None,
    inputs: Inputs = None,
    dtype: Dtype = "float32",
    force: Force = False,
    runtime: dict = None,
) -> None:
    """Write the seeded initial weights, to load back anywhere with --weights."""
    from nncli import commands

    commands.init(model_options(spec, {"seed": seed, "dtype": dtype}, runtime, inputs), output, force)


@app.command()
@handled
@with_options(TARGETS, MODEL, READ, OUTPUT, RUNTIME)
def train(
    spec: Spec,
    data: Data,
    epochs: Annotated[int, typer.Option("--epochs", "-e", metavar="N", help="Passes over the training rows.", min=1, show_default=False)],
    lr: Annotated[float, typer.Option("--lr", metavar="LR", help="The learning rate.", show_default=False, callback=finite_non_negative)],
    save_weights: SaveWeights = None,
    optimizer: Annotated[str, typer.Option("--optimizer", metavar="NAME", help="sgd, adam or adamw (torch.optim's, with torch's defaults).")] = "sgd",
    momentum: Annotated[Optional[float], typer.Option("--momentum", metavar="M", help="SGD momentum.", callback=finite_non_negative)] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", metavar="W", help="Weight decay (default: the optimizer's own).", callback=finite_non_negative)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", metavar="N", help="Rows per optimizer step.", min=1)] = 32,
    shuffle: Annotated[Optional[bool], typer.Option("--shuffle/--no-shuffle", help="Reshuffle the rows every epoch with torch.randperm (default: on, off with --stream).", show_default=False)] = None,
    val_split: Annotated[Optional[float], typer.Option("--val-split", metavar="F", help="Hold out this fraction of DATA for validation (drawn with the seed).", callback=finite_non_negative)] = None,
    val: Annotated[Optional[str], typer.Option("--val", metavar="FILE", help="A validation CSV with the same columns as DATA.")] = None,
    patience: Annotated[Optional[int], typer.Option("--patience", metavar="N", help="Stop after N epochs without a better validation loss, keeping the best weights.", min=1)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", metavar="FILE", help="Start from these saved weights instead of the seeded ones.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Read DATA batch by batch every epoch instead of loading it (files larger than memory).")] = False,
    loss: Loss = None,
    targets: dict = None, model: dict = None, read: dict = None, output: dict = None, runtime: dict = None,
) -> None:
    """Fit the model: the standard PyTorch loop (zero_grad, forward, loss, backward, step)."""
    from nncli import commands
    from nncli.training import TrainOptions

    if resume and model["weights"]:
        raise UsageError("--resume and --weights both name starting weights; give one")
    model["weights"] = resume or model["weights"]
    commands.train(
        model_options(spec, model, runtime),
        data_options(data, read, targets),
        output_options(output),
        loss,
        TrainOptions(epochs, lr, optimizer, momentum, weight_decay, batch_size, (not stream) if shuffle is None else shuffle, patience),
        val_split,
        val,
        save_weights,
        stream,
    )


@app.command()
@handled
@with_options(TARGETS, MODEL, READ, OUTPUT, RUNTIME)
def evaluate(
    spec: Spec,
    data: Data,
    loss: Loss = None,
    batch_size: BatchSize = None,
    threshold: Threshold = 0.5,
    targets: dict = None, model: dict = None, read: dict = None, output: dict = None, runtime: dict = None,
) -> None:
    """The loss and the metrics that fit the loss: accuracy, per-class F1 and a confusion matrix; per-label scores; or MSE, MAE and R²."""
    from nncli import commands

    commands.evaluate(model_options(spec, model, runtime), data_options(data, read, targets), output_options(output), loss, batch_size, threshold)


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


def main() -> None:
    """The console script: run the app, flush, and leave without the interpreter's slow teardown."""
    install_signal_handlers()
    if "--debug" in sys.argv[1:sys.argv.index("--") if "--" in sys.argv else None]:
        _debug["argv"] = True  # --debug anywhere on the line, as every internal error message suggests
        sys.argv = [a for i, a in enumerate(sys.argv) if a != "--debug" or i == 0]
    else:
        import warnings

        warnings.simplefilter("ignore")  # torch's own UserWarnings: nncli's stderr carries only nncli's lines
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
    if "torch" in sys.modules:
        os._exit(code)
    sys.exit(code)
