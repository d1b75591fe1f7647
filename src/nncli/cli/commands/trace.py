"""trace: each layer's input and output for chosen rows (nncli.lib.inside.trace, views/inside.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.cli.commands.common import emit
from nncli.cli.options import (
    MODEL,
    OUTPUT,
    READ,
    RUNTIME,
    TARGETS,
    Data,
    Full,
    InspectMode,
    Loss,
    ModelGroup,
    OutputGroup,
    ReadGroup,
    RunMode,
    RuntimeGroup,
    Spec,
    TargetsGroup,
    choice,
    load_model,
    output_target,
    read_options,
    with_options,
)

Rows = Annotated[
    str,
    typer.Option(
        "--rows",
        "-r",
        metavar="ROWS",
        help="0-based data rows to trace, as in 0,3,5-9 (they run as one batch, in file order).",
    ),
]
TraceLayer = Annotated[
    int | None,
    typer.Option("--layer", metavar="I", help="Show only layer I's input and output (0-based; negative from the end)."),
]
Grad = Annotated[
    bool,
    typer.Option(
        "--grad",
        help="Also each value's gradient of the loss over the traced rows (needs --target): the backward pass.",
    ),
]


@with_options(TARGETS, MODEL, READ, OUTPUT, RUNTIME)
def trace(
    spec: Spec,
    data: Data,
    rows: Rows = "0",
    layer: TraceLayer = None,
    mode: InspectMode = "eval",
    grad: Grad = False,
    loss: Loss = None,
    full: Full = False,
    targets: TargetsGroup = None,
    model: ModelGroup = None,
    read: ReadGroup = None,
    output: OutputGroup = None,
    runtime: RuntimeGroup = None,
) -> None:
    """Each layer's input and output for chosen rows, layer by layer, as running the layers one by one gives them.

    Tidy rows (CSV, JSON): row, layer, type, index, value (and grad); layer is empty for the
    network's input, and layer i's input is layer i-1's output. Eval mode unless --mode train."""
    from nncli.lib import inside
    from nncli.views.inside import layer_index, rows_label, trace_report
    from nncli.views.render import fmt, rows_text

    mode = choice(mode, RunMode, "--mode")
    m = load_model(spec, model, runtime)
    target = output_target(output, inputs=[spec, data, targets.targets, model.weights])
    inside.parse_rows(rows)  # a bad --rows is refused before any work
    result = inside.trace(m, data, rows=rows, mode=mode, grad=grad, loss=loss, read=read_options(read, targets))
    chosen = layer_index(layer, len(result.layers))
    stages = result.stages if chosen is None else result.stages[chosen : chosen + 2]
    text = f"{m.caption}; {mode} mode; {rows_text(len(result.rows))} ({rows_label(result.rows)}) as one batch"
    if grad:
        text += f"; {result.loss_fn} = {fmt(float(result.loss), target.precision)} over them (mean)"
    emit(target, trace_report(result, stages, grad, text, target.precision, full))
