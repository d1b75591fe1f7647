"""evaluate: the loss and the metrics that fit it (nncli.lib.evaluate, views/fit.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.cli.commands.common import emit, idle_threads_sleep, progress
from nncli.cli.options import (
    MODEL,
    OUTPUT,
    READ,
    RUNTIME,
    TARGETS,
    BatchSize,
    Bins,
    Data,
    Loss,
    ModelGroup,
    OutputGroup,
    ReadGroup,
    RuntimeGroup,
    Spec,
    TargetsGroup,
    Threshold,
    load_model,
    output_target,
    read_options,
    with_options,
)
from nncli.errors import UsageError
from nncli.lib.engines import Address, Engine, Master, Scheduler, Workers


@with_options(TARGETS, MODEL, READ, OUTPUT, RUNTIME)
def evaluate(
    spec: Spec,
    data: Data,
    loss: Loss = None,
    batch_size: BatchSize = None,
    threshold: Threshold = 0.5,
    bins: Bins = 15,
    plot: Annotated[
        bool,
        typer.Option(
            "--plot", help="Draw a classifier's reliability diagram under its reliability table (table output)."
        ),
    ] = False,
    engine: Engine = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
    address: Address = None,
    master: Master = None,
    targets: TargetsGroup = None,
    model: ModelGroup = None,
    read: ReadGroup = None,
    output: OutputGroup = None,
    runtime: RuntimeGroup = None,
) -> None:
    """The loss and the metrics that fit the loss: accuracy, per-class F1, a confusion matrix and calibration (ECE, Brier, reliability); per-label scores; or MSE, MAE and R²."""  # noqa: E501  (one line: Typer shows it as written)
    from nncli.lib.engines import scoring
    from nncli.lib.evaluate import evaluate as evaluate_model
    from nncli.views.fit import evaluate_report

    m = load_model(spec, model, runtime)
    target = output_target(output, inputs=[spec, data, targets.targets, model.weights])
    if plot and target.format != "table":
        raise UsageError(f"--plot draws on a table: it takes -f table (the default on a terminal), not {target.format}")
    idle_threads_sleep()  # reads while it computes
    with scoring(
        m, engine, workers, scheduler, address=address, master=master
    ) as scorer:  # the model itself, or its stand-in on a cluster
        doc = evaluate_model(
            scorer,
            data,
            loss=loss,
            threshold=threshold,
            bins=bins,
            batch_size=batch_size,
            read=read_options(read, targets),
            progress=progress(target),
        )
    emit(target, evaluate_report(doc, m.caption, target.precision, plot))
