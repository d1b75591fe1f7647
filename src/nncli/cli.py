"""The command line: parse options, call the core, turn errors into one `error:` line.

No torch math and no formatting here. Options are defined once (as Annotated types) and shared
by every command that takes them, so they are spelled and documented the same everywhere.
torch is imported only inside the commands that need it.
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


# -- shared options --------------------------------------------------------------------------------

Spec = Annotated[str, typer.Argument(metavar="SPEC", help="The model spec (YAML).", show_default=False)]
Data = Annotated[str, typer.Argument(metavar="DATA", help="A CSV file, or - for standard input.", show_default=False)]
Seed = Annotated[Optional[int], typer.Option("--seed", metavar="N", help="Seed for the initial weights (default: the spec's seed, else 0).", min=0)]
Weights = Annotated[Optional[str], typer.Option("--weights", "-w", metavar="FILE", help="Load parameters from a .safetensors or .pt/.pth state_dict.")]
Dtype = Annotated[str, typer.Option("--dtype", metavar="TYPE", help="float32 or float64, for the model and the data.")]
MaxParams = Annotated[int, typer.Option("--max-params", metavar="N", help="Refuse, before allocating, a model with more parameters than this.", min=0)]
Device = Annotated[str, typer.Option("--device", metavar="DEVICE", help="cpu, cuda, mps or auto (an available accelerator, else cpu).")]
Threads = Annotated[Optional[int], typer.Option("--threads", metavar="N", help="Threads for torch and the CSV reader (default: every core).", min=1)]
Format = Annotated[
    Optional[str],
    typer.Option("--format", "-f", metavar="FORMAT", help="table, csv, tsv, json or jsonl (default: table on a terminal, csv otherwise, or the -o file's suffix)."),
]
Output = Annotated[Optional[str], typer.Option("--output", "-o", metavar="FILE", help="Write to this file (atomically) instead of standard output.")]
Precision = Annotated[Optional[int], typer.Option("--precision", metavar="N", help="Decimals to print (default: the table shows 4; other formats print every digit).", min=0, max=30)]
Force = Annotated[bool, typer.Option("--force", help="Allow an output file to replace one of the command's inputs.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Delimiter = Annotated[Optional[str], typer.Option("--delimiter", "-d", metavar="CHAR", help="Force the delimiter (default: detected among , tab ;).")]
Header = Annotated[Optional[bool], typer.Option("--header/--no-header", help="Force whether the first row is a header (default: detected).", show_default=False)]
Features = Annotated[Optional[list[str]], typer.Option("--features", metavar="COL", help="Feature columns, by name or 0-based index (repeatable; default: all other columns).")]
Target = Annotated[Optional[list[str]], typer.Option("--target", "-t", metavar="COL", help="A target column, by name or 0-based index (repeatable).")]
TargetsFile = Annotated[Optional[str], typer.Option("--targets", metavar="FILE", help="A CSV of targets with one row per DATA row.")]
IdColumn = Annotated[Optional[str], typer.Option("--id-column", metavar="COL", help="A column carried through as the first output column.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", "-b", metavar="N", help="Rows per batch (default: 65536); results never depend on it.", min=1)]
Threshold = Annotated[float, typer.Option("--threshold", metavar="P", help="A sigmoid output at or above this is class 1.")]

Loss = Annotated[Optional[str], typer.Option("--loss", "-l", metavar="NAME", help="A torch.nn loss (CrossEntropyLoss, BCELoss, MSELoss, ...) or alias (cross_entropy, bce, mse, ...); default: the spec's, else implied by the head.")]
Reduction = Annotated[str, typer.Option("--reduction", metavar="MODE", help="mean, sum or none (none: one loss per row).")]
Mode = Annotated[Optional[str], typer.Option("--mode", metavar="MODE", help="train or eval (default: eval for loss, train for grads and step).")]
Layer = Annotated[Optional[int], typer.Option("--layer", metavar="I", help="Show only this layer's parameters (0-based index).")]
Summary = Annotated[bool, typer.Option("--summary", help="Show only the summary table (norms, min, max).")]
Full = Annotated[bool, typer.Option("--full", help="Show every element of large tensors (default: elided like torch's print).")]

DTYPES = ("float32", "float64")
FORMATS = ("table", "csv", "tsv", "json", "jsonl")


def _choice(value: Optional[str], allowed: tuple, option: str) -> Optional[str]:
    if value is not None and value not in allowed:
        raise UsageError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def model_options(spec, seed, weights, dtype, max_params, device, threads, inputs=None):
    from nncli.session import ModelOptions

    _choice(dtype, DTYPES, "--dtype")
    return ModelOptions(spec, seed, weights, dtype, max_params, device, threads, inputs)


def output_options(fmt, output, precision, force, quiet=False):
    from nncli.session import OutputOptions

    _choice(fmt, FORMATS, "--format")
    return OutputOptions(fmt, output, precision, force, quiet)


def data_options(data, delimiter, header, features, target, id_column, targets_file=None):
    from nncli.data import DataOptions

    return DataOptions(data, delimiter, header, features or [], target or [], targets_file, id_column)


# -- errors, pipes and signals ---------------------------------------------------------------------


def _error(message: str, code: int) -> None:
    sys.stdout.flush() if not sys.stdout.closed else None
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _interrupted(signum, frame):
    """Ctrl-C or SIGTERM: drop unfinished output files and leave at once, with 128 + the signal number.

    Leaving from the handler (rather than raising KeyboardInterrupt) is what keeps it quiet: an
    exception raised inside a finaliser that happens to be running would print a traceback.
    """
    from nncli.output import abandon_writes

    abandon_writes()
    os._exit(128 + signum)


def handled(fn):
    """Run a command: errors become one `error:` line (exit 1, or 2 for usage), pipes close quietly."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = _debug["on"] or os.environ.get("NNCLI_DEBUG", "") not in ("", "0")
        signals = (signal.SIGINT, signal.SIGTERM) if _in_main_thread() else ()
        previous = {s: signal.signal(s, _interrupted) for s in signals}
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
            _error("out of memory (try a smaller --batch-size or model)", 1)
        except Exception as e:  # a bug or an input nncli failed to foresee: still one line, no traceback
            if debug:
                raise
            _error(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (please report it; --debug shows the traceback)", 1)
        finally:
            for s, handler in previous.items():
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
    _debug["on"] = debug


@app.command()
@handled
def forward(
    spec: Spec,
    data: Data,
    seed: Seed = None,
    weights: Weights = None,
    dtype: Dtype = "float32",
    features: Features = None,
    target: Target = None,
    id_column: IdColumn = None,
    delimiter: Delimiter = None,
    header: Header = None,
    threshold: Threshold = 0.5,
    batch_size: BatchSize = None,
    fmt: Format = None,
    output: Output = None,
    precision: Precision = None,
    force: Force = False,
    quiet: Quiet = False,
    device: Device = "cpu",
    threads: Threads = None,
    max_params: MaxParams = 10**9,
) -> None:
    """Run the model in eval mode over every row: outputs, probabilities, predicted classes."""
    from nncli import commands

    commands.forward(
        model_options(spec, seed, weights, dtype, max_params, device, threads),
        data_options(data, delimiter, header, features, target, id_column),
        output_options(fmt, output, precision, force, quiet),
        batch_size,
        threshold,
    )


def loss_options(loss, reduction, mode, batch_size, scalar_only: bool):
    from nncli.commands import LossOptions
    from nncli.losses import REDUCTIONS

    _choice(reduction, REDUCTIONS, "--reduction")
    _choice(mode, ("train", "eval"), "--mode")
    if scalar_only and reduction == "none":
        raise UsageError("--reduction none gives no single loss to differentiate; use mean or sum")
    return LossOptions(loss, reduction, mode, batch_size)


@app.command()
@handled
def loss(
    spec: Spec,
    data: Data,
    target: Target = None,
    targets: TargetsFile = None,
    loss: Loss = None,
    reduction: Reduction = "mean",
    mode: Mode = None,
    seed: Seed = None,
    weights: Weights = None,
    dtype: Dtype = "float32",
    features: Features = None,
    delimiter: Delimiter = None,
    header: Header = None,
    batch_size: BatchSize = None,
    fmt: Format = None,
    output: Output = None,
    precision: Precision = None,
    force: Force = False,
    quiet: Quiet = False,
    device: Device = "cpu",
    threads: Threads = None,
    max_params: MaxParams = 10**9,
) -> None:
    """The loss of the model's outputs against the targets (eval mode)."""
    from nncli import commands

    commands.loss(
        model_options(spec, seed, weights, dtype, max_params, device, threads),
        data_options(data, delimiter, header, features, target, None, targets),
        output_options(fmt, output, precision, force, quiet),
        loss_options(loss, reduction, mode, batch_size, scalar_only=False),
    )


@app.command()
@handled
def grads(
    spec: Spec,
    data: Data,
    target: Target = None,
    targets: TargetsFile = None,
    loss: Loss = None,
    reduction: Reduction = "mean",
    mode: Mode = None,
    layer: Layer = None,
    summary: Summary = False,
    full: Full = False,
    seed: Seed = None,
    weights: Weights = None,
    dtype: Dtype = "float32",
    features: Features = None,
    delimiter: Delimiter = None,
    header: Header = None,
    batch_size: BatchSize = None,
    fmt: Format = None,
    output: Output = None,
    precision: Precision = None,
    force: Force = False,
    quiet: Quiet = False,
    device: Device = "cpu",
    threads: Threads = None,
    max_params: MaxParams = 10**9,
) -> None:
    """Every parameter's gradient of the loss (forward and backward in train mode)."""
    from nncli import commands

    commands.grads(
        model_options(spec, seed, weights, dtype, max_params, device, threads),
        data_options(data, delimiter, header, features, target, None, targets),
        output_options(fmt, output, precision, force, quiet),
        loss_options(loss, reduction, mode, batch_size, scalar_only=True),
        layer,
        summary,
        full,
    )


@app.command()
@handled
def step(
    spec: Spec,
    data: Data,
    lr: Annotated[float, typer.Option("--lr", metavar="LR", help="The learning rate: p <- p - lr * grad.", show_default=False)],
    target: Target = None,
    targets: TargetsFile = None,
    save_weights: Annotated[Optional[str], typer.Option("--save-weights", metavar="FILE", help="Write the updated weights (.safetensors or .pt), atomically.")] = None,
    loss: Loss = None,
    reduction: Reduction = "mean",
    mode: Mode = None,
    layer: Layer = None,
    summary: Summary = False,
    full: Full = False,
    seed: Seed = None,
    weights: Weights = None,
    dtype: Dtype = "float32",
    features: Features = None,
    delimiter: Delimiter = None,
    header: Header = None,
    batch_size: BatchSize = None,
    fmt: Format = None,
    output: Output = None,
    precision: Precision = None,
    force: Force = False,
    quiet: Quiet = False,
    device: Device = "cpu",
    threads: Threads = None,
    max_params: MaxParams = 10**9,
) -> None:
    """One plain gradient-descent update of every parameter; the loss before and after."""
    from nncli import commands

    commands.step(
        model_options(spec, seed, weights, dtype, max_params, device, threads),
        data_options(data, delimiter, header, features, target, None, targets),
        output_options(fmt, output, precision, force, quiet),
        loss_options(loss, reduction, mode, batch_size, scalar_only=True),
        lr,
        save_weights,
        layer,
        summary,
        full,
    )


@app.command(context_settings={"ignore_unknown_options": False})
@handled
def onehot(
    labels: Annotated[list[str], typer.Argument(metavar="LABEL", help="Class indices, or - to read one a line from standard input (write -- before negative numbers).", show_default=False)],
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", "-n", metavar="N", help="The number of classes (default: the largest label + 1).", min=1)] = None,
    fmt: Format = None,
    output: Output = None,
    force: Force = False,
) -> None:
    """One-hot rows, as torch.nn.functional.one_hot gives them."""
    from nncli import commands

    commands.onehot(labels, num_classes, output_options(fmt, output, None, force))


Inputs = Annotated[Optional[int], typer.Option("--inputs", metavar="N", help="The number of input features, where the spec leaves the first size out.", min=1)]


@handled
def params(
    spec: Spec,
    inputs: Inputs = None,
    values: Annotated[bool, typer.Option("--values", help="Also show every parameter's values (seeded or --weights).")] = False,
    layer: Layer = None,
    full: Full = False,
    seed: Seed = None,
    weights: Weights = None,
    dtype: Dtype = "float32",
    fmt: Format = None,
    output: Output = None,
    precision: Precision = None,
    force: Force = False,
    max_params: MaxParams = 10**9,
) -> None:
    """Each layer's type, arguments, output shape and parameter count (counted, not allocated)."""
    from nncli import commands

    commands.params(
        model_options(spec, seed, weights, dtype, max_params, "cpu", None, inputs),
        output_options(fmt, output, precision, force),
        values,
        layer,
        full,
    )


app.command("params")(params)
app.command("summary", help="The same as params: the model layer by layer, like torchinfo's summary.")(params)


@app.command()
@handled
def init(
    spec: Spec,
    output: Annotated[str, typer.Option("--output", "-o", metavar="FILE", help="The weights file to write (.safetensors, .pt or .pth).", show_default=False)],
    seed: Seed = None,
    inputs: Inputs = None,
    dtype: Dtype = "float32",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    max_params: MaxParams = 10**9,
) -> None:
    """Write the seeded initial weights, to load back anywhere with --weights."""
    from nncli import commands

    commands.init(model_options(spec, seed, None, dtype, max_params, "cpu", None, inputs), output, force)


@app.command()
@handled
def train(
    spec: Spec,
    data: Data,
    epochs: Annotated[int, typer.Option("--epochs", "-e", metavar="N", help="Passes over the training rows.", min=1, show_default=False)],
    lr: Annotated[float, typer.Option("--lr", metavar="LR", help="The learning rate.", show_default=False)],
    save_weights: Annotated[str, typer.Option("--save-weights", metavar="FILE", help="Where to write the trained weights (.safetensors or .pt), atomically.", show_default=False)],
    target: Target = None,
    targets: TargetsFile = None,
    optimizer: Annotated[str, typer.Option("--optimizer", metavar="NAME", help="sgd, adam or adamw (torch.optim's, with torch's defaults).")] = "sgd",
    momentum: Annotated[Optional[float], typer.Option("--momentum", metavar="M", help="SGD momentum.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", metavar="W", help="Weight decay (default: the optimizer's own).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", metavar="N", help="Rows per optimizer step.", min=1)] = 32,
    shuffle: Annotated[Optional[bool], typer.Option("--shuffle/--no-shuffle", help="Reshuffle the rows every epoch with torch.randperm (default: on, off with --stream).", show_default=False)] = None,
    val_split: Annotated[Optional[float], typer.Option("--val-split", metavar="F", help="Hold out this fraction of DATA for validation (drawn with the seed).")] = None,
    val: Annotated[Optional[str], typer.Option("--val", metavar="FILE", help="A validation CSV with the same columns as DATA.")] = None,
    patience: Annotated[Optional[int], typer.Option("--patience", metavar="N", help="Stop after N epochs without a better validation loss, keeping the best weights.", min=1)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", metavar="FILE", help="Start from these saved weights instead of the seeded ones.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Read DATA batch by batch every epoch instead of loading it (files larger than memory).")] = False,
    loss: Loss = None,
    seed: Seed = None,
    weights: Weights = None,
    dtype: Dtype = "float32",
    features: Features = None,
    delimiter: Delimiter = None,
    header: Header = None,
    fmt: Format = None,
    output: Output = None,
    precision: Precision = None,
    force: Force = False,
    quiet: Quiet = False,
    device: Device = "cpu",
    threads: Threads = None,
    max_params: MaxParams = 10**9,
) -> None:
    """Fit the model: the standard PyTorch loop (zero_grad, forward, loss, backward, step)."""
    from nncli import commands
    from nncli.training import TrainOptions

    if resume and weights:
        raise UsageError("--resume and --weights both name starting weights; give one")
    commands.train(
        model_options(spec, seed, resume or weights, dtype, max_params, device, threads),
        data_options(data, delimiter, header, features, target, None, targets),
        output_options(fmt, output, precision, force, quiet),
        loss,
        TrainOptions(epochs, lr, optimizer, momentum, weight_decay, batch_size, (not stream) if shuffle is None else shuffle, patience),
        val_split,
        val,
        save_weights,
        stream,
    )


@app.command()
@handled
def evaluate(
    spec: Spec,
    data: Data,
    target: Target = None,
    targets: TargetsFile = None,
    weights: Weights = None,
    loss: Loss = None,
    seed: Seed = None,
    dtype: Dtype = "float32",
    features: Features = None,
    delimiter: Delimiter = None,
    header: Header = None,
    batch_size: BatchSize = None,
    fmt: Format = None,
    output: Output = None,
    precision: Precision = None,
    force: Force = False,
    quiet: Quiet = False,
    device: Device = "cpu",
    threads: Threads = None,
    max_params: MaxParams = 10**9,
) -> None:
    """The loss and the metrics that fit the head: accuracy, per-class F1 and a confusion matrix, or MSE, MAE and R²."""
    from nncli import commands

    commands.evaluate(
        model_options(spec, seed, weights, dtype, max_params, device, threads),
        data_options(data, delimiter, header, features, target, None, targets),
        output_options(fmt, output, precision, force, quiet),
        loss,
        batch_size,
    )


def main() -> None:
    """The console script: run the app, flush, and leave without the interpreter's slow teardown."""
    code = 0
    try:
        app()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        _silence_stdout()
    if "torch" in sys.modules:
        os._exit(code)
    sys.exit(code)
