"""calibrate: fit a classifier's temperature on held-out rows and save it with the weights
(nncli.lib.calibrate, views/calibrate.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.cli.commands.common import emit, idle_threads_sleep, note, progress
from nncli.cli.options import (
    MODEL,
    OUTPUT,
    READ,
    RUNTIME,
    TARGETS,
    BatchSize,
    Bins,
    Data,
    ModelGroup,
    OutputGroup,
    ReadGroup,
    RuntimeGroup,
    SaveWeights,
    Spec,
    TargetsGroup,
    finite_non_negative,
    load_model,
    output_target,
    read_options,
    with_options,
)

CalibrateLr = Annotated[
    float,
    typer.Option(
        "--lr",
        metavar="LR",
        help="LBFGS's learning rate (the reference implementation's).",
        callback=finite_non_negative,
    ),
]
MaxIter = Annotated[
    int, typer.Option("--max-iter", metavar="N", min=1, help="LBFGS's max_iter (the reference implementation's).")
]


@with_options(TARGETS, MODEL, READ, OUTPUT, RUNTIME)
def calibrate(
    spec: Spec,
    data: Data,
    save_weights: SaveWeights = None,
    lr: CalibrateLr = 0.01,
    max_iter: MaxIter = 50,
    bins: Bins = 15,
    batch_size: BatchSize = None,
    targets: TargetsGroup = None,
    model: ModelGroup = None,
    read: ReadGroup = None,
    output: OutputGroup = None,
    runtime: RuntimeGroup = None,
) -> None:
    """Fit one temperature T on held-out rows (Guo et al.'s temperature scaling: LBFGS on the NLL of logits / T, as their reference code) and save it with the weights: forward, evaluate and export then use logits / T; loss, grads, step and train the network's own logits, and step and train drop T. Prints T, NLL, ECE and Brier before and after."""  # noqa: E501  (one line: Typer shows it as written)
    from nncli.core.model import check_weights_path
    from nncli.lib.calibrate import calibrate as calibrate_model
    from nncli.views.calibrate import calibrate_report

    if save_weights:
        check_weights_path(save_weights)
    m = load_model(spec, model, runtime)
    target = output_target(
        output, inputs=[spec, data, targets.targets, model.weights], extra={"--save-weights": save_weights}
    )
    idle_threads_sleep()  # reads while it computes
    result = calibrate_model(
        m,
        data,
        lr=lr,
        max_iter=max_iter,
        bins=bins,
        batch_size=batch_size,
        read=read_options(read, targets),
        progress=progress(target),
    )
    if save_weights:
        m.save(save_weights, what="--save-weights")
    else:
        note("no --save-weights given: the temperature was not saved")
    emit(target, calibrate_report(result, m.caption, save_weights, target.precision))
