"""Looking inside the model without data: params (or summary), counted from the spec, and init."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.cli.commands.common import caption, check_outputs, emit, note
from nncli.cli.options import (
    DEFAULT_MAX_PARAMS,
    MODEL,
    OUTPUT,
    RUNTIME,
    TENSORS,
    Dtype,
    Force,
    Inputs,
    MaxParams,
    Seed,
    Spec,
    finite_non_negative,
    load_model,
    output_options,
    with_options,
)
from nncli.views.render import Frame, Report

Values = Annotated[bool, typer.Option("--values", help="Also show every parameter's values (seeded or --weights).")]
WeightsFile = Annotated[
    str,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="The weights file to write (.safetensors, .pt or .pth).",
        show_default=False,
    ),
]
SummaryBatch = Annotated[
    int,
    typer.Option(
        "--batch-size",
        "-b",
        metavar="N",
        min=1,
        help=("Rows per batch for the mult-adds and memory figures (default: 32, train's batch size)."),
    ),
]
SummaryOptimizer = Annotated[
    str,
    typer.Option(
        "--optimizer",
        metavar="NAME",
        help=(
            "The optimizer whose state the memory figure counts: sgd (none; one buffer with --momentum), adam or adamw (two)."
        ),
    ),
]
SummaryMomentum = Annotated[
    float | None,
    typer.Option(
        "--momentum", metavar="M", help="SGD momentum (its buffer is optimizer state).", callback=finite_non_negative
    ),
]


@with_options(TENSORS, MODEL, OUTPUT)
def params(
    spec: Spec,
    inputs: Inputs = None,
    values: Values = False,
    max_params: MaxParams = DEFAULT_MAX_PARAMS,
    batch_size: SummaryBatch = 32,
    optimizer: SummaryOptimizer = "sgd",
    momentum: SummaryMomentum = None,
    tensors: dict = None,
    model: dict = None,
    output: dict = None,
) -> None:
    """Each layer's type, arguments (inferred sizes marked), output shape, parameters, buffers and
    mult-adds, then totals and the memory one training step takes, like torchinfo's summary;
    counted from the spec, never allocated.

    mult-adds: Linear in_features x out_features per row (bias additions and elementwise layers
    count 0). Memory for --batch-size rows: the input; activations (every layer's output and its
    gradient); parameters; buffers (BatchNorm1d's running statistics); gradients; optimizer state
    (sgd 0, or 1x the parameters with --momentum; adam and adamw 2x); and their estimated total."""
    from nncli.cli.commands.signal import only_layer, tensor_tables
    from nncli.io.texts import jsonable
    from nncli.lib import inside
    from nncli.views.tensors import long_rows

    m = load_model(spec, model, {"max_params": max_params}, inputs)
    oopts = output_options(output, inputs=[spec, model["weights"]])
    oopts.check()
    summary = inside.summary(m, batch_size=batch_size, optimizer=optimizer, momentum=momentum)
    if m.weights:  # the counts are the spec's: the weights must fit it, as when they are loaded (--values, export)
        from nncli.core.model import check_layout

        check_layout(m.weights, m.resolved()[1], m.dtype)
    layers = summary.layers
    total = summary.total_params
    itemsize = summary.itemsize
    rows = [
        {
            "index": l.index,
            "type": l.type,
            "args": l.args,
            "output_shape": [None, l.out_width],
            "params": l.params,
            "trainable": l.params > 0,
            "buffers": l.buffers,
            "mult_adds": l.mult_adds,
            "inferred": l.inferred,
        }
        for l in layers
    ]
    memory = summary.memory
    doc = {
        "name": m.spec.display_name,
        "inputs": summary.inputs,
        "layers": rows,
        "total_params": total,
        "param_bytes": total * itemsize,
        "trainable_params": summary.trainable_params,
        "non_trainable_params": summary.non_trainable_params,
        "buffers": summary.buffers,
        "mult_adds_per_row": summary.mult_adds_per_row,
        "mult_adds_batch": summary.mult_adds_batch,
        "batch_size": batch_size,
        "dtype": m.dtype,
        "optimizer": optimizer,
        "momentum": momentum,
        "memory_bytes": memory,
    }
    keys = ("index", "type", "args", "output_shape", "params", "trainable", "buffers", "mult_adds")
    frame = Frame(list(keys), [[r[k] if k != "output_shape" else shape_text(r[k]) for r in rows] for k in keys])
    tables = [_params_table(m.spec.display_name, rows, summary), _totals_table(summary)]
    if (values and not tensors["summary"]) or tensors["layer"] is not None:
        built = m.build()
        named = only_layer(dict(built.module.named_parameters()), built, tensors["layer"])
        doc["parameters"] = {k: jsonable(v, oopts.precision) for k, v in named.items()}
        tables += tensor_tables(built, named, oopts.precision, tensors["full"])
        tables.append(caption(built.caption))
        if oopts.resolved_format in ("csv", "tsv", "jsonl"):
            frame = long_rows({k: {"value": v} for k, v in named.items()}, ["value"], oopts.precision)
    emit(oopts, oopts.inputs, Report(doc, frame, tables))


@with_options(RUNTIME)
def init(
    spec: Spec,
    output: WeightsFile,
    seed: Seed = None,
    inputs: Inputs = None,
    dtype: Dtype = "float32",
    force: Force = False,
    runtime: dict = None,
) -> None:
    """Write the seeded initial weights, to load back anywhere with --weights."""
    from nncli.core.model import check_weights_path

    check_weights_path(output)
    m = load_model(spec, {"seed": seed, "dtype": dtype, "weights": None}, runtime, inputs)
    check_outputs({"-o": output}, [spec], force)
    m.save(output, what="-o")
    count = sum(p.numel() for p in m.module.parameters())
    note(f"wrote {count:,} parameters ({len(m.module.state_dict())} tensors, {m.caption}) to {output}")
    if m.spec.preprocess:  # written without them, silently: forward and evaluate then refused the file
        kind = next(iter(m.spec.preprocess))
        note(
            f"the spec's `preprocess: {kind}` statistics are unset in {output} until nncli train fits them on the training "
            "rows (train --weights starts from these weights and saves them)"
        )


def shape_text(shape: list) -> str:
    return "[" + ", ".join(("N" if i == 0 else "?") if s is None else str(s) for i, s in enumerate(shape)) + "]"


def _params_table(title: str, rows: list[dict], summary):
    from nncli.views.render import FoldingTable

    names = ["#", "layer", "arguments", "output shape", "params", "buffers", "mult-adds"]
    cells = [
        [
            str(r["index"]),
            r["type"],
            r["args"],
            shape_text(r["output_shape"]),
            f"{r['params']:,}",
            f"{r['buffers']:,}",
            f"{r['mult_adds']:,}",
        ]
        for r in rows
    ]
    cells.append(
        ["", "total", "", "", f"{summary.total_params:,}", f"{summary.buffers:,}", f"{summary.mult_adds_per_row:,}"]
    )
    return FoldingTable(
        names,
        [list(c) for c in zip(*cells)],
        title=title,
        keys=2,
        total=True,
        justify=["right", "left", "left", "left", "right", "right", "right"],
    )


def _totals_table(summary):
    """Counts and the memory of one training step on a batch, torchinfo's "Estimated Total Size"."""
    from nncli.views.render import key_value_table

    memory = summary.memory
    size = lambda n: "?" if n is None else _bytes(n)  # noqa: E731
    state = f"optimizer state ({summary.optimizer}{', momentum' if summary.optimizer == 'sgd' and summary.momentum else ''})"
    return key_value_table(
        {
            "trainable params": f"{summary.trainable_params:,}",
            "non-trainable params": f"{summary.non_trainable_params:,}",
            "buffer values": f"{summary.buffers:,}",
            "mult-adds per row": f"{summary.mult_adds_per_row:,}",
            f"mult-adds per batch of {summary.batch_size:,}": f"{summary.mult_adds_batch:,}",
            f"input, batch of {summary.batch_size:,}": size(memory["input"]),
            "activations (forward + backward)": size(memory["activations"]),
            f"parameters ({summary.dtype})": size(memory["parameters"]),
            "buffers": size(memory["buffers"]),
            "gradients": size(memory["gradients"]),
            state: size(memory["optimizer_state"]),
            "estimated total size": size(memory["total"]),
        }
    )


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if size < 1024 or unit == "EiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
