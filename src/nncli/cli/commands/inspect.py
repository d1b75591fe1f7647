"""Looking inside the model without data: params (or summary), counted from the spec, and init."""

from __future__ import annotations

from typing import Annotated

import typer

from nncli.cli.commands.common import emit, note
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
    ModelGroup,
    OutputGroup,
    RuntimeGroup,
    Seed,
    Spec,
    TensorsGroup,
    finite_non_negative,
    load_model,
    output_target,
    with_options,
)

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
            "The optimizer whose state the memory figure counts: sgd (none; one buffer with --momentum), adam or "
            "adamw (two)."
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
    tensors: TensorsGroup = None,
    model: ModelGroup = None,
    output: OutputGroup = None,
) -> None:
    """Each layer's type, arguments (inferred sizes marked), output shape, parameters, buffers and
    mult-adds, then totals and the memory one training step takes, like torchinfo's summary;
    counted from the spec, never allocated.

    mult-adds: Linear in_features x out_features per row (bias additions and elementwise layers
    count 0). Memory for --batch-size rows: the input; activations (every layer's output and its
    gradient); parameters; buffers (BatchNorm1d's running statistics); gradients; optimizer state
    (sgd 0, or 1x the parameters with --momentum; adam and adamw 2x); and their estimated total."""
    from nncli.lib import inside
    from nncli.views.params import params_report
    from nncli.views.tensors import only_layer

    m = load_model(spec, model, RuntimeGroup(max_params=max_params), inputs)
    target = output_target(output, inputs=[spec, model.weights])
    summary = inside.summary(m, batch_size=batch_size, optimizer=optimizer, momentum=momentum)
    if m.weights:  # the counts are the spec's: the weights must fit it, as when they are loaded (--values, export)
        from nncli.core.model import check_layout

        check_layout(m.weights, m.resolved()[1], m.dtype)
    built = named = None
    if (values and not tensors.summary) or tensors.layer is not None:
        built = m.build()
        named = only_layer(dict(built.module.named_parameters()), built, tensors.layer)
    name, p = m.spec.display_name, target.precision
    emit(target, params_report(summary, name, m.dtype, named, built, target.format, p, tensors.full))


@with_options(RUNTIME)
def init(
    spec: Spec,
    output: WeightsFile,
    seed: Seed = None,
    inputs: Inputs = None,
    dtype: Dtype = "float32",
    force: Force = False,
    runtime: RuntimeGroup = None,
) -> None:
    """Write the seeded initial weights, to load back anywhere with --weights."""
    from nncli.core.model import check_weights_path
    from nncli.views.target import check_outputs

    check_weights_path(output)
    m = load_model(spec, ModelGroup(seed, None, dtype), runtime, inputs)
    check_outputs({"-o": output}, [spec], force)
    m.save(output, what="-o")
    count = sum(p.numel() for p in m.module.parameters())
    note(f"wrote {count:,} parameters ({len(m.module.state_dict())} tensors, {m.caption}) to {output}")
    if m.spec.preprocess:  # written without them, silently: forward and evaluate then refused the file
        kind = next(iter(m.spec.preprocess))
        note(
            f"the spec's `preprocess: {kind}` statistics are unset in {output} until nncli train fits them on the "
            "training "
            "rows (train --weights starts from these weights and saves them)"
        )
