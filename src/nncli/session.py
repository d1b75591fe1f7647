"""What every command sets up the same way: the runtime (threads, device), the model, the output."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from nncli.errors import NncliError, UsageError
from nncli.model import DEFAULT_MAX_PARAMS, Model, build
from nncli.output import check_not_input, output_stream
from nncli.render import resolve_format
from nncli.spec import Spec, load_spec, resolve

DEVICES = ("cpu", "cuda", "mps", "auto")


@dataclass
class ModelOptions:
    spec: str
    seed: int | None = None
    weights: str | None = None
    dtype: str = "float32"
    max_params: int = DEFAULT_MAX_PARAMS
    device: str = "cpu"
    threads: int | None = None
    inputs: int | None = None
    max_layers: int | None = None


@dataclass
class OutputOptions:
    format: str | None = None
    output: str | None = None
    precision: int | None = None
    force: bool = False
    quiet: bool = False
    inputs: list = field(default_factory=list)  # paths this command reads, never to be overwritten

    @property
    def resolved_format(self) -> str:
        return resolve_format(self.format, self.output)

    def check(self, extra: dict | None = None) -> None:
        """Check -o (and the command's other outputs) before any work is done."""
        check_outputs({"-o": self.output, **(extra or {})}, self.inputs, self.force)

    @contextlib.contextmanager
    def stream(self):
        if self.output and self.output != "-":
            check_not_input(self.output, self.inputs, self.force, "-o")
        with output_stream(self.output) as f:
            yield f


def check_outputs(outputs: dict, inputs: list, force: bool) -> None:
    """Every output path checked before any work: none is an input (without --force), none is named
    twice, each can be written (output.check_output says what that takes)."""
    from nncli import output

    named = {k: v for k, v in outputs.items() if v and v != "-"}
    if hasattr(output, "check_distinct_outputs"):
        output.check_distinct_outputs(named)
    for option, path in named.items():
        if hasattr(output, "check_output"):
            output.check_output(path, inputs, force, option)
        else:
            check_not_input(path, inputs, force, option)


def set_threads(threads: int | None) -> None:
    """Threads for polars (read when it is first imported) and torch; the default uses every core."""
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be at least 1, got {threads}")
        os.environ["POLARS_MAX_THREADS"] = str(threads)
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def idle_threads_sleep() -> None:
    """Before torch loads, for commands that read while they compute: torch's idle OpenMP threads
    sleep instead of spinning, which starved the CSV reader thread (1M-row forward on 2 cores:
    2.99 s -> 2.49 s). Timing only, never a result; a user's OMP_WAIT_POLICY wins. Not for train,
    whose many small steps pay for the wake-ups (one epoch: 5.2 s -> 5.8 s)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pick_device(name: str) -> str:
    import torch

    if name not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else ("mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NncliError("CUDA is not available on this machine (try --device cpu or --device auto)", "--device")
    if name == "mps" and not has_mps:
        raise NncliError("MPS is not available on this machine (try --device cpu or --device auto)", "--device")
    return name


def read_spec(opts: ModelOptions) -> Spec:
    import inspect

    if opts.max_layers is None or "max_layers" not in inspect.signature(load_spec).parameters:  # TEMP until spec.py lands
        return load_spec(opts.spec)
    return load_spec(opts.spec, max_layers=opts.max_layers)


def make_model(opts: ModelOptions, spec: Spec, n_inputs: int | None, inputs_from: str) -> tuple[Model, str]:
    """Resolve the spec against the input width, build the seeded model, move it to the device."""
    set_threads(opts.threads)
    device = pick_device(opts.device)
    layers = resolve(spec, n_inputs, inputs_from)
    model = build(spec, layers, opts.seed, opts.dtype, opts.weights, opts.max_params)
    model.module.to(device)
    model.device = device
    return model, device


def note(message: str) -> None:
    """A line for people on standard error, never mixed into the data on standard output."""
    import sys

    from nncli.render import console, encodable

    if sys.stderr is None:
        return
    console(stderr=True).print(encodable(message, getattr(sys.stderr, "encoding", None)), markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    note(f"warning: {message}")

