"""The training signal: loss, grads and step. Each calls the library, then views/signal.py renders it."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.cli.commands.common import emit, idle_threads_sleep, progress
from nncli.cli.options import (
    MODEL,
    OUTPUT,
    READ,
    RUNTIME,
    SIGNAL,
    TARGETS,
    TENSORS,
    Data,
    LearningRate,
    ModelGroup,
    OutputGroup,
    ReadGroup,
    RuntimeGroup,
    SaveWeights,
    SignalGroup,
    Spec,
    TargetsGroup,
    TensorsGroup,
    load_model,
    output_target,
    read_options,
    with_options,
)
from nncli.errors import UsageError
from nncli.lib.engines import Address, Engine, Master, Scheduler, Workers

GradInputs = Annotated[
    bool,
    typer.Option(
        "--inputs",
        help=(
            "The gradient of the loss with respect to each input row (d loss / d x, as x.requires_grad_() gives), "
            "for any model."
        ),
    ),
]


def _call(spec, data, targets, signal, model, read, output, runtime, extra_outputs=None):
    """What loss, grads and step share: the model, how to read DATA, the output checked before any work."""
    m = load_model(spec, model, runtime)
    target = output_target(output, inputs=[spec, data, targets.targets, model.weights], extra=extra_outputs)
    idle_threads_sleep()  # reads while it computes
    options = dict(
        loss=signal.loss,
        reduction=signal.reduction,
        batch_size=signal.batch_size,
        read=read_options(read, targets),
        progress=progress(target),
    )
    if signal.mode is not None:
        options["mode"] = signal.mode
    return m, target, options


@with_options(TARGETS, SIGNAL, MODEL, READ, OUTPUT, RUNTIME)
def loss(
    spec: Spec,
    data: Data,
    engine: Engine = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
    address: Address = None,
    master: Master = None,
    targets: TargetsGroup = None,
    signal: SignalGroup = None,
    model: ModelGroup = None,
    read: ReadGroup = None,
    output: OutputGroup = None,
    runtime: RuntimeGroup = None,
) -> None:
    """The loss of the model's outputs against the targets (eval mode)."""
    from nncli.lib.engines import scoring
    from nncli.views.signal import loss_report

    m, target, options = _call(spec, data, targets, signal, model, read, output, runtime)
    with scoring(
        m, engine, workers, scheduler, address=address, master=master
    ) as scorer:  # the model itself, or its stand-in on a cluster
        report = scorer.compute_loss(data, **options)
    emit(target, loss_report(report, m.caption, target.precision))


@with_options(TARGETS, SIGNAL, TENSORS, MODEL, READ, OUTPUT, RUNTIME)
def grads(
    spec: Spec,
    data: Data,
    inputs: GradInputs = False,
    targets: TargetsGroup = None,
    signal: SignalGroup = None,
    tensors: TensorsGroup = None,
    model: ModelGroup = None,
    read: ReadGroup = None,
    output: OutputGroup = None,
    runtime: RuntimeGroup = None,
) -> None:
    """Every parameter's gradient of the loss (forward and backward in train mode)."""
    _no_reduction_none(signal)
    m, target, options = _call(spec, data, targets, signal, model, read, output, runtime)
    report = m.compute_grads(data, inputs=inputs, **options)
    from nncli.views.signal import grads_report, input_grads_report
    from nncli.views.tensors import only_layer

    p = target.precision
    if inputs:
        emit(target, input_grads_report(report, m.caption, p))
        return
    named = only_layer(report.gradients, m.built, tensors.layer)
    emit(target, grads_report(report, named, m.built, m.caption, p, tensors.summary, tensors.full))


@with_options(TARGETS, SIGNAL, TENSORS, MODEL, READ, OUTPUT, RUNTIME)
def step(
    spec: Spec,
    data: Data,
    lr: LearningRate,
    save_weights: SaveWeights = None,
    targets: TargetsGroup = None,
    signal: SignalGroup = None,
    tensors: TensorsGroup = None,
    model: ModelGroup = None,
    read: ReadGroup = None,
    output: OutputGroup = None,
    runtime: RuntimeGroup = None,
) -> None:
    """One plain gradient-descent update of every parameter; the loss before and after."""
    from nncli.core.model import check_weights_path
    from nncli.views.signal import step_report
    from nncli.views.tensors import only_layer

    _no_reduction_none(signal)
    if save_weights:
        check_weights_path(save_weights)
    extra = {"--save-weights": save_weights}
    m, target, options = _call(spec, data, targets, signal, model, read, output, runtime, extra)
    result = m.step(data, lr=lr, **options)
    if save_weights:
        m.save(save_weights, what="--save-weights")
    named = only_layer(result.parameters, m.built, tensors.layer)
    report = step_report(
        result, named, m.built, m.caption, lr, save_weights, target.precision, tensors.summary, tensors.full
    )
    emit(target, report)


def _no_reduction_none(signal: SignalGroup) -> None:
    if signal.reduction == "none":
        raise UsageError("--reduction none gives no single loss to differentiate; use mean or sum")
