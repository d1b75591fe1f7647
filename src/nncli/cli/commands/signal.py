"""The training signal: loss, grads and step. Each calls the library, then renders what it returns."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.cli.commands.common import caption, emit, idle_threads_sleep, rows_text
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
    SaveWeights,
    Spec,
    load_model,
    output_options,
    read_options,
    with_options,
)
from nncli.errors import UsageError
from nncli.io.texts import jsonable
from nncli.lib.engines import Engine, Scheduler, Workers
from nncli.views.render import Frame, Report, fmt, frame_table, key_value_table

GradInputs = Annotated[
    bool,
    typer.Option(
        "--inputs",
        help="The gradient of the loss with respect to each input row (d loss / d x, as x.requires_grad_() gives), for any model.",
    ),
]


def _call(spec, data, targets, signal, model, read, output, runtime, extra_outputs=None):
    """What loss, grads and step share: the model, how to read DATA, the output checked before any work."""
    from nncli.views.progress import tracked

    m = load_model(spec, model, runtime)
    oopts = output_options(output, inputs=[spec, data, targets["targets"], model["weights"]])
    oopts.check(extra=extra_outputs)
    idle_threads_sleep()  # reads while it computes
    options = dict(
        loss=signal["loss"],
        reduction=signal["reduction"],
        batch_size=signal["batch_size"],
        read=read_options(read, targets),
        progress=lambda batches, source: tracked(batches, source, oopts.quiet),
    )
    if signal["mode"] is not None:
        options["mode"] = signal["mode"]
    return m, oopts, options


def _fields(report, precision) -> dict:
    """The fields every loss-bearing record shares, with the same keys in every format."""
    return {
        "loss": jsonable(report.tensor, precision) if report.tensor is not None else None,
        "loss_fn": report.loss_fn,
        "loss_from": report.loss_from,
        "reduction": report.reduction,
        "rows": report.rows,
    }


@with_options(TARGETS, SIGNAL, MODEL, READ, OUTPUT, RUNTIME)
def loss(
    spec: Spec,
    data: Data,
    engine: Engine = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
    targets: dict = None,
    signal: dict = None,
    model: dict = None,
    read: dict = None,
    output: dict = None,
    runtime: dict = None,
) -> None:
    """The loss of the model's outputs against the targets (eval mode)."""
    from nncli.lib.engines import scoring

    m, oopts, options = _call(spec, data, targets, signal, model, read, output, runtime)
    with scoring(m, engine, workers, scheduler) as scorer:  # the model itself, or its stand-in on a cluster
        report = scorer.compute_loss(data, **options)
    import numpy as np  # after reading began: numpy's BLAS threads would keep the reader from forking (procread)

    p = oopts.precision
    doc = _fields(report, p)
    if report.tensor is None:
        values = report.per_row
        doc["loss"] = jsonable(values, p)
        values = values.reshape(len(values), -1)
        names = ["loss"] if values.shape[1] == 1 else [f"loss_{i}" for i in range(values.shape[1])]
        frame = Frame(["row"] + names, [np.arange(len(values))] + [values[:, i] for i in range(values.shape[1])])
        table = frame_table(frame, p)
    else:
        frame = Frame(list(doc), [_scalar(report.tensor)] + [[doc[k]] for k in list(doc)[1:]])
        table = key_value_table({**{k: str(v) for k, v in doc.items()}, "loss": fmt(float(report.tensor), p)})
    text = f"{m.caption}; {report.loss_fn} from {report.loss_from}, {rows_text(report.rows)}"
    emit(oopts, oopts.inputs, Report(doc, frame, [table, caption(text)]))


@with_options(TARGETS, SIGNAL, TENSORS, MODEL, READ, OUTPUT, RUNTIME)
def grads(
    spec: Spec,
    data: Data,
    inputs: GradInputs = False,
    targets: dict = None,
    signal: dict = None,
    tensors: dict = None,
    model: dict = None,
    read: dict = None,
    output: dict = None,
    runtime: dict = None,
) -> None:
    """Every parameter's gradient of the loss (forward and backward in train mode)."""
    _no_reduction_none(signal)
    m, oopts, options = _call(spec, data, targets, signal, model, read, output, runtime)
    report = m.compute_grads(data, inputs=inputs, **options)
    import numpy as np  # after reading began: numpy's BLAS threads would keep the reader from forking (procread)

    from nncli.views.tensors import long_rows, summary_rows, summary_table

    p = oopts.precision
    doc = _fields(report, p)
    text = f"{m.caption}; {report.loss_fn} = {fmt(float(report.tensor), p)} over {rows_text(report.rows)}"
    if inputs:
        values = report.input_gradients.cpu().numpy()
        names = [f"grad_{n}" for n in report.feature_names]
        doc["input_gradients"] = jsonable(values, p)
        frame = Frame(["row"] + names, [np.arange(len(values))] + [values[:, i] for i in range(values.shape[1])])
        emit(
            oopts,
            oopts.inputs,
            Report(doc, frame, [frame_table(frame, p), caption(text + "; d loss / d input per row")]),
        )
        return
    named = only_layer(report.gradients, m.built, tensors["layer"])
    if tensors["summary"]:
        doc["gradients"], frame = summary_rows(named, p)
        tables = [summary_table("gradients", named, p), caption(text)]
    else:
        doc["gradients"] = {k: jsonable(v, p) for k, v in named.items()}
        frame = long_rows({k: {"grad": v} for k, v in named.items()}, ["grad"], p)
        tables = tensor_tables(m.built, named, p, tensors["full"]) + [
            summary_table("gradients", named, p),
            caption(text),
        ]
    emit(oopts, oopts.inputs, Report(doc, frame, tables))


