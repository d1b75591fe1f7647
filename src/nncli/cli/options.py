"""Every command-line option, defined once, and the groups of them that commands share.

A command declares only what is its own; `with_options(MODEL, READ, OUTPUT)` adds each group's
options to its signature (Typer reads the signature) and hands the command one object per group,
the way sqlite-utils decorates its commands with shared option sets. Each group arrives as a frozen
dataclass (ModelGroup, ReadGroup, OutputGroup, ...) built once at the edge, a value from a fixed set
(--format, --dtype, trace's --mode) already its enum member, as torchinfo checks its arguments once.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import typer

from nncli.errors import UsageError
from nncli.views.render import OutputFormat  # the one list of formats


def finite_non_negative(value: float | None) -> float | None:
    """A rate or a fraction: a number at or above 0 (not NaN, not infinite), else a usage error."""
    import math

    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"must be a finite number at or above 0, got {value}")
    return value


LearningRate = Annotated[
    float,
    typer.Option(
        "--lr",
        metavar="LR",
        help="The learning rate (p <- p - lr * grad for step).",
        show_default=False,
        callback=finite_non_negative,
    ),
]
Spec = Annotated[
    str,
    typer.Argument(
        metavar="SPEC", help="The model spec (YAML); for forward also an exported .onnx model.", show_default=False
    ),
]
Data = Annotated[
    list[str],
    typer.Argument(
        metavar="DATA...",
        show_default=False,
        help=(
            "One or more data files (CSV, TSV, Parquet, Arrow, NDJSON; .gz, .bz2, .xz, .zst compressed), or a "
            "quoted glob "
            "('data/*.parquet'), read in sorted order; - for standard input."
        ),
    ),
]
Seed = Annotated[
    int | None,
    typer.Option(
        "--seed",
        metavar="N",
        help="Seed for the initial weights (default: the spec's seed, else 0).",
        min=0,
        max=2**64 - 1,
    ),
]
Weights = Annotated[
    str | None,
    typer.Option("--weights", "-w", metavar="FILE", help="Load parameters from a .safetensors or .pt/.pth state_dict."),
]
Dtype = Annotated[str, typer.Option("--dtype", metavar="TYPE", help="float32 or float64, for the model and the data.")]
MaxParams = Annotated[
    int,
    typer.Option(
        "--max-params", metavar="N", help="Refuse, before allocating, a model with more parameters than this.", min=0
    ),
]
MaxLayers = Annotated[
    int,
    typer.Option(
        "--max-layers",
        metavar="N",
        help="Refuse a spec with more layers than this (YAML aliases counted as expanded).",
        min=1,
    ),
]
SaveWeights = Annotated[
    str | None,
    typer.Option(
        "--save-weights", metavar="FILE", help="Write the resulting weights (.safetensors, .pt or .pth), atomically."
    ),
]
Device = Annotated[
    str, typer.Option("--device", metavar="DEVICE", help="cpu, cuda, mps or auto (an available accelerator, else cpu).")
]
Threads = Annotated[
    int | None,
    typer.Option("--threads", metavar="N", help="Threads for torch and the CSV reader (default: every core).", min=1),
]
Inputs = Annotated[
    int | None,
    typer.Option(
        "--inputs", metavar="N", help="The number of input features, where the spec leaves the first size out.", min=1
    ),
]
Format = Annotated[
    str | None,
    typer.Option(
        "--format",
        "-f",
        metavar="FORMAT",
        help="table, csv, tsv, json or jsonl (default: table on a terminal, csv otherwise, or the -o file's suffix).",
    ),
]
Output = Annotated[
    str | None,
    typer.Option("--output", "-o", metavar="FILE", help="Write to this file (atomically) instead of standard output."),
]
Precision = Annotated[
    int | None,
    typer.Option(
        "--precision",
        metavar="N",
        help="Decimals to print (default: the table shows 4; other formats print every digit).",
        min=0,
        max=30,
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Allow an output file to replace one of the command's inputs.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
InputFormat = Annotated[
    str | None,
    typer.Option(
        "--input-format",
        metavar="FORMAT",
        help=(
            "csv, tsv, parquet, arrow or ndjson, optionally .gz, .bz2, .xz or .zst (default: from DATA's suffix; "
            "needed for standard input in another format than CSV)."
        ),
    ),
]
DecimalComma = Annotated[
    bool,
    typer.Option(
        "--decimal-comma",
        help="Commas in numbers are decimal separators (1,5 is 1.5), as European spreadsheets write them.",
    ),
]
Delimiter = Annotated[
    str | None,
    typer.Option("--delimiter", "-d", metavar="CHAR", help="Force the delimiter (default: detected among , tab ;)."),
]
Header = Annotated[
    bool | None,
    typer.Option(
        "--header/--no-header", help="Force whether the first row is a header (default: detected).", show_default=False
    ),
]
Features = Annotated[
    list[str] | None,
    typer.Option(
        "--features",
        metavar="COL",
        help=(
            "Feature columns, by name or 0-based index: a,b,c or repeated (a name with a comma in double quotes; "
            "default: all other columns)."
        ),
    ),
]
Target = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        "-t",
        metavar="COL",
        help="Target columns, by name or 0-based index: a,b or repeated (a name with a comma in double quotes).",
    ),
]
TargetsFile = Annotated[
    str | None, typer.Option("--targets", metavar="FILE", help="A CSV of targets with one row per DATA row.")
]
IdColumn = Annotated[
    str | None,
    typer.Option("--id-column", metavar="COL", help="A column carried through as the first output column."),
]
BatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        "-b",
        metavar="N",
        min=1,
        help=(
            "Rows per batch (default: 16384): N rows a batch and a short last one, as DataLoader(batch_size=N) "
            "cuts them. A float32 result's last digit can depend on the batch's shape, as in PyTorch; a mean "
            "over several batches adds their sums and divides once."
        ),
    ),
]

Bins = Annotated[
    int,
    typer.Option(
        "--bins",
        metavar="N",
        min=1,
        help=(
            "Equal-width bins of the top-class probability (binary: of P(class 1)) for a classifier's ECE, MCE "
            "and reliability table (Guo et al. 2017 use 15)."
        ),
    ),
]


def probability(value: float | None) -> float | None:
    """A threshold: a number from 0 to 1 (NaN made every row class 0), else a usage error."""
    if value is not None and not 0 <= value <= 1:
        raise typer.BadParameter(f"must be a number from 0 to 1, got {value}")
    return value


Threshold = Annotated[
    float,
    typer.Option(
        "--threshold", metavar="P", help="A sigmoid output at or above this is class 1 (0 to 1).", callback=probability
    ),
]
Loss = Annotated[
    str | None,
    typer.Option(
        "--loss",
        "-l",
        metavar="NAME",
        help=(
            "A torch.nn loss (CrossEntropyLoss, BCELoss, MSELoss, ...) or alias (cross_entropy, bce, mse, ...); "
            "default: the spec's, else implied by the head."
        ),
    ),
]
Reduction = Annotated[
    str, typer.Option("--reduction", metavar="MODE", help="mean, sum or none (none: one loss per row).")
]
Mode = Annotated[
    str | None,
    typer.Option("--mode", metavar="MODE", help="train or eval (default: eval for loss, train for grads and step)."),
]
Layer = Annotated[
    int | None, typer.Option("--layer", metavar="I", help="Show only this layer's parameters (0-based index).")
]
InspectMode = Annotated[
    str,
    typer.Option(
        "--mode", metavar="MODE", help="eval or train (train: Dropout drops and BatchNorm uses the batch's statistics)."
    ),
]
Summary = Annotated[bool, typer.Option("--summary", help="Show only the summary table (norms, min, max).")]
Full = Annotated[
    bool, typer.Option("--full", help="Show every element of large tensors (default: elided like torch's print).")
]

from nncli.core.model import DEFAULT_MAX_PARAMS  # noqa: E402  (no torch at import)
from nncli.core.spec import DEFAULT_MAX_LAYERS  # noqa: E402  (one home: the spec parser that enforces it)


class FloatType(StrEnum):
    """--dtype: the model's and the data's floats."""

    float32 = "float32"
    float64 = "float64"


class RunMode(StrEnum):
    """--mode of trace, stats and gradcheck: what model.train() or model.eval() sets."""

    train = "train"
    eval = "eval"


def choice(value, allowed: type[StrEnum] | tuple, option: str):
    """The value as its enum member (None stays None), else a usage error naming the choices."""
    names = tuple(allowed)
    if value is not None and value not in names:
        raise UsageError(f"{option} must be one of {', '.join(names)}, got {value!r}")
    if value is None or not isinstance(allowed, type):
        return value
    return allowed(value)


# -- the groups: each a frozen dataclass, built once at the edge from its options ---------------------


@dataclass(frozen=True)
class ModelGroup:
    seed: int | None = None
    weights: str | None = None
    dtype: FloatType = FloatType.float32

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", choice(self.dtype, FloatType, "--dtype"))


@dataclass(frozen=True)
class RuntimeGroup:
    device: str = "cpu"
    threads: int | None = None
    max_params: int = DEFAULT_MAX_PARAMS
    max_layers: int = DEFAULT_MAX_LAYERS


@dataclass(frozen=True)
class ReadGroup:
    features: list[str] | None = None
    delimiter: str | None = None
    header: bool | None = None
    decimal_comma: bool = False
    input_format: str | None = None


@dataclass(frozen=True)
class TargetsGroup:
    target: list[str] | None = None
    targets: str | None = None  # a file of targets


@dataclass(frozen=True)
class SignalGroup:
    loss: str | None = None
    reduction: str = "mean"  # mean, sum or none: the library checks it (its message names the choices)
    mode: str | None = None  # train or eval: the library checks it, as reduction
    batch_size: int | None = None


@dataclass(frozen=True)
class TensorsGroup:
    layer: int | None = None
    summary: bool = False
    full: bool = False


@dataclass(frozen=True)
class OutputGroup:
    fmt: OutputFormat | None = None
    output: str | None = None
    precision: int | None = None
    force: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fmt", choice(self.fmt, OutputFormat, "--format"))


@dataclass(frozen=True)
class Group:
    """Options several commands share: (name, type, default) each, handed over as one `kind` named `name`."""

    name: str
    kind: type
    options: tuple[tuple[str, Any, Any], ...]


MODEL = Group("model", ModelGroup, (("seed", Seed, None), ("weights", Weights, None), ("dtype", Dtype, "float32")))
RUNTIME = Group(
    "runtime",
    RuntimeGroup,
    (
        ("device", Device, "cpu"),
        ("threads", Threads, None),
        ("max_params", MaxParams, DEFAULT_MAX_PARAMS),
        ("max_layers", MaxLayers, DEFAULT_MAX_LAYERS),
    ),
)
READ = Group(
    "read",
    ReadGroup,
    (
        ("features", Features, None),
        ("delimiter", Delimiter, None),
        ("header", Header, None),
        ("decimal_comma", DecimalComma, False),
        ("input_format", InputFormat, None),
    ),
)
TARGETS = Group("targets", TargetsGroup, (("target", Target, None), ("targets", TargetsFile, None)))
SIGNAL = Group(
    "signal",
    SignalGroup,
    (("loss", Loss, None), ("reduction", Reduction, "mean"), ("mode", Mode, None), ("batch_size", BatchSize, None)),
)
TENSORS = Group("tensors", TensorsGroup, (("layer", Layer, None), ("summary", Summary, False), ("full", Full, False)))
OUTPUT = Group(
    "output",
    OutputGroup,
    (
        ("fmt", Format, None),
        ("output", Output, None),
        ("precision", Precision, None),
        ("force", Force, False),
        ("quiet", Quiet, False),
    ),
)


def with_options(*groups: Group):
    """Add the groups' options to a command's signature; the command receives one dataclass per group."""

    def decorate(fn):
        signature = inspect.signature(fn, eval_str=True)  # the command's own annotations, resolved
        own = [p for p in signature.parameters.values() if p.name not in {g.name for g in groups}]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
            for group in groups
            for name, kind, default in group.options
        ]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for group in groups:
                kwargs[group.name] = group.kind(**{name: kwargs.pop(name) for name, _, _ in group.options})
            return fn(*args, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + added)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
        del wrapper.__wrapped__  # Typer must read the new signature, not the original's
        return wrapper

    return decorate


def load_model(spec: str, model: ModelGroup | None = None, runtime: RuntimeGroup | None = None, inputs=None):
    """The library's Model for the command's options (the spec is read and checked now)."""
    from nncli.cli.app import run_context
    from nncli.core.spec import load_spec
    from nncli.lib.model import Model

    model, runtime = model or ModelGroup(), runtime or RuntimeGroup()
    parsed = load_spec(spec, max_layers=runtime.max_layers or DEFAULT_MAX_LAYERS)
    return Model(
        parsed,
        seed=model.seed,
        weights=model.weights,
        dtype=str(model.dtype),
        inputs=inputs,
        max_params=runtime.max_params,
        device=runtime.device,
        threads=runtime.threads,
        context=run_context(),
    )


def output_target(output: OutputGroup, inputs: list | None = None, extra: dict | None = None):
    """The one OutputTarget of a command, checked before any work: -o (and the command's other
    outputs, `extra`) is no input (without --force), named once, writable; the format is known."""
    from nncli.views.target import OutputTarget, check_outputs

    flat = [p for i in (inputs or []) for p in (i if isinstance(i, (list, tuple)) else [i])]
    check_outputs({"-o": output.output, **(extra or {})}, [i for i in flat if i], output.force)
    return OutputTarget.resolve(output.output, output.fmt, output.precision, output.quiet)


def read_options(read: ReadGroup, targets: TargetsGroup | None = None, id_column: str | None = None):
    """How the library is to read DATA, from the READ and TARGETS groups."""
    from nncli.io.columns import split_each
    from nncli.lib.session import Read

    targets = targets or TargetsGroup()
    target, features = split_each(targets.target, "--target"), split_each(read.features, "--features")
    return Read(
        target or None,
        targets.targets,
        features or None,
        id_column,
        read.delimiter,
        read.header,
        bool(read.decimal_comma),
        input_format=read.input_format,
    )