@with_options(TARGETS, SIGNAL, TENSORS, MODEL, READ, OUTPUT, RUNTIME)
def step(
    spec: Spec,
    data: Data,
    lr: LearningRate,
    save_weights: SaveWeights = None,
    targets: dict = None,
    signal: dict = None,
    tensors: dict = None,
    model: dict = None,
    read: dict = None,
    output: dict = None,
    runtime: dict = None,
) -> None:
    """One plain gradient-descent update of every parameter; the loss before and after."""
    from nncli.core.model import check_weights_path
    from nncli.views.tensors import long_rows, summary_long, summary_rows, summary_table, tensor_table

    _no_reduction_none(signal)
    if save_weights:
        check_weights_path(save_weights)
    m, oopts, options = _call(
        spec, data, targets, signal, model, read, output, runtime, {"--save-weights": save_weights}
    )
    result = m.step(data, lr=lr, **options)
    if save_weights:
        m.save(save_weights, what="--save-weights")
    named = only_layer(result.parameters, m.built, tensors["layer"])
    p = oopts.precision
    before, after = result.before, result.after
    doc = {
        "loss_before": jsonable(before.tensor, p),
        "loss_after": jsonable(after.tensor, p),
        "loss_fn": before.loss_fn,
        "loss_from": before.loss_from,
        "reduction": before.reduction,
        "rows": before.rows,
        "lr": lr,
    }
    if save_weights:
        doc["weights"] = save_weights
    text = (
        f"{m.caption}; {before.loss_fn} {fmt(float(before.tensor), p)} -> {fmt(float(after.tensor), p)} "
        f"after one step with lr {lr:g}" + (f"; saved to {save_weights}" if save_weights else "")
    )
    tables = []
    if tensors["summary"]:
        parts = {
            part: {r["parameter"]: r for r in summary_rows({k: v[part] for k, v in named.items()}, p)[0]}
            for part in ("before", "grad", "after")
        }
        doc["parameters"] = {
            name: {part: {k: v for k, v in parts[part][name].items() if k != "parameter"} for part in parts}
            for name in named
        }
        frame = summary_long(parts, list(named))
    else:
        doc["parameters"] = {k: {part: jsonable(v, p) for part, v in parts.items()} for k, parts in named.items()}
        frame = long_rows(named, ["before", "grad", "after"], p)
        for name, parts in named.items():
            for part in ("before", "grad", "after"):
                tables.append(
                    tensor_table(
                        f"{name} {part} {list(parts[part].shape)} {layer_type(m.built, name)}",
                        parts[part],
                        p,
                        tensors["full"],
                    )
                )
    for part in ("before", "grad", "after"):
        tables.append(summary_table(part, {k: v[part] for k, v in named.items()}, p))
    tables.append(caption(text))
    emit(oopts, oopts.inputs, Report(doc, frame, tables))


def _no_reduction_none(signal: dict) -> None:
    if signal["reduction"] == "none":
        raise UsageError("--reduction none gives no single loss to differentiate; use mean or sum")


def _scalar(tensor):
    """A 0-d tensor as a one-element array, so CSV prints it shortest for its dtype."""
    return tensor.detach().cpu().numpy().reshape(1)


def only_layer(named: dict, built, layer: int | None) -> dict:
    """The tensors of one layer (--layer I, negative from the end), or all of them."""
    if layer is None:
        return named
    count = len(built.layers)
    if not -count <= layer < count:
        raise UsageError(f"--layer {layer}: the model has layers 0 to {count - 1}")
    index = layer % count
    chosen = {k: v for k, v in named.items() if k.split(".")[0] == str(index)}
    if not chosen:
        raise UsageError(f"--layer {layer}: layers[{index}] ({built.layers[index].type}) has no parameters")
    return chosen


def layer_type(built, name: str) -> str:
    return built.layers[int(name.split(".")[0])].type


def tensor_tables(built, named: dict, precision, full: bool) -> list:
    from nncli.views.tensors import tensor_table

    return [
        tensor_table(f"{name} {list(tensor.shape)} {layer_type(built, name)}", tensor, precision, full)
        for name, tensor in named.items()
    ]
